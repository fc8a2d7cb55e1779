"""A user's project plugs a new attention variant into an existing family by injection alone: a position
encoding of their own reaches zoo's Llama from the command line by ``class_path``, trains, and comes back
from the checkpoint with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import REPO, shared_file
from zoo.cli import main
from zoo.models.llama import Llama
from zoo.models.spec import Configurable, from_spec, spec_of
from zoo.nn import ALiBiPositions, Positions, RotaryPositions
from zoo.tasks import CausalLM

USER_PROJECT = Path(__file__).resolve().parent / "fixtures" / "user_project"
TINY = dict(vocab_size=40, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1)


def _positions(model: Llama) -> list[nn.Module]:
    return [layer.self_attn.positions for layer in model.decoder.layers]


def test_zoo_fit_trains_llama_with_a_users_position_encoding_and_reloads_it(tmp_path, monkeypatch):
    corpus = shared_file("tinyshakespeare/input.txt")
    monkeypatch.syspath_prepend(str(USER_PROJECT))  # the user's PYTHONPATH
    monkeypatch.chdir(tmp_path)  # the recipe's relative output paths land in tmp_path
    main(
        [
            "fit",
            "--config",
            str(REPO / "recipes" / "gpt2" / "shakespeare-char.yaml"),
            "--model.init_args.backbone=zoo.models.llama.Llama",
            "--model.init_args.backbone.init_args.positions=my_positions.NoPositions",
            "--model.init_args.backbone.init_args.num_layers=1",
            "--model.init_args.backbone.init_args.embed_dim=32",
            "--model.init_args.backbone.init_args.num_heads=2",
            f"--data.init_args.files=[{corpus}]",
            "--trainer.max_steps=3",
            "--trainer.val_check_interval=3",
            "--trainer.limit_val_batches=1",
        ]
    )
    import my_positions

    last = tmp_path / "runs" / "shakespeare-char" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    # the checkpoint holds the backbone as a plain spec, the user's module as a nested class_path
    hparams = torch.load(last, weights_only=True)["hyper_parameters"]
    assert hparams["backbone"]["class_path"] == "zoo.models.llama.Llama"
    assert hparams["backbone"]["init_args"]["positions"] == {"class_path": "my_positions.NoPositions"}
    model = CausalLM.load_from_checkpoint(last, weights_only=True)
    assert isinstance(model.backbone, Llama)
    # the reloaded task records the same spec, so saving it again keeps the user's module
    assert model.hparams["backbone"] == hparams["backbone"]
    shared = _positions(model.backbone)[0]
    assert isinstance(shared, my_positions.NoPositions)
    assert all(p is shared for p in _positions(model.backbone))  # one module for every layer, as injected
    # its counter, saved with the weights: training, validation and sampling ran through it
    assert int(shared.calls) > 3

    # the model computes with it: the same weights under rotary positions give other logits
    ids = torch.randint(0, model.backbone.vocab_size, (1, 12))
    rotary = Llama(**{**hparams["backbone"]["init_args"], "positions": None}).eval()
    rotary.load_state_dict(model.backbone.state_dict(), strict=False)  # all but the counter
    with torch.no_grad():
        ours, theirs = model.backbone.eval()(ids), rotary(ids)
    torch.testing.assert_close(ours[:, 0], theirs[:, 0])  # position 0: rotary rotates by zero
    assert not torch.allclose(ours[:, 1:], theirs[:, 1:], atol=1e-4)


def test_the_default_llama_is_rotary_and_records_a_plain_spec():
    model = Llama(**TINY, rope_theta=500000.0)
    rope = _positions(model)[0]
    assert isinstance(rope, RotaryPositions) and all(p is rope for p in _positions(model))
    assert torch.equal(rope.inv_freq, RotaryPositions(head_dim=8, max_seq_len=16, theta=500000.0).inv_freq)
    assert spec_of(model)["init_args"]["positions"] is None
    assert "positions" not in "".join(model.state_dict())  # rotary tables are not weights


def test_from_spec_builds_a_nested_module_spec():
    spec = {
        "class_path": "zoo.models.llama.Llama",
        "init_args": {
            **TINY,
            "positions": {"class_path": "zoo.nn.ALiBiPositions", "init_args": {"num_heads": 2}},
        },
    }
    model = from_spec(spec)
    assert isinstance(_positions(model)[0], ALiBiPositions)
    assert _positions(model)[0].slopes.shape == (2,)


class ScaledRotary(Configurable, RotaryPositions):
    """A position module that records its own arguments (a `Configurable` one)."""

    def __init__(self, *, head_dim: int, max_seq_len: int, theta: float = 10000.0) -> None:
        super().__init__(head_dim=head_dim, max_seq_len=max_seq_len, theta=theta)


def test_a_configurable_module_argument_is_recorded_as_a_nested_spec_and_rebuilt():
    model = Llama(**TINY, positions=ScaledRotary(head_dim=8, max_seq_len=16, theta=20.0))
    spec = spec_of(model)
    assert spec["init_args"]["positions"] == {
        "class_path": f"{__name__}.ScaledRotary",
        "init_args": {"head_dim": 8, "max_seq_len": 16, "theta": 20.0},
    }
    assert CausalLM(model).hparams.backbone == spec  # what a checkpoint stores
    rebuilt = _positions(from_spec(spec))[0]
    assert type(rebuilt) is ScaledRotary and torch.equal(rebuilt.inv_freq, _positions(model)[0].inv_freq)


def test_a_plain_module_argument_leaves_no_spec():
    class Plain(Positions):
        pass

    with pytest.warns(UserWarning, match="does not record its constructor arguments"):
        CausalLM(Llama(**TINY, positions=Plain()))


def test_a_llama_with_injected_positions_is_not_exported_as_rotary(tmp_path):
    """transformers' Llama only knows rotary positions: exporting another encoding is refused, not faked."""
    from zoo.models.spec import from_spec

    sizes = {"vocab_size": 32, "max_seq_len": 16, "embed_dim": 16, "num_heads": 2, "num_layers": 1}
    alibi = {"class_path": "zoo.nn.ALiBiPositions", "init_args": {"num_heads": 2}}
    model = from_spec({"class_path": "zoo.models.llama.Llama", "init_args": {**sizes, "positions": alibi}})
    with pytest.raises(ValueError, match="cannot (write its config.json|be exported)"):
        model.to_hf(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
