"""Position encodings: rotary is relative, ALiBi has the paper's slopes, absolute ones embed ids."""

from __future__ import annotations

import pytest
import torch

from zoo.nn import ALiBiPositions, LearnedPositions, RotaryPositions, SinusoidalPositions
from zoo.nn.positions import alibi_slopes


def test_rotary_scores_depend_only_on_the_offset():
    rope = RotaryPositions(head_dim=16, max_seq_len=64, theta=10000.0)
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)

    def score(i: int, j: int) -> torch.Tensor:
        qi, _ = rope.apply(q, q, torch.tensor([i]))
        _, kj = rope.apply(k, k, torch.tensor([j]))
        return (qi * kj).sum(-1)  # (1, 2, 1)

    torch.testing.assert_close(score(3, 1), score(40, 38), atol=1e-5, rtol=1e-5)  # offset 2
    torch.testing.assert_close(score(0, 0), score(17, 17), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)  # a different offset differs
    # the rotation keeps norms, and position 0 is the identity
    q0, _ = rope.apply(q, k, torch.tensor([0]))
    torch.testing.assert_close(q0, q)
    q9, _ = rope.apply(q, k, torch.tensor([9]))
    torch.testing.assert_close(q9.norm(dim=-1), q.norm(dim=-1))


def test_rotary_matches_transformers_rotate_half_convention():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as hf

    config = transformers.LlamaConfig(hidden_size=32, num_attention_heads=2, rope_theta=500.0)
    hf_rope = hf.LlamaRotaryEmbedding(config)
    ours = RotaryPositions(head_dim=16, max_seq_len=32, theta=500.0)
    torch.manual_seed(1)
    q, k = torch.randn(2, 2, 5, 16), torch.randn(2, 1, 5, 16)
    positions = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 3, 4, 5]])  # (B, T), a left-padded row
    cos, sin = hf_rope(q, positions)
    expected = hf.apply_rotary_pos_emb(q, k, cos, sin)
    got = ours.apply(q, k, positions)
    torch.testing.assert_close(got[0], expected[0], atol=0, rtol=0)
    torch.testing.assert_close(got[1], expected[1], atol=0, rtol=0)


def test_alibi_slopes_are_the_papers():
    # Press et al.: 8 heads -> 1/2, 1/4, ..., 1/256; 12 heads -> the 8-head slopes then every other
    # slope of 16 heads (2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5)
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    expected_12 = [2.0**-i for i in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected_12))
    assert alibi_slopes(1).tolist() == [2.0**-8]


def test_alibi_bias_is_minus_slope_times_distance_with_cache_offset():
    alibi = ALiBiPositions(num_heads=8)
    full = alibi.bias(5, 5)  # (nh, Tq, Tk)
    assert full.shape == (8, 5, 5)
    assert full[0, 4, 1].item() == pytest.approx(-0.5 * 3)
    assert full[7, 2, 2].item() == 0.0
    assert full[0, 1, 4].item() == pytest.approx(-0.5 * 3)  # bidirectional attention: |i - j|
    # one new query after 4 cached keys is the last row of the full bias
    torch.testing.assert_close(alibi.bias(1, 5), full[:, 4:])


def test_absolute_positions_embed_position_ids():
    learned = LearnedPositions(max_seq_len=10, embed_dim=6)
    sinusoidal = SinusoidalPositions(max_seq_len=10, embed_dim=6)
    ids = torch.tensor([[0, 1, 2], [0, 0, 1]])
    assert learned(ids).shape == sinusoidal(ids).shape == (2, 3, 6)
    assert sum(p.numel() for p in learned.parameters()) == 60
    assert sinusoidal.state_dict() == {}  # nothing trained, nothing saved
    with pytest.raises(ValueError, match="max_seq_len"):
        LearnedPositions(max_seq_len=0, embed_dim=6)
    with pytest.raises(ValueError, match="even head_dim"):
        RotaryPositions(head_dim=7, max_seq_len=4)
