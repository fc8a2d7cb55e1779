"""BackboneTask: decay/no-decay groups, the warm-up + cosine schedule, backbone specs, FLOPs per token,
the sync-free finite-loss guard, compile and activation checkpointing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import traceback

import lightning as L
import pytest
import torch
from conftest import cpu_trainer
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from zoo.checkpoint import init_arguments
from zoo.data import TextDataModule
from zoo.models.bert import Bert
from zoo.models.gpt2 import GPT2
from zoo.models.spec import from_spec, spec_of
from zoo.strategies import BlockForward
from zoo.tasks import CausalLM, MaskedLM
from zoo.tasks.base import BackboneTask
from zoo.tasks.causal_lm import LR_SCHEDULER, OPTIMIZER
from zoo.tasks.monitor import ProgressMonitor
from zoo.tasks.optim import warmup_cosine, with_init_args


def test_schedule_warms_up_then_decays_to_the_floor():
    f = warmup_cosine(warmup_steps=100, total_steps=2000, min_ratio=0.1)
    assert f(0) == pytest.approx(1 / 101)  # nanoGPT: lr * (it + 1) / (warmup + 1)
    assert f(99) == pytest.approx(100 / 101)
    assert f(100) == pytest.approx(1.0)
    assert f(1050) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert f(2000) == pytest.approx(0.1) and f(5000) == pytest.approx(0.1)
    values = [f(s) for s in range(100, 2001)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_weight_decay_only_on_matrices_and_tied_weights_counted_once():
    backbone = GPT2(vocab_size=30, max_seq_len=8, embed_dim=16, num_heads=2, num_layers=2)
    task = CausalLM(
        backbone,
        optimizer=with_init_args(OPTIMIZER, weight_decay=0.1),
        lr_scheduler=with_init_args(LR_SCHEDULER, total_steps=10),
    )
    optimizer = task.configure_optimizers()["optimizer"]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n_opt = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert n_opt == backbone.num_parameters()  # lm_head shares the token embedding


def test_spec_round_trip_and_hparams_hold_no_modules():
    backbone = GPT2.from_name("gpt2-tiny", vocab_size=40, max_seq_len=16)
    spec = spec_of(backbone)
    assert spec["init_args"]["embed_dim"] == 128 and spec["init_args"]["vocab_size"] == 40
    rebuilt = from_spec(spec)
    assert isinstance(rebuilt, GPT2) and rebuilt.num_parameters() == backbone.num_parameters()
    task = CausalLM(backbone)
    assert task.hparams["backbone"] == spec
    assert not any(isinstance(v, nn.Module) for v in task.hparams.values())


def test_bad_specs_are_clear_errors():
    with pytest.raises(ImportError, match="cannot import class_path 'zoo.nope.Model'"):
        from_spec({"class_path": "zoo.nope.Model", "init_args": {}})
    with pytest.raises(TypeError, match="not a torch.nn.Module subclass"):
        from_spec({"class_path": "collections.OrderedDict", "init_args": {}})
    with pytest.raises(TypeError, match="unexpected keyword argument 'num_haeds'"):
        from_spec({"class_path": "zoo.models.gpt2.GPT2", "init_args": {"num_haeds": 2}})


def test_configurable_records_an_inherited_constructor():
    from zoo.models import Configurable

    class Plain(nn.Module):
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.proj = nn.Linear(width, width)

    class Recorded(Configurable, Plain):
        pass

    assert Recorded(width=5).spec["init_args"] == {"width": 5}


# --- FLOPs, non-finite losses without per-step syncs, compile and activation checkpointing ---------


def _tiny_gpt2(vocab_size: int = 64, **kw) -> GPT2:
    return GPT2(vocab_size=vocab_size, max_seq_len=32, embed_dim=32, num_heads=2, num_layers=2, **kw)


def _char_data(corpus, tmp_path) -> TextDataModule:
    return TextDataModule(
        [str(corpus)], tokenizer="char", max_seq_len=32, batch_size=8, cache_dir=str(tmp_path / "cache")
    )


def test_flops_per_token_agrees_with_torch_flop_counter_on_gpt2_forward_and_backward():
    model = GPT2(vocab_size=512, max_seq_len=128, embed_dim=64, num_heads=4, num_layers=2)
    task = CausalLM(model)
    B, T = 2, 128
    ids = torch.randint(0, 512, (B, T))
    # the math kernel spells attention out as matrix products, which the counter sees (it has no
    # formula for the CPU flash kernel); it computes every query-key pair, as the estimate counts them
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        task.loss(task(ids), ids).backward()
    measured = counter.get_total_flops() / (B * T)
    assert task.flops_per_token(T) == model.flops_per_token(T)
    assert measured == pytest.approx(model.flops_per_token(T), rel=0.10)
    assert model.flops_per_token(T) > 6 * model.num_parameters(exclude_embeddings=True)  # output layer


class _Conversions(L.Callback):
    """Counts tensor -> Python conversions per training iteration, from one `on_train_batch_start` to the
    next; host-side ones (data loading, the CPU optimizer's step counters) are not counted."""

    HOST_SIDE = tuple(
        os.sep.join(p) for p in (("torch", "optim", ""), ("torch", "utils", "data", ""), ("zoo", "data", ""))
    )

    def __init__(self, monkeypatch) -> None:
        self.per_step: dict[int, list[str]] = {}
        self._step: int | None = None
        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))

    def _counting(self, name, original):
        def counted(tensor, *args, **kwargs):
            if self._step is not None:
                frames = traceback.extract_stack(limit=40)[:-1]
                if not any(h in f.filename for f in frames for h in self.HOST_SIDE):
                    self.per_step[self._step].append(f"{name} at {frames[-1].filename}:{frames[-1].lineno}")
            return original(tensor, *args, **kwargs)

        return counted

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = trainer.global_step + 1  # the step this iteration completes
        self.per_step[self._step] = []

    def on_train_end(self, trainer, pl_module):
        self._step = None


def test_a_training_step_reads_nothing_back_from_the_device_between_logging_steps(
    stdlib_text_file, tmp_path, monkeypatch
):
    """The finite-loss guard, Lightning's logging and the progress monitor read values back (a host-device
    sync on a GPU) on logging steps only; every other step only queues work."""
    dm = _char_data(stdlib_text_file, tmp_path)
    task = CausalLM(_tiny_gpt2(dm.vocab_size))
    conversions = _Conversions(monkeypatch)
    trainer = cpu_trainer(
        tmp_path,
        max_steps=12,
        log_every_n_steps=4,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        enable_progress_bar=True,
        callbacks=[conversions, ProgressMonitor(peak_flops=1e12)],
    )
    trainer.fit(task, datamodule=dm)
    assert sorted(conversions.per_step) == list(range(1, 13))
    quiet = {step: found for step, found in conversions.per_step.items() if step % 4}
    assert all(not found for found in quiet.values()), quiet
    assert all(conversions.per_step[step] for step in (4, 8, 12))  # the counter does see the reads


class _PoisonedLM(CausalLM):
    """NaN loss at global step 7 (on rank ``rank`` only, or on every rank when ``rank`` is None)."""

    def __init__(self, backbone, *, rank: int | None = None) -> None:
        super().__init__(backbone)
        self.rank = rank

    def loss(self, logits, labels):
        loss = super().loss(logits, labels)
        poisoned = self.global_step == 7 and self.rank in (None, self.global_rank)
        return loss * float("nan") if poisoned else loss


def test_a_non_finite_loss_stops_the_run_at_the_next_logging_step_naming_its_step(stdlib_text_file, tmp_path):
    dm = _char_data(stdlib_text_file, tmp_path)
    task = _PoisonedLM(_tiny_gpt2(dm.vocab_size))
    trainer = cpu_trainer(tmp_path, max_steps=30, log_every_n_steps=5, limit_val_batches=0)
    with pytest.raises(FloatingPointError, match="became nan at global step 7;"):
        trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 10  # found at the first check after it, not at the end of the run


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_every_rank_stops_when_one_rank_sees_a_non_finite_loss(stdlib_text_file, tmp_path):
    """Rank 1 alone gets the NaN; rank 0 must stop too (or it would wait for rank 1 forever)."""
    dm = _char_data(stdlib_text_file, tmp_path)
    task = _PoisonedLM(_tiny_gpt2(dm.vocab_size), rank=1)
    trainer = cpu_trainer(
        tmp_path, strategy="ddp_spawn", devices=2, max_steps=30, log_every_n_steps=5, limit_val_batches=0
    )
    with pytest.raises(Exception, match="became (nan|non-finite on another rank) at global step 7;"):
        trainer.fit(task, datamodule=dm)


def _block_calls(model: nn.Module, block_types: tuple[type, ...]) -> list[int]:
    """Counts calls of each block's MLP; a pre-hook, as recomputation stops once it has what it needs."""
    calls = [0]
    for module in model.modules():
        if isinstance(module, block_types):
            module.mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _loss_and_grads(task: nn.Module, loss_fn, *, checkpointing: bool, seed: int = 0):
    task.activation_checkpointing = checkpointing
    task.configure_model()
    calls = _block_calls(task.backbone, type(task.backbone).fsdp_units)
    torch.manual_seed(seed)  # the same dropout masks in both runs
    loss = loss_fn(task)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in task.named_parameters() if p.grad is not None}
    return loss.detach(), grads, calls[0]


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_activation_checkpointing_recomputes_blocks_and_keeps_loss_and_gradients(family):
    torch.manual_seed(0)
    if family == "gpt2":
        make = lambda: CausalLM(_tiny_gpt2(dropout=0.1))
        ids = torch.randint(0, 64, (4, 32))
        loss_fn = lambda task: task.loss(task(ids), ids)
        layers = 2
    else:
        make = lambda: MaskedLM(Bert(vocab_size=64, max_seq_len=32, embed_dim=32, num_heads=2, num_layers=3))
        ids = torch.randint(5, 64, (4, 32))
        labels = torch.where(torch.rand(4, 32) < 0.3, ids, -100)
        batch = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
            "labels": labels,
            "next_sentence_label": torch.tensor([0, 1, 0, 1]),
        }
        loss_fn = lambda task: task.losses(batch).loss
        layers = 3
    plain, checkpointed = make(), make()
    checkpointed.load_state_dict(plain.state_dict())
    loss, grads, plain_calls = _loss_and_grads(plain, loss_fn, checkpointing=False)
    ckpt_loss, ckpt_grads, ckpt_calls = _loss_and_grads(checkpointed, loss_fn, checkpointing=True)
    assert (plain_calls, ckpt_calls) == (layers, 2 * layers)  # each block ran again in the backward pass
    torch.testing.assert_close(ckpt_loss, loss)
    assert grads.keys() == ckpt_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, msg=name)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())


def test_compile_keeps_parameter_names_and_decoding_stays_uncompiled():
    """Built without compiling (torch.compile is lazy): the state_dict is the plain model's, and decoding
    with a KV cache never reaches the compiler."""
    plain = CausalLM(_tiny_gpt2())
    compiled = CausalLM(_tiny_gpt2())
    compiled.compile_blocks = True
    compiled.configure_model()
    assert all(isinstance(layer.forward, BlockForward) for layer in compiled.backbone.layers)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in plain.named_parameters()]
    frames_before = torch._dynamo.utils.counters["frames"]["total"]
    out = compiled.generate([[1, 2, 3]], max_new_tokens=4, temperature=0.0)
    assert len(out[0]) == 4 and torch._dynamo.utils.counters["frames"]["total"] == frames_before
    compiled.compile_blocks = False
    compiled.configure_model()  # switched off again: the plain forward
    assert all("forward" not in vars(layer) for layer in compiled.backbone.layers)


def test_hyperparameters_hold_only_the_arguments_the_task_takes():
    """A checkpoint rebuilds its task from the hyper-parameters (``zoo validate --ckpt_path`` too), so
    BackboneTask's own switches are recorded only by tasks that take them."""

    class Direct(BackboneTask):
        def __init__(self, backbone: nn.Module, *, compile: bool = False) -> None:
            super().__init__(backbone, compile=compile)

    causal = CausalLM(_tiny_gpt2())
    assert set(causal.hparams) <= init_arguments(CausalLM)  # its own and those it forwards (**kwargs)
    direct = Direct(_tiny_gpt2(), compile=True)
    assert direct.compile_blocks and set(direct.hparams) == {"backbone", "compile"}


def test_compile_and_checkpointing_need_declared_blocks():
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)

    task = CausalLM(Plain())
    task.activation_checkpointing = True
    with pytest.raises(ValueError, match="Plain declares none"):
        task.configure_model()


@pytest.mark.slow
def test_compiled_run_matches_eager_and_its_checkpoint_reloads_uncompiled(stdlib_text_file, tmp_path):
    """Per-block torch.compile (inductor on CPU: ~40 s here without a warm compile cache): the same losses
    as eager within 1e-4 relative over 8 steps (fused kernels round differently), and a checkpoint with
    the plain parameter names that loads into an uncompiled task."""

    class Losses(L.Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.values.append(float(outputs["loss"]))

    dm = _char_data(stdlib_text_file, tmp_path)
    runs = {}
    for compiled in (False, True):
        L.seed_everything(0)
        task = CausalLM(_tiny_gpt2(dm.vocab_size), lr_scheduler=with_init_args(LR_SCHEDULER, warmup_steps=2))
        task.compile_blocks = compiled
        losses = Losses()
        trainer = cpu_trainer(tmp_path / str(compiled), max_steps=8, limit_val_batches=0, callbacks=[losses])
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        trainer.fit(task, datamodule=dm)
        compiled_graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
        assert (compiled_graphs > 0) == compiled  # the compiler ran, and only when asked
        trainer.save_checkpoint(tmp_path / f"compiled{compiled}.ckpt")
        runs[compiled] = (losses.values, task)
    (eager, eager_task), (fast, fast_task) = runs[False], runs[True]
    assert fast == pytest.approx(eager, rel=1e-4)
    state = torch.load(tmp_path / "compiledTrue.ckpt", weights_only=True)["state_dict"]
    assert list(state) == list(eager_task.state_dict())
    reloaded = CausalLM.load_from_checkpoint(tmp_path / "compiledTrue.ckpt", weights_only=True)
    assert all("forward" not in vars(layer) for layer in reloaded.backbone.layers)
    for name, value in fast_task.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value, msg=name)


_FSDP_SCRIPT = """
import json, sys
import lightning as L, torch
import torch.distributed.fsdp as fsdp
from torch.utils.data import DataLoader
from zoo.models.gpt2 import GPT2
from zoo.strategies import FSDP
from zoo.tasks import CausalLM
from zoo.strategies import BlockForward
from zoo.tasks.causal_lm import LR_SCHEDULER, OPTIMIZER
from zoo.tasks.optim import with_init_args


class OnCPU(fsdp.FullyShardedDataParallel):  # as in tests/test_fsdp.py: FSDP on CPU needs device_id=cpu
    def __init__(self, module, *args, device_id=None, **kwargs):
        super().__init__(module, *args, device_id=device_id or torch.device("cpu"), **kwargs)


fsdp.FullyShardedDataParallel = OnCPU


class Report(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module):
        new = lambda m: isinstance(vars(m).get("forward"), BlockForward)
        blocks = [n for n, m in trainer.model.named_modules() if new(m)]
        with open(f"{sys.argv[1]}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"losses": self.losses, "blocks": blocks}, f)


if __name__ == "__main__":
    L.seed_everything(0)
    ids = torch.randint(0, 32, (8, 16))
    data = [{"input_ids": x, "labels": x} for x in ids.repeat(4, 1)]
    task = CausalLM(GPT2(vocab_size=32, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=2),
                    optimizer=with_init_args(OPTIMIZER, lr=3e-3),
                    lr_scheduler=with_init_args(LR_SCHEDULER, warmup_steps=0))
    task.compile_blocks, task.compile_kwargs, task.activation_checkpointing = True, {"backend": "eager"}, True
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=FSDP(), max_steps=6, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=sys.argv[1], callbacks=[Report()])
    trainer.fit(task, DataLoader(data, batch_size=4))
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_compiled_and_checkpointed_blocks_train_under_fsdp(tmp_path):
    """2 CPU ranks (gloo), FSDP wrapping each block, the task compiling (dynamo, eager backend) and
    recomputing each block: the loss falls and every FSDP-wrapped block kept its new forward."""
    script = tmp_path / "fsdp_compile.py"
    script.write_text(_FSDP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["losses"][-1] < report["losses"][0] - 0.1, report["losses"]
        root = "_fsdp_wrapped_module"
        assert report["blocks"] == [f"{root}.backbone.decoder.layers.{i}.{root}" for i in range(2)]
