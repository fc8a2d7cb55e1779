"""FSDP: each backbone declares its unit once; `strategy: fsdp` wraps exactly those blocks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from zoo.cli import ZooCLI
from zoo.models.bert import Bert
from zoo.models.gpt2 import GPT2
from zoo.models.seq2seq import Transformer
from zoo.nn import MLP, Attention
from zoo.strategies import FSDP
from zoo.tasks import BackboneTask, CausalLM

REPO = Path(__file__).resolve().parents[1]
USER_PROJECT = REPO / "tests" / "fixtures" / "user_project"

BLOCKS = {f"backbone.decoder.layers.{i}" for i in range(2)}
SEQ2SEQ_BLOCKS = {f"backbone.{stack}.layers.{i}" for stack in ("encoder", "decoder") for i in range(2)}
BACKBONES = {
    "gpt2": (lambda: GPT2(vocab_size=32, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=2), BLOCKS),
    "bert": (
        lambda: Bert(vocab_size=32, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=2),
        {f"backbone.encoder.layers.{i}" for i in range(2)},
    ),
    **{
        f"seq2seq-{norm}": (
            lambda norm=norm: Transformer.from_name(
                "transformer-tiny", vocab_size=32, max_seq_len=16, norm=norm
            ),
            SEQ2SEQ_BLOCKS,
        )
        for norm in ("pre", "post")
    },
}


@pytest.fixture
def no_wrapping(monkeypatch):
    """`FSDPStrategy.setup` (which needs a process group) replaced by a no-op, so a test sees the
    policies zoo's `FSDP.setup` hands it."""
    monkeypatch.setattr(FSDPStrategy, "setup", lambda self, trainer: None)


def _set_up(strategy: FSDP, task: nn.Module) -> FSDP:
    strategy.connect(task)
    strategy.setup(None)
    return strategy


def _wrapped(strategy: FSDP, task: nn.Module) -> set[str]:
    """Names of the submodules the strategy's auto-wrap policy makes FSDP units (besides the root)."""
    policy = strategy.kwargs.get("auto_wrap_policy")
    if policy is None:
        return set()
    targets = policy._run_policy(task, set(), {})  # what FSDP's auto-wrap calls on the root module
    return {name for name, module in task.named_modules() if module in targets}


def _checkpointed(strategy: FSDP, task: nn.Module) -> set[str]:
    """Names of the submodules Lightning's activation checkpointing wraps, applied as Lightning does."""
    _setup_activation_checkpointing(task, strategy._activation_checkpointing_kwargs)
    return {
        name.replace("._checkpoint_wrapped_module", "")
        for name, module in task.named_modules()
        if isinstance(module, CheckpointWrapper)
    }


@pytest.mark.parametrize("family", list(BACKBONES))
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation-checkpointing"])
def test_the_backbone_declaration_wraps_exactly_its_blocks(no_wrapping, family, checkpointing):
    build, blocks = BACKBONES[family]
    task = BackboneTask(build())
    strategy = _set_up(FSDP(activation_checkpointing=checkpointing), task)
    assert _wrapped(strategy, task) == blocks
    assert _checkpointed(strategy, task) == (blocks if checkpointing else set())


def test_explicit_policies_win_over_the_declaration(no_wrapping):
    task = BackboneTask(BACKBONES["gpt2"][0]())
    strategy = FSDP(
        auto_wrap_policy={MLP}, activation_checkpointing_policy={Attention}, activation_checkpointing=True
    )
    _set_up(strategy, task)
    mlps = {f"backbone.decoder.layers.{i}.mlp" for i in range(2)}
    assert _wrapped(strategy, task) == mlps
    assert _checkpointed(strategy, task) == {f"backbone.decoder.layers.{i}.self_attn" for i in range(2)}


def test_the_policy_is_derived_again_at_every_setup(no_wrapping):
    """fit then test set the strategy up twice; a derived policy must not pass for the user's own."""
    strategy = FSDP()
    _set_up(strategy, BackboneTask(BACKBONES["gpt2"][0]()))
    seq2seq = BackboneTask(BACKBONES["seq2seq-post"][0]())
    assert _wrapped(_set_up(strategy, seq2seq), seq2seq) == SEQ2SEQ_BLOCKS


def test_a_backbone_without_the_declaration_is_wrapped_whole_with_a_warning(no_wrapping, monkeypatch):
    monkeypatch.syspath_prepend(str(USER_PROJECT))
    from my_lm import GRULM

    with pytest.warns(UserWarning, match="does not record its constructor arguments"):
        task = CausalLM(GRULM(vocab_size=32))
    with pytest.warns(UserWarning, match=r"GRULM declares no `fsdp_units`.*fsdp_units = \(YourBlock,\)"):
        strategy = _set_up(FSDP(), task)
    assert "auto_wrap_policy" not in strategy.kwargs and _checkpointed(strategy, task) == set()
    with (
        pytest.warns(UserWarning),
        pytest.raises(ValueError, match="activation_checkpointing=True.*fsdp_units"),
    ):
        _set_up(FSDP(activation_checkpointing=True), task)


def _trainer_strategy(tmp_path: Path, *args: str):
    """The strategy of the Trainer ZooCLI builds from the GPT-2 124M recipe on 2 CPU devices."""
    cli = ZooCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        auto_configure_optimizers=False,
        args=[
            "--config",
            str(REPO / "recipes" / "gpt2" / "124m.yaml"),
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.precision=32-true",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false",
            "--data.init_args.files=[stdlib:json/tool.py]",
            "--data.init_args.tokenizer=char",
            f"--data.init_args.cache_dir={tmp_path / 'cache'}",
            *args,
        ],
    )
    return cli.trainer.strategy


def test_strategy_fsdp_in_a_recipe_means_the_zoo_strategy(tmp_path):
    strategy = _trainer_strategy(tmp_path, "--trainer.strategy=fsdp")
    assert type(strategy) is FSDP and not strategy.activation_checkpointing
    assert "auto_wrap_policy" not in strategy.kwargs  # derived from the model at setup
    assert type(_trainer_strategy(tmp_path)) is DDPStrategy  # the recipe's own `ddp` is left alone


def _strategy_config(tmp_path: Path, *init_args: str) -> Path:
    """A YAML file selecting ``zoo.strategies.FSDP`` with the given ``key: value`` init_args lines."""
    config = tmp_path / "strategy.yaml"
    lines = ["trainer:", "  strategy:", "    class_path: zoo.strategies.FSDP", "    init_args:"]
    config.write_text("\n".join([*lines, *(f"      {arg}" for arg in init_args)]) + "\n")
    return config


def test_the_class_path_form_takes_fsdp_arguments(tmp_path):
    config = _strategy_config(tmp_path, "activation_checkpointing: true", "sharding_strategy: SHARD_GRAD_OP")
    strategy = _trainer_strategy(tmp_path, "--config", str(config))
    assert type(strategy) is FSDP and strategy.activation_checkpointing
    assert strategy.sharding_strategy.name == "SHARD_GRAD_OP"


def test_explicit_policies_parse_from_yaml_as_lists_of_classes(tmp_path, no_wrapping):
    config = _strategy_config(
        tmp_path, "auto_wrap_policy: [zoo.nn.MLP]", "activation_checkpointing_policy: [zoo.nn.Attention]"
    )
    task = BackboneTask(BACKBONES["gpt2"][0]())
    strategy = _set_up(_trainer_strategy(tmp_path, "--config", str(config)), task)
    assert _wrapped(strategy, task) == {f"backbone.decoder.layers.{i}.mlp" for i in range(2)}
    assert _checkpointed(strategy, task) == {f"backbone.decoder.layers.{i}.self_attn" for i in range(2)}


_TWO_RANKS = """
import json, sys
import lightning as L
import torch
import torch.distributed.fsdp as fsdp
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.utils.data import DataLoader

from zoo.models.gpt2 import GPT2
from zoo.strategies import FSDP
from zoo.tasks import CausalLM

FullyShardedDataParallel = fsdp.FullyShardedDataParallel


class OnCPU(FullyShardedDataParallel):
    # Lightning passes device_id=None on CPU, which torch refuses ("FSDP needs a non-CPU accelerator
    # device"); FSDP runs on CPU with gloo when told device_id=cpu
    def __init__(self, module, *args, device_id=None, **kwargs):
        super().__init__(module, *args, device_id=device_id or torch.device("cpu"), **kwargs)


fsdp.FullyShardedDataParallel = OnCPU


class Report(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module):
        names = lambda kind: [n for n, m in trainer.model.named_modules() if isinstance(m, kind)]
        report = dict(world_size=trainer.world_size, losses=self.losses,
                      units=names(FullyShardedDataParallel), checkpointed=names(CheckpointWrapper))
        with open(f"{sys.argv[1]}/rank{trainer.global_rank}.json", "w") as f:
            json.dump(report, f)


if __name__ == "__main__":
    L.seed_everything(0)
    ids = torch.randint(0, 32, (8, 16))  # 8 sequences seen again and again: the loss must fall
    data = [{"input_ids": x, "labels": x} for x in ids.repeat(4, 1)]
    gpt2 = GPT2(vocab_size=32, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=2)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=FSDP(activation_checkpointing=True),
                        max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=sys.argv[1], callbacks=[Report()])
    optimizer = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}}
    schedule = {"class_path": "zoo.tasks.optim.WarmupCosine", "init_args": {"warmup_steps": 0}}
    trainer.fit(CausalLM(gpt2, optimizer=optimizer, lr_scheduler=schedule), DataLoader(data, batch_size=4))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_cpu_ranks_train_with_one_fsdp_unit_per_block(tmp_path):
    """A real 2-process FSDP fit (gloo) of a tiny GPT-2: units and checkpoint wrappers at the blocks."""
    script = tmp_path / "two_ranks.py"
    script.write_text(_TWO_RANKS)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.perf_counter() - start < 120
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["world_size"] == 2 and len(report["losses"]) == 6
        assert report["losses"][-1] < report["losses"][0] - 0.1, report["losses"]
        root = "_fsdp_wrapped_module"
        blocks = [f"{root}.backbone.decoder.layers.{i}" for i in range(2)]
        assert report["units"] == ["", *blocks]  # the root, then one unit per block and nothing else
        assert report["checkpointed"] == [f"{b}.{root}" for b in blocks]
