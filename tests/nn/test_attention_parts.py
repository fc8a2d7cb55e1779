"""Attention from injected parts, RMSNorm, the gated MLP and the decoder stack: invariances users rely on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.nn import (
    ALiBiPositions,
    Attention,
    DecoderStack,
    GatedMLP,
    KVCache,
    LoRALinear,
    PreNormBlock,
    RMSNorm,
    RotaryPositions,
)

C, NH, HS = 32, 4, 8


def _attention(num_kv_heads: int, positions=None, causal: bool = True, bias: bool = False) -> Attention:
    torch.manual_seed(0)
    return Attention(
        q_proj=nn.Linear(C, NH * HS, bias=bias),
        k_proj=nn.Linear(C, num_kv_heads * HS, bias=bias),
        v_proj=nn.Linear(C, num_kv_heads * HS, bias=bias),
        out_proj=nn.Linear(NH * HS, C, bias=bias),
        num_heads=NH,
        num_kv_heads=num_kv_heads,
        head_dim=HS,
        positions=positions,
        causal=causal,
    ).eval()


def _fused(ours: Attention, causal: bool) -> Attention:
    """``ours`` (separate q/k/v projections) with one fused qkv_proj holding the same weights."""
    qkv = nn.Linear(C, 3 * C, bias=ours.q_proj.bias is not None)
    with torch.no_grad():
        qkv.weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        if qkv.bias is not None:
            qkv.bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    return Attention(qkv_proj=qkv, out_proj=ours.out_proj, num_heads=NH, head_dim=HS, causal=causal).eval()


@pytest.mark.parametrize("causal", [True, False])
def test_fused_qkv_equals_separate_projections(causal):
    ours = _attention(NH, causal=causal, bias=True)
    fused = _fused(ours, causal)
    assert list(dict(fused.named_children())) == ["out_proj", "qkv_proj"]  # old checkpoints' order
    x = torch.randn(2, 7, C)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        torch.testing.assert_close(ours(x), fused(x))
        got, expected = ours(x, padding_mask=mask), fused(x, padding_mask=mask)
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()])


@pytest.mark.parametrize("layout", ["fused", "separate", "fused-adapter"])
def test_query_index_computes_only_the_chosen_rows(layout):
    attn = _attention(NH, causal=False, bias=True)
    attn = attn if layout == "separate" else _fused(attn, causal=False)
    if layout == "fused-adapter":  # a wrapped projection is called whole: its adapter reaches the rows
        attn.qkv_proj = LoRALinear(attn.qkv_proj, rank=2, alpha=4.0)
        with torch.no_grad():
            attn.qkv_proj.lora_B.normal_()
    x, mask = torch.randn(2, 7, C), torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    index = torch.tensor([[0, 3, 6], [0, 1, 4]])
    with torch.no_grad():
        full = attn(x, padding_mask=mask)
        some = attn(x, padding_mask=mask, query_index=index)  # (B, 3, C)
    torch.testing.assert_close(some, full.gather(1, index.unsqueeze(-1).expand(-1, -1, C)))
    with pytest.raises(ValueError, match="query_index is for bidirectional attention"):
        _attention(NH, causal=True)(x, query_index=index)


def test_a_projection_set_that_is_not_one_of_the_three_is_refused():
    linear = nn.Linear(C, C)
    with pytest.raises(
        ValueError, match="qkv_proj, or q_proj with k_proj and v_proj, or q_proj with kv_proj"
    ):
        Attention(q_proj=linear, out_proj=linear, num_heads=NH, head_dim=HS)


def test_grouped_heads_equal_multi_head_with_repeated_key_value_heads():
    grouped = _attention(2, positions=RotaryPositions(head_dim=HS, max_seq_len=16))
    full = _attention(NH, positions=grouped.positions)
    with torch.no_grad():
        full.q_proj.load_state_dict(grouped.q_proj.state_dict())
        full.out_proj.load_state_dict(grouped.out_proj.state_dict())
        for name in ("k_proj", "v_proj"):  # kv head h serves query heads 2h and 2h+1
            w = getattr(grouped, name).weight.view(2, HS, C).repeat_interleave(2, dim=0)
            getattr(full, name).weight.copy_(w.reshape(NH * HS, C))
        x = torch.randn(2, 6, C)
        torch.testing.assert_close(grouped(x), full(x))


@pytest.mark.parametrize("positions", ["rotary", "alibi", None])
def test_cached_decoding_equals_the_full_forward(positions):
    pos = {"rotary": RotaryPositions(head_dim=HS, max_seq_len=16), "alibi": ALiBiPositions(num_heads=NH)}
    attn = _attention(2, positions=pos.get(positions))
    x = torch.randn(2, 9, C)
    cache = KVCache(batch_size=2, num_heads=2, head_dim=HS, max_seq_len=9)
    with torch.no_grad():
        full = attn(x)
        steps = [attn(x[:, :4], kv_cache=cache)]  # a prompt of 4, then a chunk of 2, then one at a time
        steps.append(attn(x[:, 4:6], kv_cache=cache))
        steps += [attn(x[:, t : t + 1], kv_cache=cache) for t in range(6, 9)]
    assert cache.seq_len == 9 and cache.k.shape[1] == 2  # only the key/value heads are stored
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("positions", ["rotary", "alibi"])
def test_padded_rows_equal_unpadded_rows(positions):
    pos = {"rotary": RotaryPositions(head_dim=HS, max_seq_len=16), "alibi": ALiBiPositions(num_heads=NH)}
    attn = _attention(2, positions=pos[positions])
    x = torch.randn(1, 5, C)
    pad = torch.randn(1, 3, C)
    left = torch.cat([pad, x], dim=1)  # (1, 8, C): 3 padding tokens first
    right = torch.cat([x, pad], dim=1)
    left_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = attn(x)
        got_left = attn(left, padding_mask=left_mask, position_ids=torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4]]))
        got_right = attn(right, padding_mask=left_mask.flip(1))
    torch.testing.assert_close(got_left[:, 3:], alone)
    torch.testing.assert_close(got_right[:, :5], alone)


def test_cross_attention_reads_memory_and_caches_it_once():
    torch.manual_seed(3)
    ours = Attention(
        q_proj=nn.Linear(C, C),
        k_proj=nn.Linear(16, C),
        v_proj=nn.Linear(16, C),
        out_proj=nn.Linear(C, C),
        num_heads=NH,
        head_dim=HS,
        positions=RotaryPositions(head_dim=HS, max_seq_len=16),  # never applied across sequences
        causal=True,  # nor is the causal mask
    ).eval()
    kv = nn.Linear(16, 2 * C)  # the same keys/values from one fused projection
    with torch.no_grad():
        kv.weight.copy_(torch.cat([ours.k_proj.weight, ours.v_proj.weight]))
        kv.bias.copy_(torch.cat([ours.k_proj.bias, ours.v_proj.bias]))
    fused = Attention(
        q_proj=ours.q_proj, kv_proj=kv, out_proj=ours.out_proj, num_heads=NH, head_dim=HS
    ).eval()
    x, memory = torch.randn(2, 3, C), torch.randn(2, 5, 16)
    memory_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    cache = KVCache(batch_size=2, num_heads=NH, head_dim=HS, max_seq_len=5)
    with torch.no_grad():
        projected = (ours.q_proj(x), ours.k_proj(memory), ours.v_proj(memory))
        split = [t.reshape(2, -1, NH, HS).transpose(1, 2) for t in projected]  # (B, nh, T or S, hs)
        scores = split[0] @ split[1].transpose(-1, -2) / HS**0.5  # (B, nh, 3, 5)
        scores = scores.masked_fill(~memory_mask[:, None, None].bool(), float("-inf"))
        direct = (scores.softmax(-1) @ split[2]).transpose(1, 2).reshape(2, 3, C)
        expected = ours.out_proj(direct)
        torch.testing.assert_close(ours(x, memory=memory, padding_mask=memory_mask), expected)
        torch.testing.assert_close(fused(x, memory=memory, padding_mask=memory_mask), expected)
        first = ours(x[:, :1], memory=memory, padding_mask=memory_mask, kv_cache=cache)
        second = ours(x[:, 1:2], memory=torch.zeros_like(memory), padding_mask=memory_mask, kv_cache=cache)
    assert cache.seq_len == 5  # filled once from the memory, then only read
    torch.testing.assert_close(torch.cat([first, second], dim=1), expected[:, :2])


def test_kv_cache_reorder_keeps_the_chosen_rows():
    cache = KVCache(batch_size=3, num_heads=2, head_dim=4, max_seq_len=6)
    k = torch.arange(3.0)[:, None, None, None].expand(3, 2, 2, 4)
    cache.update(k, -k)
    cache.reorder(torch.tensor([2, 2, 0]))
    keys, values = cache.update(torch.zeros(3, 2, 1, 4), torch.zeros(3, 2, 1, 4))
    assert keys[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0] and values[:, 0, 0, 0].tolist() == [-2.0, -2.0, 0.0]
    assert keys.shape == (3, 2, 3, 4)


def test_rms_norm_matches_its_definition_in_float32_for_half_inputs():
    norm = RMSNorm(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(2, 3, 6)
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)
    assert norm(x.bfloat16()).dtype == torch.float32  # weight (fp32) times the bf16-cast normalised input
    with pytest.raises(ValueError, match="eps"):
        RMSNorm(6, eps=0.0)


def test_gated_mlp_is_down_of_silu_gate_times_up():
    mlp = GatedMLP(embed_dim=8, hidden_dim=12, activation=nn.SiLU())
    x = torch.randn(2, 3, 8)
    expected = mlp.down_proj(nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    torch.testing.assert_close(mlp(x), expected)
    assert mlp.gate_proj.bias is None and set(dict(mlp.named_children())) >= {
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def _stack() -> DecoderStack:
    torch.manual_seed(5)
    rope = RotaryPositions(head_dim=HS, max_seq_len=16)

    def block() -> PreNormBlock:
        return PreNormBlock(
            self_attn=_attention(2, positions=rope),
            mlp=GatedMLP(embed_dim=C, hidden_dim=48, activation=nn.SiLU()),
            self_attn_norm=RMSNorm(C),
            mlp_norm=RMSNorm(C),
        )

    return DecoderStack(layers=[block(), block()], norm=RMSNorm(C)).eval()


def test_decoder_stack_cache_decodes_like_the_full_pass_and_reorders_for_beams():
    stack = _stack()
    x = torch.randn(2, 7, C)
    cache = stack.init_cache(2, 7)
    assert len(cache) == 2 and cache.self_attn[0].k.shape == (2, 2, 7, HS)
    with torch.no_grad():
        full = stack(x)
        steps = [stack(x[:, :5], cache=cache)] + [stack(x[:, t : t + 1], cache=cache) for t in (5, 6)]
    assert cache.seq_len == 7
    torch.testing.assert_close(torch.cat(steps, dim=1), full)
    # beams: row 1 continues twice; a reordered cache decodes as if row 1 had been run twice
    cache = stack.init_cache(2, 7)
    with torch.no_grad():
        stack(x[:, :6], cache=cache)
        cache.reorder(torch.tensor([1, 1]))
        step = stack(x[[1, 1], 6:7], cache=cache)
    torch.testing.assert_close(step, full[[1, 1], 6:7])


def test_key_value_heads_must_divide_query_heads():
    with pytest.raises(ValueError, match="num_kv_heads=3 does not divide num_heads=4"):
        _attention(3)
