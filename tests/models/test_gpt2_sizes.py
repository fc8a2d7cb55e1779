"""GPT-2's named sizes have OpenAI's parameter counts, and a fresh model has GPT-2's initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zoo.models.gpt2 import GPT2

# OpenAI's releases: vocab 50257, context 1024, lm_head tied to the token embedding (counted once).
# (name, parameters, parameters without token/position embeddings, (embed_dim, num_heads, num_layers))
PUBLISHED = [
    ("gpt2", 124_439_808, 85_056_000, (768, 12, 12)),
    ("gpt2-medium", 354_823_168, 302_311_424, (1024, 16, 24)),
    ("gpt2-large", 774_030_080, 708_390_400, (1280, 20, 36)),
    ("gpt2-xl", 1_557_611_200, 1_475_561_600, (1600, 25, 48)),
]
# the CPU sizes of docs/models/gpt2.md (their full count depends on the vocabulary)
CPU_SIZES = [("gpt2-mini", 4_739_072, (256, 8, 6)), ("gpt2-tiny", 793_344, (128, 4, 4))]


def _shape(model: GPT2) -> tuple[int, int, int]:
    return model.embed_dim, model.layers[0].self_attn.num_heads, len(model.layers)


@pytest.mark.parametrize(
    ("name", "total", "without_embeddings", "shape"), PUBLISHED, ids=[p[0] for p in PUBLISHED]
)
def test_openai_sizes_have_the_published_parameter_counts(name, total, without_embeddings, shape):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = GPT2.from_name(name)
    assert (model.vocab_size, model.max_seq_len) == (50257, 1024)
    assert model.lm_head.weight is model.tokens.weight
    assert _shape(model) == shape
    assert model.layers[0].mlp.in_proj.out_features == 4 * shape[0]
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) == total
    assert model.num_parameters(exclude_embeddings=True) == without_embeddings


@pytest.mark.parametrize(("name", "without_embeddings", "shape"), CPU_SIZES, ids=[s[0] for s in CPU_SIZES])
def test_cpu_sizes_build_and_run(name, without_embeddings, shape):
    model = GPT2.from_name(name, vocab_size=65, max_seq_len=32)
    assert _shape(model) == shape
    assert model.num_parameters(exclude_embeddings=True) == without_embeddings
    assert model.num_parameters() == without_embeddings + (65 + 32) * shape[0]
    logits = model(torch.randint(0, 65, (2, 8)))
    assert logits.shape == (2, 8, 65) and torch.isfinite(logits).all()


def test_unknown_size_names_the_choices():
    with pytest.raises(ValueError, match="unknown GPT-2 size 'gpt3'; choose one of .*'gpt2-xl'"):
        GPT2.from_name("gpt3")


def test_gpt2_initialisation_scales_the_residual_projections():
    """N(0, 0.02) weights and embeddings, zero biases, and the two projections that write into the residual
    stream at 0.02 / sqrt(2 * num_layers). Every tensor here has >= 65k entries, so its sample std is
    within ~0.3% of the true one; 3% tolerance still rejects PyTorch's default init (0.018-0.036 for
    these shapes) and an unscaled residual init (2.8x too wide)."""
    num_layers = 4
    torch.manual_seed(0)
    model = GPT2(vocab_size=1000, max_seq_len=256, embed_dim=256, num_heads=4, num_layers=num_layers)
    residual_std = 0.02 / math.sqrt(2 * num_layers)
    residual = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Embedding):
            continue
        weight = module.weight.detach()
        is_residual = name.endswith(("self_attn.out_proj", "mlp.out_proj"))
        expected = residual_std if is_residual else 0.02
        residual += [name] if is_residual else []
        assert weight.std().item() == pytest.approx(expected, rel=0.03), name
        assert abs(weight.mean().item()) < 0.05 * expected, name
    assert len(residual) == 2 * num_layers  # both projections of every layer were checked
    biases = {n: p for n, p in model.named_parameters() if n.endswith(".bias")}
    assert len(biases) == 6 * num_layers + 1  # 4 linears and 2 LayerNorms per layer, the final norm
    assert all(torch.count_nonzero(b) == 0 for b in biases.values()), "biases start at zero"
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * num_layers + 1 and all(torch.all(m.weight == 1) for m in norms)
