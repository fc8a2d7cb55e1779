"""CausalLM beyond one fp32 process: 2-rank DDP keeps the replicas identical, bf16-mixed trains on CPU."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import cpu_trainer

from zoo.data import TextDataModule
from zoo.models.gpt2 import GPT2
from zoo.tasks import CausalLM
from zoo.tasks.causal_lm import LR_SCHEDULER, OPTIMIZER
from zoo.tasks.optim import with_init_args


def _data(tmp_path: Path) -> TextDataModule:
    corpus = tmp_path / "numbered.txt"
    corpus.write_text("".join(f"line {i:06d}\n" for i in range(120)))  # every 16-char block is unique
    return TextDataModule(
        [str(corpus)], tokenizer="char", max_seq_len=16, batch_size=4, cache_dir=str(tmp_path / "cache")
    )


def _tiny_lm(vocab_size: int) -> CausalLM:
    gpt2 = GPT2(vocab_size=vocab_size, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=2)
    return CausalLM(
        gpt2,
        optimizer=with_init_args(OPTIMIZER, lr=1e-3),
        lr_scheduler=with_init_args(LR_SCHEDULER, warmup_steps=1),
    )


def _trainer(tmp_path: Path, **kw) -> L.Trainer:
    return cpu_trainer(tmp_path, **{"limit_val_batches": 0, **kw})


class SaveFinalWeights(L.Callback):
    """Write each rank's first batch and final weights to ``directory/rank{r}.pt``; module level for spawn."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.first_batch: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.first_batch = batch["input_ids"].clone()

    def on_train_end(self, trainer, pl_module) -> None:
        weights = {name: t.detach().clone() for name, t in pl_module.state_dict().items()}
        out = Path(self.directory) / f"rank{trainer.global_rank}.pt"
        torch.save({"first_batch": self.first_batch, "weights": weights}, out)


class DesyncRankOne(L.Callback):
    """Nudge rank 1's gradients after DDP's all-reduce, as a broken reduction would leave them."""

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_rank == 1:
            for p in pl_module.parameters():
                if p.grad is not None:
                    p.grad.add_(1e-3)


def _fit_on_two_ranks(tmp_path: Path, *callbacks: L.Callback) -> tuple[dict, list[dict]]:
    """Fit 6 steps with ``ddp_spawn`` on 2 CPU processes; the initial weights and each rank's report."""
    L.seed_everything(0)
    dm = _data(tmp_path)
    model = _tiny_lm(dm.vocab_size)
    initial = {name: t.detach().clone() for name, t in model.state_dict().items()}
    trainer = _trainer(
        tmp_path,
        strategy="ddp_spawn",
        devices=2,
        max_steps=6,
        callbacks=[SaveFinalWeights(str(tmp_path)), *callbacks],
    )
    trainer.fit(model, datamodule=dm)
    return initial, [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_ranks_end_with_identical_weights(tmp_path):
    initial, (rank0, rank1) = _fit_on_two_ranks(tmp_path)
    rows = [{tuple(row) for row in r["first_batch"].tolist()} for r in (rank0, rank1)]
    assert len(rows[0]) == len(rows[1]) == 4
    assert not rows[0] & rows[1], "both ranks started on the same examples: the test would prove nothing"
    assert rank0["weights"].keys() == rank1["weights"].keys() == initial.keys()
    for name, weight in rank0["weights"].items():
        assert torch.equal(weight, rank1["weights"][name]), f"{name} differs between the ranks"
        assert not torch.equal(weight, initial[name]), f"{name} did not train"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_weight_check_catches_ranks_that_drift_apart(tmp_path):
    """Negative control for the test above: gradients that differ after the all-reduce show up."""
    _, (rank0, rank1) = _fit_on_two_ranks(tmp_path, DesyncRankOne())
    differ = [n for n, w in rank0["weights"].items() if not torch.equal(w, rank1["weights"][n])]
    assert len(differ) == len(rank0["weights"])


class RecordSteps(L.Callback):
    """Record every training step's loss and the dtype the backbone's output head computed in."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.logits_dtypes: list[torch.dtype] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        head = pl_module.backbone.lm_head
        head.register_forward_hook(lambda module, args, out: self.logits_dtypes.append(out.dtype))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().clone())


def test_bf16_mixed_trains_on_cpu_with_fp32_weights(tmp_path):
    L.seed_everything(0)
    dm = _data(tmp_path)
    model = _tiny_lm(dm.vocab_size)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    steps = RecordSteps()
    _trainer(tmp_path, precision="bf16-mixed", max_steps=3, callbacks=[steps]).fit(model, datamodule=dm)
    assert steps.logits_dtypes == [torch.bfloat16] * 3  # the forward ran under bf16 autocast
    assert len(steps.losses) == 3
    for loss in steps.losses:
        assert loss.dtype == torch.float32 and torch.isfinite(loss), steps.losses
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, f"{name} is stored in {p.dtype}"
        assert torch.isfinite(p).all() and not torch.equal(p, initial[name]), name
