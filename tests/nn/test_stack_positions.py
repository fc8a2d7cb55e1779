"""`DecoderLM`'s optional absolute positions: added to the token embeddings at the right ids (also when
decoding with a cache), absent by default, and reachable from the ``zoo`` command line."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import shared_file

from zoo.cli import main
from zoo.models.llama import Llama
from zoo.nn import LearnedPositions, Positions, SinusoidalPositions
from zoo.tasks import CausalLM

REPO = Path(__file__).resolve().parents[2]
TINY = dict(vocab_size=11, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=2)


def _position_free(**absolute) -> Llama:
    torch.manual_seed(0)
    return Llama(**TINY, positions=Positions(), **absolute).eval()


def test_absolute_positions_tell_repeated_tokens_apart():
    ids = torch.full((1, 6), 3)  # one token six times
    with torch.no_grad():
        blind = _position_free()(ids)
        learned = _position_free(absolute_positions=LearnedPositions(max_seq_len=16, embed_dim=16))(ids)
    # without any position encoding, causal attention over equal tokens gives equal outputs everywhere
    torch.testing.assert_close(blind[:, 1:], blind[:, :1].expand(-1, 5, -1))
    assert not torch.allclose(learned[:, 1:], learned[:, :1].expand(-1, 5, -1), atol=1e-4)


def test_cached_decoding_adds_the_positions_after_the_cached_ones():
    model = _position_free(absolute_positions=SinusoidalPositions(max_seq_len=16, embed_dim=16))
    ids = torch.randint(0, 11, (2, 9))
    with torch.no_grad():
        full = model(ids)
        caches = model.init_cache(2)
        steps = [model(ids[:, :5], cache=caches)]
        steps += [model(ids[:, t : t + 1], cache=caches) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # explicit position ids (left padding) are what gets embedded
    shifted = torch.arange(2, 11).expand(2, -1)
    with torch.no_grad():
        assert not torch.allclose(model(ids, position_ids=shifted), full, atol=1e-4)


def test_llama_has_no_absolute_positions_by_default():
    model = Llama(**TINY)
    assert model.absolute_positions is None
    assert model.spec["init_args"]["absolute_positions"] is None
    assert not any(name.startswith("absolute_positions") for name in model.state_dict())


def test_zoo_fit_trains_llama_with_learned_absolute_positions_and_reloads_them(tmp_path, monkeypatch):
    corpus = shared_file("tinyshakespeare/input.txt")
    monkeypatch.chdir(tmp_path)
    arg = "--model.init_args.backbone.init_args"
    main(
        [
            "fit",
            "--config",
            str(REPO / "recipes" / "gpt2" / "shakespeare-char.yaml"),
            "--model.init_args.backbone=zoo.models.llama.Llama",
            f"{arg}.num_layers=1",
            f"{arg}.embed_dim=32",
            f"{arg}.num_heads=2",
            f"{arg}.positions=zoo.nn.Positions",
            f"{arg}.absolute_positions=zoo.nn.LearnedPositions",
            f"{arg}.absolute_positions.init_args.max_seq_len=64",
            f"{arg}.absolute_positions.init_args.embed_dim=32",
            f"--data.init_args.files=[{corpus}]",
            "--trainer.max_steps=3",
            "--trainer.val_check_interval=3",
            "--trainer.limit_val_batches=1",
            "--model.init_args.max_new_tokens=4",
        ]
    )
    last = tmp_path / "runs" / "shakespeare-char" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    table = state["backbone.absolute_positions.weight"]
    assert table.shape == (64, 32)
    model = CausalLM.load_from_checkpoint(last, weights_only=True)
    assert isinstance(model.backbone.absolute_positions, LearnedPositions)
    torch.testing.assert_close(model.backbone.absolute_positions.weight, table)
    assert not any(n.endswith(("q_proj.bias", "cos")) for n in state)  # no biases, no rotary tables


def test_last_only_logits_are_the_last_position_of_the_full_logits():
    torch.manual_seed(0)
    model = Llama(
        vocab_size=64, max_seq_len=16, embed_dim=32, num_heads=4, num_kv_heads=2, num_layers=2
    ).eval()
    ids = torch.randint(0, 64, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    with torch.no_grad():
        full = model(ids, attention_mask=mask)  # (3, 9, 64)
        last = model(ids, attention_mask=mask, last_only=True)  # (3, 1, 64)
    assert last.shape == (3, 1, 64)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-6)
