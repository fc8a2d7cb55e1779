"""Translation: a tiny fit learns, BLEU is sacreBLEU's, checkpoints reload, predict writes lines."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from zoo.data.parallel import ParallelTextDataModule
from zoo.models.seq2seq import Transformer
from zoo.tasks.callbacks import TextPredictionWriter
from zoo.tasks.optim import inverse_sqrt, with_init_args
from zoo.tasks.settings import Decoding
from zoo.tasks.translation import LR_SCHEDULER, OPTIMIZER, Translation

sacrebleu = pytest.importorskip("sacrebleu")


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def _toy_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """A word-for-word "language": source word ``s<j>`` translates to ``t<(7 j + 3) mod 24>``."""
    rng = np.random.default_rng(seed)
    src, tgt = [], []
    for _ in range(n):
        words = rng.integers(0, 24, size=rng.integers(2, 7))
        src.append(" ".join(f"s{j}" for j in words))
        tgt.append(" ".join(f"t{(7 * j + 3) % 24}" for j in words))
    return src, tgt


@pytest.fixture
def toy_data(tmp_path) -> ParallelTextDataModule:
    src, tgt = _toy_pairs(1200, 0)
    train = [_write(tmp_path / "train.src", src[:1000]), _write(tmp_path / "train.tgt", tgt[:1000])]
    val = [_write(tmp_path / "val.src", src[1000:]), _write(tmp_path / "val.tgt", tgt[1000:])]
    return ParallelTextDataModule(
        train,
        val,
        bpe_vocab_size=400,
        max_seq_len=24,
        max_tokens=400,
        predict_file=val[0],
        cache_dir=str(tmp_path / "cache"),
    )


def _task(vocab_size: int, **kw) -> Translation:
    torch.manual_seed(0)
    backbone = Transformer(
        vocab_size=vocab_size,
        max_seq_len=24,
        embed_dim=64,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        hidden_dim=128,
        dropout=0.0,
    )
    args = dict(
        optimizer=with_init_args(OPTIMIZER, lr=5e-3),
        lr_scheduler=with_init_args(LR_SCHEDULER, warmup_steps=30),
        decoding=Decoding(num_beams=3, max_len_a=1.0, max_new_tokens=4),
    )
    return Translation(backbone, **{**args, **kw})


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    args = dict(
        accelerator="cpu",
        max_steps=200,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
        enable_checkpointing=False,
    )
    return L.Trainer(**{**args, **kw})


def test_tiny_fit_learns_and_bleu_is_sacrebleu(toy_data, tmp_path):
    L.seed_everything(0)
    model = _task(toy_data.vocab_size)
    trainer = _trainer(tmp_path, val_check_interval=200, check_val_every_n_epoch=None)
    before = trainer.validate(model, datamodule=toy_data, verbose=False)[0]
    trainer.fit(model, datamodule=toy_data)
    after = trainer.validate(model, datamodule=toy_data, verbose=False)[0]
    assert after["val_loss"] < before["val_loss"] - 1.5, (before, after)
    assert after["val_nll"] < after["val_loss"]  # label smoothing costs something on confident predictions
    assert before["val_bleu"] < 5 and after["val_bleu"] > 50, (before, after)
    # the logged BLEU is sacreBLEU's corpus BLEU of the greedy translations of the raw references
    hyps, refs = [], []
    for batch in toy_data.val_dataloader():
        hyps += [
            toy_data.decode(ids)
            for ids in model.translate(batch["input_ids"], batch["attention_mask"], num_beams=1)
        ]
        refs += batch["references"]
    assert len(refs) == 200
    assert after["val_bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-3)
    test = trainer.test(model, datamodule=toy_data, verbose=False)[0]  # beam 3
    assert test["test_bleu"] >= after["val_bleu"] - 2.0


def test_checkpoint_reloads_weights_only_and_predict_writes_lines(toy_data, tmp_path):
    L.seed_everything(0)
    model = _task(toy_data.vocab_size)
    out = tmp_path / "translations.txt"
    trainer = _trainer(
        tmp_path, max_steps=30, limit_val_batches=0, callbacks=[TextPredictionWriter(str(out))]
    )
    trainer.fit(model, datamodule=toy_data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)
    reloaded = Translation.load_from_checkpoint(path)
    assert reloaded.backbone.spec == model.backbone.spec and reloaded.decoding.num_beams == 3
    batch = next(iter(toy_data.val_dataloader()))
    assert reloaded.translate(batch["input_ids"], batch["attention_mask"]) == model.translate(
        batch["input_ids"], batch["attention_mask"]
    )
    trainer.predict(reloaded, datamodule=toy_data, return_predictions=False)
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 201 and lines[-1] == ""  # one line per source line, in order
    assert all(word.startswith("t") for line in lines for word in line.split())


def test_torchmetrics_sacrebleu_equals_sacrebleu():
    from torchmetrics.text import SacreBLEUScore

    hyps = [
        "A man in a blue shirt is standing on a ladder.",
        "Two dogs play in the snow!",
        "The kids aren't here.",
    ]
    refs = [
        "A man in a blue shirt stands on a ladder.",
        "Two dogs are playing in the snow.",
        "The kids are not here.",
    ]
    ours = SacreBLEUScore(tokenize="13a")
    ours.update(hyps, [[r] for r in refs])
    assert 100 * float(ours.compute()) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-4)


def test_label_smoothed_loss_ignores_padding():
    task = _task(10, label_smoothing=0.1)
    logits = torch.randn(2, 3, 10)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    logp = logits.log_softmax(-1)
    rows = [(0, 0, 1), (0, 1, 2), (1, 0, 3)]
    expected = sum(-0.9 * logp[b, t, y] - 0.1 * logp[b, t].mean() for b, t, y in rows) / 3
    torch.testing.assert_close(task.loss(logits, labels), expected)
    changed = logits.clone()
    changed[0, 2] += 100.0  # padding positions do not count
    torch.testing.assert_close(task.loss(changed, labels), expected)


def test_inverse_sqrt_schedule_on_the_decay_groups():
    task = _task(
        10,
        optimizer=with_init_args(OPTIMIZER, lr=1e-3, weight_decay=0.01),
        lr_scheduler=with_init_args(LR_SCHEDULER, warmup_steps=100),
    )
    task.trainer = L.Trainer(max_steps=1000, logger=False)
    config = task.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]
    assert all(p.dim() >= 2 for p in optimizer.param_groups[0]["params"])
    f = inverse_sqrt(warmup_steps=100)
    assert [f(s) for s in (0, 49, 99, 399)] == pytest.approx([0.01, 0.5, 1.0, 0.5])
    lrs = []
    for _ in range(400):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[99] == pytest.approx(1e-3) and lrs[399] == pytest.approx(5e-4) and max(lrs) == lrs[99]


def test_data_and_model_must_agree(toy_data, tmp_path):
    with pytest.raises(ValueError, match="special tokens"):
        _trainer(tmp_path, max_steps=1).fit(_task(toy_data.vocab_size, eos_token_id=5), datamodule=toy_data)
    short = Translation(
        Transformer(vocab_size=toy_data.vocab_size, max_seq_len=16, embed_dim=32, num_heads=2)
    )
    with pytest.raises(ValueError, match="max_seq_len=24 exceeds the backbone's max_seq_len=16"):
        _trainer(tmp_path, max_steps=1).fit(short, datamodule=toy_data)
