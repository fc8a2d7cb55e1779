"""BackboneTask: decay/no-decay groups, the warm-up + cosine schedule, backbone specs."""

from __future__ import annotations

import math

import pytest
from torch import nn

from zoo.models.gpt2 import GPT2
from zoo.models.spec import from_spec, spec_of
from zoo.tasks import CausalLM
from zoo.tasks.base import warmup_cosine


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
    task = CausalLM(backbone, weight_decay=0.1, total_steps=10)
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
