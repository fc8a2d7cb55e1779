"""The encoder-decoder Transformer: incremental decoding, source padding, sizes, specs, bad input, and the
weights of checkpoints and seeds from before the shared stacks."""

from __future__ import annotations

import pytest
import torch

from zoo.checkpoint import upgrade_state_dict
from zoo.models.seq2seq import TRANSFORMER_SIZES, Transformer
from zoo.models.spec import from_spec
from zoo.nn import DecoderCache

VARIANTS = [("pre", "sinusoidal"), ("post", "learned")]

# The state-dict layout before the shared stacks (zoo 005bf8e and earlier), one encoder and one decoder
# pre-norm block with learned positions and separate tables: the keys older checkpoints hold, in order.
_OLD_BLOCK = ["self_attn.out_proj", "self_attn.qkv_proj", "self_attn_norm", "mlp.in_proj", "mlp.out_proj"]
_OLD_CROSS = ["cross_attn.out_proj", "cross_attn.q_proj", "cross_attn.kv_proj", "cross_attn_norm"]
OLD_KEYS = [
    *(f"{side}_embed.{table}.weight" for side in ("src", "tgt") for table in ("tokens", "positions")),
    *(f"encoder_layers.0.{m}.{p}" for m in [*_OLD_BLOCK, "mlp_norm"] for p in ("weight", "bias")),
    *(
        f"decoder_layers.0.{m}.{p}"
        for m in [*_OLD_BLOCK[:3], *_OLD_CROSS, *_OLD_BLOCK[3:], "mlp_norm"]
        for p in ("weight", "bias")
    ),
    *(f"{stack}_norm.{p}" for stack in ("encoder", "decoder") for p in ("weight", "bias")),
    "lm_head.weight",
]


def _model(norm: str = "pre", positions: str = "sinusoidal", **kw) -> Transformer:
    torch.manual_seed(0)
    args = dict(
        vocab_size=40,
        max_seq_len=16,
        embed_dim=32,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        hidden_dim=64,
        norm=norm,
        positions=positions,
    )
    return Transformer(**{**args, **kw}).eval()


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.randint(3, 40, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(src)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return src.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize(("norm", "positions"), VARIANTS)
def test_cached_decoding_equals_full_decoding(norm, positions):
    model = _model(norm, positions)
    src, mask = _padded_batch()
    tgt = torch.randint(3, 40, (3, 7), generator=torch.Generator().manual_seed(2))
    full = model(src, tgt, attention_mask=mask)  # (B, T, V)
    memory = model.encode(src, attention_mask=mask)
    caches = model.init_cache(3, target_len=7, source_len=9)
    first = model.decode(
        tgt[:, :3], memory, memory_mask=mask, cache=caches
    )  # a prefix, then one token at a time
    steps = [model.decode(tgt[:, t : t + 1], memory, memory_mask=mask, cache=caches) for t in range(3, 7)]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, atol=1e-5, rtol=1e-5)
    assert caches.seq_len == 7


@pytest.mark.parametrize(("norm", "positions"), VARIANTS)
def test_source_padding_is_ignored(norm, positions):
    model = _model(norm, positions)
    src, mask = _padded_batch()
    tgt = torch.randint(3, 40, (3, 5), generator=torch.Generator().manual_seed(3))
    batched = model(src, tgt, attention_mask=mask)
    for i in range(3):
        n = int(mask[i].sum())
        alone = model(src[i : i + 1, :n], tgt[i : i + 1])  # no padding, no mask
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    garbage = src.masked_fill(mask == 0, 7)  # what sits under the padding does not matter either
    torch.testing.assert_close(model(garbage, tgt, attention_mask=mask), batched)


def test_reorder_moves_cached_rows():
    model = _model()
    src, mask = _padded_batch()
    tgt = torch.randint(3, 40, (3, 4), generator=torch.Generator().manual_seed(4))
    memory = model.encode(src, attention_mask=mask)
    caches = model.init_cache(3, target_len=4, source_len=9)
    model.decode(tgt[:, :3], memory, memory_mask=mask, cache=caches)
    assert isinstance(caches, DecoderCache)
    order = torch.tensor([2, 0, 0])
    caches.reorder(order)
    moved = model.decode(tgt[order, 3:], memory[order], memory_mask=mask[order], cache=caches)
    torch.testing.assert_close(moved[:, -1], model(src[order], tgt[order], attention_mask=mask[order])[:, -1])
    caches = model.init_cache(3, target_len=4, source_len=9)
    model.decode(tgt[:, :3], memory, memory_mask=mask, cache=caches)
    rows = torch.tensor([0, 0, 1, 1, 2, 2])  # one row per source becomes two (beam search's expansion)
    caches.reorder(rows)
    grown = model.decode(tgt[rows, 3:], memory[rows], memory_mask=mask[rows], cache=caches)
    torch.testing.assert_close(grown[:, -1], model(src[rows], tgt[rows], attention_mask=mask[rows])[:, -1])


def test_embeddings_shared_and_tied_as_asked():
    shared = _model()
    assert shared.src_embed.tokens is shared.tgt_embed.tokens
    assert shared.lm_head.weight is shared.tgt_embed.tokens.weight
    separate = _model(share_embeddings=False, tie_weights=False)
    assert separate.src_embed.tokens is not separate.tgt_embed.tokens
    assert separate.lm_head.weight is not separate.tgt_embed.tokens.weight
    assert separate.num_parameters() == shared.num_parameters() + 2 * 40 * 32


def test_named_sizes_and_spec_round_trip():
    assert set(TRANSFORMER_SIZES) >= {"transformer-base", "transformer-big", "transformer-small"}
    model = Transformer.from_name("transformer-tiny", vocab_size=100, max_seq_len=32)
    assert model.num_parameters() == 233_728 + 64 * 100
    rebuilt = from_spec(model.spec)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.spec == model.spec and model.spec["init_args"]["num_decoder_layers"] == 2
    with pytest.raises(ValueError, match="unknown Transformer size"):
        Transformer.from_name("transformer-huge")


def test_sources_and_targets_longer_than_the_positions_are_refused():
    model = _model()  # 16 positions
    with pytest.raises(ValueError, match="sequence length 17 exceeds the model's max_seq_len=16"):
        model.encode(torch.ones(1, 17, dtype=torch.long))
    memory = model.encode(torch.ones(1, 4, dtype=torch.long))
    caches = model.init_cache(1, target_len=20, source_len=4)
    model.decode(torch.ones(1, 16, dtype=torch.long), memory, cache=caches)
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len=16"):
        model.decode(torch.ones(1, 1, dtype=torch.long), memory, cache=caches)


def test_sinusoidal_positions_follow_the_paper():
    from zoo.nn.embeddings import SinusoidalPositions

    table = SinusoidalPositions(max_seq_len=50, embed_dim=8)(torch.arange(50))  # (50, 8)
    p, i = 37, 2
    angle = torch.tensor(p / 10000 ** (2 * i / 8), dtype=torch.float64)
    assert table[p, 2 * i].item() == pytest.approx(angle.sin().item(), abs=1e-6)
    assert table[p, 2 * i + 1].item() == pytest.approx(angle.cos().item(), abs=1e-6)
    assert not dict(SinusoidalPositions(max_seq_len=4, embed_dim=2).state_dict())  # nothing saved


def test_checkpoints_from_before_the_stacks_map_onto_todays_weights():
    model = _model(
        num_encoder_layers=1,
        num_decoder_layers=1,
        positions="learned",
        share_embeddings=False,
        tie_weights=False,
    )
    upgraded = list(upgrade_state_dict(dict.fromkeys(OLD_KEYS), model, prefix=""))
    today = list(model.state_dict())
    assert len(upgraded) == len(set(upgraded)) and set(upgraded) == set(today)
    # only the final norms moved (behind their stack's blocks): within a block the order is the same
    in_blocks = lambda keys: [k for k in keys if ".layers." in k]
    assert in_blocks(upgraded) == in_blocks(today)


def test_a_seed_draws_the_weights_it_drew_before_the_stacks():
    """A run started from a seed starts from the same weights as before the move (values printed by
    zoo 005bf8e, under the old key names ``encoder_layers``/``decoder_layers``)."""
    torch.manual_seed(0)
    weights = Transformer.from_name("transformer-tiny", vocab_size=100, max_seq_len=32).state_dict()
    drawn_then = {
        "encoder.layers.0.self_attn.out_proj.weight": ([-0.1692181, -0.0331407, -0.1219943], 3.4658198),
        "decoder.layers.1.cross_attn.kv_proj.weight": ([0.0517180, 0.0876673, 0.0176550], -11.0708094),
        "decoder.layers.1.mlp.out_proj.weight": ([0.0815720, 0.0076738, -0.0429843], -1.6066304),
        "lm_head.weight": ([-0.0573197, 0.1984900, -0.0203748], 5.6359501),  # drawn last
    }
    for key, (first, total) in drawn_then.items():
        torch.testing.assert_close(weights[key].flatten()[:3], torch.tensor(first), atol=1e-6, rtol=0)
        assert weights[key].sum().item() == pytest.approx(total, abs=1e-4), key


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (dict(embed_dim=30), "embed_dim=30 is not divisible by num_heads=4"),
        (dict(num_decoder_layers=0), "num_decoder_layers must be a positive integer, got 0"),
        (dict(attention_dropout=1.5), r"attention_dropout must be in \[0, 1\], got 1.5"),
    ],
)
def test_bad_sizes_are_refused_naming_the_argument(bad, message):
    with pytest.raises(ValueError, match=f"Transformer: {message}"):
        _model(**bad)
