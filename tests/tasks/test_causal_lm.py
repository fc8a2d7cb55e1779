"""CausalLM: a tiny fit lowers the loss, checkpoints reload weights-only, users can subclass."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch

from zoo.cli import main
from zoo.data import TextDataModule
from zoo.models.gpt2 import GPT2
from zoo.tasks import CausalLM
from zoo.tasks.causal_lm import LR_SCHEDULER, OPTIMIZER
from zoo.tasks.optim import with_init_args
from zoo.tasks.settings import Decoding

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "gpt2" / "shakespeare-char.yaml"


def _data(corpus: Path, tmp_path: Path, **kw) -> TextDataModule:
    return TextDataModule(
        [str(corpus)],
        tokenizer="char",
        max_seq_len=32,
        batch_size=16,
        cache_dir=str(tmp_path / "cache"),
        **kw,
    )


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        max_steps=60,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
        limit_val_batches=8,
    )
    return L.Trainer(**{**defaults, **kw})


def test_tiny_fit_lowers_validation_loss(stdlib_text_file, tmp_path):
    L.seed_everything(0)
    dm = _data(stdlib_text_file, tmp_path)
    model = CausalLM(
        GPT2(vocab_size=dm.vocab_size, max_seq_len=32, embed_dim=48, num_heads=4, num_layers=2),
        optimizer=with_init_args(OPTIMIZER, lr=3e-3),
        lr_scheduler=with_init_args(LR_SCHEDULER, warmup_steps=5),
    )
    trainer = _trainer(tmp_path, enable_checkpointing=False, val_check_interval=30)
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]["val_loss"]
    trainer.fit(model, datamodule=dm)  # validates inside fit after validate(): metric states must cope
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]
    assert after["val_loss"] < before - 0.5, (before, after)
    assert after["val_ppl"] == pytest.approx(torch.tensor(after["val_loss"]).exp().item(), rel=1e-3)


def test_python_checkpoint_reloads_weights_only(stdlib_text_file, tmp_path):
    dm = _data(stdlib_text_file, tmp_path)
    model = CausalLM(GPT2(vocab_size=dm.vocab_size, max_seq_len=32, embed_dim=32, num_heads=2, num_layers=1))
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=1)
    trainer.fit(model, datamodule=dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)  # nothing in it needs unpickling code
    again = CausalLM.load_from_checkpoint(path, weights_only=True)
    assert again.hparams.backbone["class_path"].endswith("GPT2")
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_user_subclass_and_backbone_train_with_zoo_fit(stdlib_text_file, tmp_path):
    """A project outside zoo/ subclasses CausalLM and brings its own backbone, both by class_path."""
    config = tmp_path / "user.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            seed_everything: 0
            trainer:
              accelerator: cpu
              max_steps: 40
              val_check_interval: 40
              check_val_every_n_epoch: null
              limit_val_batches: 4
              enable_progress_bar: false
              default_root_dir: {tmp_path / "run"}
              logger: false
              callbacks:
                - class_path: lightning.pytorch.callbacks.ModelCheckpoint
                  init_args: {{dirpath: {tmp_path / "ckpt"}, save_last: true}}
            model:
              class_path: my_lm.LabelSmoothedLM
              init_args:
                backbone:
                  class_path: my_lm.GRULM
                  init_args: {{embed_dim: 32}}
                label_smoothing: 0.05
            data:
              class_path: zoo.data.TextDataModule
              init_args:
                files: [{stdlib_text_file}]
                max_seq_len: 32
                batch_size: 16
                cache_dir: {tmp_path / "cache"}
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(FIXTURES / "user_project")}
    proc = subprocess.run(
        [sys.executable, "-m", "zoo.cli", "fit", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sys.path.insert(0, str(FIXTURES / "user_project"))
    try:
        import my_lm

        model = my_lm.LabelSmoothedLM.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    finally:
        sys.path.remove(str(FIXTURES / "user_project"))
    assert isinstance(model.backbone, my_lm.GRULM)
    assert model.label_smoothing == 0.05
    assert (
        model.backbone.embed.num_embeddings
        == TextDataModule([str(stdlib_text_file)], cache_dir=str(tmp_path / "cache")).vocab_size
    )  # linked from the data, never typed
    assert len(model.generate([[1, 2, 3]], max_new_tokens=5)[0]) == 5


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(stdlib_text_file, tmp_path):
    class PoisonedLM(CausalLM):
        def loss(self, logits, labels):
            loss = super().loss(logits, labels)
            return loss * float("nan") if self.global_step == 7 else loss

    dm = _data(stdlib_text_file, tmp_path)
    model = PoisonedLM(
        GPT2(vocab_size=dm.vocab_size, max_seq_len=32, embed_dim=32, num_heads=2, num_layers=1)
    )
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_last=True
    )
    trainer = _trainer(tmp_path, max_steps=20, limit_val_batches=0, callbacks=[ckpt])
    with pytest.raises(FloatingPointError, match="became nan at global step 7"):
        trainer.fit(model, datamodule=dm)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 5
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_data_that_does_not_fit_the_backbone_is_refused_before_training(stdlib_text_file, tmp_path):
    dm = _data(stdlib_text_file, tmp_path)  # max_seq_len 32, char vocabulary of ~90
    small_vocab = CausalLM(GPT2(vocab_size=20, max_seq_len=32, embed_dim=16, num_heads=2, num_layers=1))
    with pytest.raises(ValueError, match=f"tokenizer has {dm.vocab_size} token ids but .* vocab_size is 20"):
        _trainer(tmp_path, max_steps=1).fit(small_vocab, datamodule=dm)
    short = CausalLM(GPT2(vocab_size=dm.vocab_size, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1))
    with pytest.raises(ValueError, match="max_seq_len=32 exceeds the backbone's max_seq_len=16"):
        _trainer(tmp_path, max_steps=1).fit(short, datamodule=dm)
    with pytest.raises(ValueError, match="sequence length 17 exceeds max_seq_len=16"):
        short(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize(
    "arg, message",
    [
        ("--model.init_args.top_p=1.5", "decoding: top_p must be in (0, 1], got 1.5"),
        ("--data.init_args.batch_size=0", "TextDataModule: batch_size must be a positive integer, got 0"),
        ("--data.init_args.test_stride=65", "TextDataModule: test_stride=65 is larger than max_seq_len=64"),
    ],
)
def test_bad_arguments_stop_zoo_with_the_argument_named(tmp_path, capsys, monkeypatch, arg, message):
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be\n" * 50)
    data = [f"--data.init_args.files=[{corpus}]", f"--data.init_args.cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(RECIPE), *data, arg])
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before anything ran


def test_bad_sampling_arguments_are_refused_at_construction():
    gpt2 = GPT2(vocab_size=10, max_seq_len=8, embed_dim=8, num_heads=2, num_layers=1)
    with pytest.raises(ValueError, match=r"decoding: top_p must be in \(0, 1\], got 0"):
        CausalLM(gpt2, decoding=Decoding(top_p=0))
    with pytest.raises(ValueError, match="decoding: max_new_tokens must be a positive integer, got 0"):
        CausalLM(gpt2, decoding=Decoding(max_new_tokens=0))
    CausalLM(
        gpt2, decoding=Decoding(temperature=0.0, top_k=1, top_p=1.0)
    )  # the edges are allowed: greedy, argmax, no nucleus


def test_a_batch_with_unscored_positions_computes_the_output_layer_only_where_it_scores():
    """Chat fine-tuning scores the answers alone: the loss, its gradients and the summed NLL equal the
    full-logits computation, and the output layer sees only the scored rows."""
    torch.manual_seed(0)
    backbone = GPT2(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=2)
    task = CausalLM(backbone)
    ids = torch.randint(0, 50, (3, 12))
    labels = torch.randint(0, 50, (3, 12))
    labels[:, :7] = -100  # the prompt
    labels[1, 9:] = -100  # padding
    batch = {"input_ids": ids, "labels": labels}
    rows = []
    hook = backbone.lm_head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[:-1].numel()))
    logits, scored = task.scored_logits(batch)
    hook.remove()
    assert rows == [int((labels != -100).sum())] and logits.shape[:2] == scored.shape == (1, rows[0])
    loss = task.loss(logits, scored)
    loss.backward()
    grads = [p.grad.clone() for p in backbone.parameters()]
    backbone.zero_grad()
    full = task.loss(backbone(ids), labels)
    full.backward()
    assert torch.allclose(loss, full, rtol=1e-6, atol=0)
    for a, p in zip(grads, backbone.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-5, atol=1e-7)
    nll, tokens = task.token_nll(batch)
    assert tokens == rows[0] and torch.allclose(nll / tokens, full.detach(), rtol=1e-6, atol=0)
