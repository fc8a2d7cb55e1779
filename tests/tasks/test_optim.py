"""The optimizer and schedule injected into every task (``optimizer``, ``lr_scheduler``): the defaults give
the same groups and learning rates as the six arguments they replace, YAML can name any optimizer, and
checkpoints written with the old arguments still load."""

from __future__ import annotations

import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser

from zoo.cli import main
from zoo.models.bert import Bert
from zoo.models.gpt2 import GPT2
from zoo.tasks import CausalLM, MaskedLM, SequenceClassification, TokenClassification, Translation
from zoo.tasks.optim import InverseSqrt, migrate_hparams

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "gpt2" / "shakespeare-char.yaml"


def _old_multiplier(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    # the formula BackboneTask.configure_optimizers used before the schedule was injected
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if step >= total:
        return min_ratio
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + 0.5 * (1.0 - min_ratio) * (1.0 + math.cos(math.pi * progress))


def _lrs_at(task: L.LightningModule, steps: list[int], max_steps: int):
    """The optimizer, and each group's learning rate at the given steps of a run of ``max_steps``."""
    task.trainer = L.Trainer(max_steps=max_steps, logger=False, accelerator="cpu")
    config = task.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seen = []
    for step in range(max(steps) + 1):
        if step in steps:
            seen.append([g["lr"] for g in optimizer.param_groups])
        scheduler.step()
    return optimizer, seen


def _gpt2() -> GPT2:
    return GPT2(vocab_size=30, max_seq_len=8, embed_dim=16, num_heads=2, num_layers=2)


def _bert(num_layers: int = 3) -> Bert:
    return Bert(
        vocab_size=40, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=num_layers, hidden_dim=32,
        with_pretraining_heads=False,
    )  # fmt: skip


def test_causal_lm_defaults_match_the_old_adamw_and_cosine():
    task = CausalLM(_gpt2())
    steps = [0, 50, 99, 100, 101, 550, 999, 1000, 1500]
    optimizer, seen = _lrs_at(task, steps, max_steps=1000)
    decay, no_decay = optimizer.param_groups
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.95)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    for step, lrs in zip(steps, seen):
        expected = 6e-4 * _old_multiplier(step, warmup=100, total=1000, min_ratio=0.1)
        assert lrs == pytest.approx([expected, expected], rel=1e-12, abs=0), step


def test_layer_lr_decay_groups_and_schedule_match_the_old_formula():
    task = SequenceClassification(_bert(num_layers=3), num_labels=2, layer_lr_decay=0.8, pooling="first")
    names = {id(p): n for n, p in task.named_parameters()}
    steps = [0, 10, 50, 99, 120]
    optimizer, seen = _lrs_at(task, steps, max_steps=100)
    assert len(optimizer.param_groups) == 10  # (embeddings, 3 layers, the rest) x (decay, no decay)
    for group, lr_at_0 in zip(optimizer.param_groups, seen[0]):
        name = names[id(group["params"][0])]
        layer = re.search(r"\.layers\.(\d+)\.", name)  # backbone.encoder.layers.<i>. in Bert
        depth = 0 if ".embeddings." in name else int(layer.group(1)) + 1 if layer else 4
        peak = 5e-5 * 0.8 ** max(0, 3 - depth)  # FinetuneTask's group lr: learning_rate * decay ** ...
        assert lr_at_0 == pytest.approx(peak, rel=1e-12, abs=0), name
        decays = group["params"][0].dim() >= 2
        assert group["weight_decay"] == (0.01 if decays else 0.0), name
        assert group["betas"] == (0.9, 0.999)
    for step, lrs in zip(steps, seen):
        factor = _old_multiplier(step, warmup=0, total=100, min_ratio=0.0)
        assert lrs == pytest.approx([lr * factor for lr in seen[0]], rel=1e-12, abs=1e-30), step


@pytest.mark.parametrize("family", ["bert", "gpt2"])  # blocks at encoder.layers.<i> / decoder.layers.<i>
def test_layer_lr_decay_finds_the_blocks_and_embeddings_of_every_layout(family):
    backbone = _bert(num_layers=2) if family == "bert" else _gpt2()
    task = SequenceClassification(
        backbone, num_labels=2, layer_lr_decay=0.5, pooling="last", lr_scheduler=None
    )
    groups = task.configure_optimizers()["optimizer"].param_groups
    lr = {id(p): g["lr"] / 5e-5 for g in groups for p in g["params"]}  # the scale of each parameter
    for module, scale in [(backbone.embeddings, 0.25), *zip(backbone.layers, [0.5, 1.0]), (task.head, 1.0)]:
        assert {lr[id(p)] for p in module.parameters()} == {scale}, module


def test_translation_has_an_inverse_sqrt_schedule_and_none_means_constant():
    backbone = dict(class_path="zoo.models.seq2seq.Transformer", init_args=dict(
        vocab_size=20, max_seq_len=8, embed_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
        hidden_dim=32))  # fmt: skip
    task = Translation(backbone)
    assert not hasattr(task, "_schedule_length")
    config = task.configure_optimizers()  # no trainer: an inverse square root needs no length
    assert isinstance(config["lr_scheduler"]["scheduler"], InverseSqrt)
    constant = Translation(backbone, lr_scheduler=None).configure_optimizers()
    assert set(constant) == {"optimizer"} and constant["optimizer"].param_groups[0]["lr"] == 5e-4


def _small_run(tmp_path: Path, *extra: str) -> list[str]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 200)
    return [
        "--config", str(RECIPE), f"--data.init_args.files=[{corpus}]",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
        "--model.init_args.backbone.init_args.num_layers=1", *extra,
    ]  # fmt: skip


def test_sgd_without_schedule_and_activation_checkpointing_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", *_small_run(tmp_path,
        "--model.init_args.optimizer=torch.optim.SGD", "--model.init_args.optimizer.init_args.lr=0.05",
        "--model.init_args.optimizer.init_args.momentum=0.9", "--model.init_args.lr_scheduler=null",
        "--model.init_args.activation_checkpointing=true")])  # fmt: skip
    (last,) = tmp_path.glob("runs/**/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["optimizer"]["class_path"] == "torch.optim.SGD"
    assert hparams["lr_scheduler"] is None and hparams["activation_checkpointing"] is True
    group = checkpoint["optimizer_states"][0]["param_groups"][0]
    assert group["lr"] == 0.05 and group["momentum"] == 0.9  # SGD's state, the schedule never moved it
    assert not checkpoint["lr_schedulers"]
    task = CausalLM.load_from_checkpoint(last)
    assert task.activation_checkpointing and task.optimizer_spec["init_args"]["lr"] == 0.05


@pytest.mark.parametrize(
    "task", [CausalLM, MaskedLM, SequenceClassification, TokenClassification, Translation]
)
def test_compile_and_activation_checkpointing_are_arguments_of_every_task(task):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(task, "model", skip={"backbone"})
    config = parser.parse_args(["--model.compile=true", "--model.activation_checkpointing=true"])
    assert config.model.compile is True and config.model.activation_checkpointing is True
    assert parser.get_defaults().model.compile is False


def test_compile_reaches_the_instance_and_its_hyper_parameters():
    task = CausalLM(_gpt2(), compile=True, activation_checkpointing=True)
    assert task.compile_blocks is True and task.activation_checkpointing is True
    assert task.hparams.compile is True and task.hparams.activation_checkpointing is True


OLD = dict(learning_rate=1e-3, weight_decay=0.05, betas=(0.9, 0.99), warmup_steps=7, min_lr_ratio=0.2,
           total_steps=50)  # fmt: skip


def _old_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint in the layout of zoo before ``optimizer``/``lr_scheduler``: the six values at the top
    level of the hyper-parameters."""
    monkey = pytest.MonkeyPatch()
    monkey.chdir(tmp_path)
    try:
        main(["fit", *_small_run(tmp_path)])
    finally:
        monkey.undo()
    (last,) = tmp_path.glob("runs/**/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    for key in ("optimizer", "lr_scheduler", "compile", "activation_checkpointing"):
        del hparams[key]
    hparams.update(OLD)
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    return old


def test_old_checkpoints_load_in_python_and_through_zoo_validate(tmp_path, monkeypatch, capsys):
    old = _old_checkpoint(tmp_path)
    task = CausalLM.load_from_checkpoint(old)
    # a CLI checkpoint is rebuilt by LightningCLI's parser, which spells out every AdamW argument
    optimizer, schedule = task.optimizer_spec, task.lr_scheduler_spec
    assert optimizer["class_path"].rsplit(".", 1)[-1] == "AdamW"
    assert {k: optimizer["init_args"][k] for k in ("lr", "betas", "weight_decay")} == {
        "lr": 1e-3, "betas": (0.9, 0.99), "weight_decay": 0.05}  # fmt: skip
    assert schedule["class_path"].endswith("optim.WarmupCosine")
    assert schedule["init_args"] == {"warmup_steps": 7, "min_lr_ratio": 0.2, "total_steps": 50}
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    main(["validate", *_small_run(tmp_path), "--ckpt_path", str(old)])
    assert "val_loss" in capsys.readouterr().out


def test_migration_uses_the_task_default_schedule():
    old = {"learning_rate": 7e-4, "weight_decay": 0.0, "betas": [0.9, 0.98], "warmup_steps": 4000}
    new = migrate_hparams({**old, "beam_size": 4}, Translation)
    assert new["optimizer"]["init_args"] == {"lr": 7e-4, "betas": [0.9, 0.98], "weight_decay": 0.0}
    assert new["lr_scheduler"] == {
        "class_path": "zoo.tasks.optim.InverseSqrt",
        "init_args": {"warmup_steps": 4000},
    }
    assert new["decoding"]["num_beams"] == 4 and "learning_rate" not in new and "beam_size" not in new
    current = {"optimizer": new["optimizer"], "decoding": new["decoding"]}
    assert migrate_hparams(current, Translation) is current


class _ForwardingTranslation(Translation):
    def __init__(self, backbone, *, extra: int = 1, **kwargs):
        super().__init__(backbone, **kwargs)


def test_migration_follows_kwargs_to_the_default_schedule():
    """A task that forwards ``lr_scheduler`` through ``**kwargs`` migrates to its parent's default
    schedule (`Translation`'s inverse square root), not to `BackboneTask`'s warm-up and cosine."""
    old = {"learning_rate": 7e-4, "weight_decay": 0.0, "betas": [0.9, 0.98], "warmup_steps": 4000}
    new = migrate_hparams(old, _ForwardingTranslation)
    assert new["lr_scheduler"] == {
        "class_path": "zoo.tasks.optim.InverseSqrt",
        "init_args": {"warmup_steps": 4000},
    }
