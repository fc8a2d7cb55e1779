"""`set_linear_layout`: the same model in another memory order decodes the same tokens."""

from __future__ import annotations

import io

import pytest
import torch

from zoo.models.llama import Llama
from zoo.nn import set_linear_layout
from zoo.tasks.decoding import generate


def _llama() -> Llama:
    torch.manual_seed(0)
    return Llama(
        vocab_size=96,
        max_seq_len=64,
        embed_dim=32,
        num_heads=4,
        num_kv_heads=2,
        num_layers=2,
        tie_weights=True,
    ).eval()


def test_wide_weights_move_to_in_out_order_and_back_keeping_values_and_ties():
    model = _llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # per layer q and out (square), gate and up (wider); the tied output layer once; not k, v, down
    assert set_linear_layout(model, "in_out") == 2 * 4 + 1
    assert set_linear_layout(model, "in_out") == 0  # already there
    attn, mlp = model.layers[0].self_attn, model.layers[0].mlp
    assert mlp.up_proj.weight.shape == (mlp.up_proj.out_features, 32)
    assert mlp.up_proj.weight.stride() == (1, mlp.up_proj.out_features)
    assert attn.k_proj.weight.is_contiguous() and mlp.down_proj.weight.is_contiguous()
    assert model.lm_head.weight is model.tokens.weight
    assert model.tokens.weight.stride() == (1, 96)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert set_linear_layout(model, "out_in") == 2 * 4 + 1
    assert all(p.is_contiguous() for p in model.parameters())


def test_in_out_order_decodes_the_same_tokens_and_saves_the_same_state_dict():
    model = _llama()
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    expected = generate(model, prompts, max_new_tokens=12, temperature=0.0)
    with torch.no_grad():
        logits = model(torch.tensor([prompts[0]]))
    set_linear_layout(model)
    assert generate(model, prompts, max_new_tokens=12, temperature=0.0) == expected
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([prompts[0]])), logits, rtol=1e-5, atol=1e-5)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = _llama()
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_an_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="'in_out' or 'out_in'"):
        set_linear_layout(_llama(), "column_major")
