"""`zoo.nn.lora`: a fresh adapter changes nothing, merging computes what the adapted model computes,
only adapters train, a fused projection's adapter is per-projection adapters with A shared, and every
family's attention and MLP layers can be targeted by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.models.bert import Bert
from zoo.models.gpt2 import GPT2
from zoo.models.llama import Llama
from zoo.models.seq2seq import Transformer
from zoo.nn import LoRA, LoRALinear, apply_lora, merge_lora
from zoo.nn.lora import base_layers, lora_layers

IDS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [5, 3, 5, 8, 9, 7, 9, 3]])


def _gpt2() -> GPT2:
    torch.manual_seed(0)
    return GPT2(vocab_size=50, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=2).eval()


def _perturb(model: nn.Module) -> None:
    """Non-zero B matrices, as after some training."""
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.1)


def test_fresh_adapter_changes_nothing_and_only_adapters_train():
    model = _gpt2()
    before = model(IDS)
    names = apply_lora(model, targets=["*.self_attn.qkv_proj", "*.mlp.*"], rank=4, alpha=8.0)
    layer = ("self_attn.qkv_proj", "mlp.in_proj", "mlp.out_proj")
    assert names == [f"decoder.layers.{i}.{n}" for i in (0, 1) for n in layer]
    torch.testing.assert_close(model(IDS), before, atol=0, rtol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert len(trainable) == 2 * len(names)
    # the base weights keep their names: a state dict of the plain model loads into the adapted one
    assert set(_gpt2().state_dict()) < set(model.state_dict())


def test_merged_model_computes_the_adapted_model_and_is_plain():
    model = _gpt2()
    plain_keys = set(model.state_dict())
    apply_lora(model, targets=["*attn.*", "*.mlp.*"], rank=2, alpha=4.0, dropout=0.3)
    _perturb(model)
    adapted = model(IDS)  # eval: adapter dropout off
    assert not torch.allclose(adapted, _gpt2()(IDS), atol=1e-4)
    merge_lora(model)
    assert not lora_layers(model)
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert set(model.state_dict()) == plain_keys
    torch.testing.assert_close(model(IDS), adapted, atol=1e-5, rtol=0)


def test_fused_adapter_is_per_projection_adapters_with_a_shared_and_b_split():
    torch.manual_seed(1)
    fused = LoRALinear(nn.Linear(8, 24), rank=3, alpha=6.0)
    nn.init.normal_(fused.lora_B)
    x = torch.randn(2, 5, 8)
    parts = []
    for w, b, lora_b in zip(fused.weight.chunk(3), fused.bias.chunk(3), fused.lora_B.chunk(3)):
        linear = nn.Linear(8, 8)
        linear.weight.data, linear.bias.data = w.detach(), b.detach()
        single = LoRALinear(linear, rank=3, alpha=6.0)
        single.lora_A.data, single.lora_B.data = fused.lora_A.detach(), lora_b.detach()
        parts.append(single(x))
    torch.testing.assert_close(fused(x), torch.cat(parts, dim=-1), atol=1e-6, rtol=0)


def test_bad_targets_and_settings_name_the_argument():
    with pytest.raises(ValueError, match=r"lora.targets: '\*.query' matches no linear layer"):
        apply_lora(_gpt2(), targets=["*.query"], rank=4, alpha=8.0)
    with pytest.raises(ValueError, match="lm_head shares its weight"):  # tied to the token embedding
        apply_lora(_gpt2(), targets=["lm_head"], rank=4, alpha=8.0)
    model = _gpt2()
    apply_lora(model, targets=["*attn.*"], rank=4, alpha=8.0)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model, targets=["*attn.*"], rank=4, alpha=8.0)
    with pytest.raises(ValueError, match="lora: rank must be a positive integer"):
        LoRA(rank=0)
    with pytest.raises(ValueError, match="lora: dropout must be in"):
        LoRA(dropout=1.5)


def test_base_layers_load_weights_without_adapters():
    model, pretrained = _gpt2(), GPT2(vocab_size=50, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=2)
    apply_lora(model, targets=["*attn.*"], rank=2, alpha=2.0)
    with base_layers(model):
        assert set(model.state_dict()) == set(pretrained.state_dict())
        model.load_state_dict(pretrained.state_dict(), strict=True)
    assert len(lora_layers(model)) == 4  # the adapters are back, on the loaded weights
    torch.testing.assert_close(model.eval()(IDS), pretrained.eval()(IDS), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("family", "targets", "count"),
    [
        ("llama", ["*.self_attn.q_proj", "*.self_attn.v_proj", "*.mlp.*"], 2 * 5),
        ("bert", ["*.self_attn.qkv_proj", "*.self_attn.out_proj"], 2 * 2),
        ("seq2seq", ["*.cross_attn.*", "encoder.*.self_attn.*"], 3 + 2),
    ],
)
def test_every_family_adapts_by_name_and_merges_exactly(family, targets, count):
    torch.manual_seed(0)
    if family == "llama":
        model = Llama(vocab_size=50, max_seq_len=16, embed_dim=16, num_heads=4, num_kv_heads=2, num_layers=2)
        run = lambda m: m(IDS)  # noqa: E731
    elif family == "bert":
        model = Bert(vocab_size=50, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=2, hidden_dim=32)
        run = lambda m: m.hidden_states(IDS, attention_mask=None)  # noqa: E731
    else:
        model = Transformer(
            vocab_size=50, max_seq_len=16, embed_dim=16, num_heads=2, num_encoder_layers=1,
            num_decoder_layers=1, hidden_dim=32,
        )
        run = lambda m: m(IDS, IDS[:, :5], attention_mask=None)  # noqa: E731
    model.eval()
    assert len(apply_lora(model, targets=targets, rank=2, alpha=4.0)) == count
    _perturb(model)
    adapted = run(model)
    torch.testing.assert_close(run(merge_lora(model)), adapted, atol=1e-5, rtol=0)


def _plain(layer: LoRALinear, x: torch.Tensor) -> torch.Tensor:
    """The adapter as two linear layers, differentiated by autograd."""
    update = nn.functional.linear(nn.functional.linear(layer.dropout(x), layer.lora_A), layer.lora_B)
    return nn.functional.linear(x, layer.weight, layer.bias) + update * layer.scale


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("frozen", [True, False])
def test_adapter_product_has_autograds_values_and_gradients(bias, frozen):
    """The hand-written backward (`_LoRAProduct`) gives the gradients autograd gives the plain formula,
    for exactly the inputs that need them: frozen base weights get none, nor does an input that needs
    none (the first layer above frozen embeddings)."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 20, bias=bias), rank=3, alpha=6.0)
    nn.init.normal_(layer.lora_B)
    layer.weight.requires_grad_(not frozen)
    if bias:
        layer.bias.requires_grad_(not frozen)
    for needs_input in (True, False):
        x = torch.randn(2, 5, 12, requires_grad=needs_input)
        weights = [p for p in layer.parameters() if p.requires_grad]
        inputs = ([x] if needs_input else []) + weights
        target = torch.randn(2, 5, 20)
        ours = layer(x)
        theirs = _plain(layer, x)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        got = torch.autograd.grad((ours * target).sum(), inputs)
        want = torch.autograd.grad((theirs * target).sum(), inputs)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
        assert len(weights) == (2 if frozen else 4 if bias else 3)


def test_adapter_product_passes_gradcheck():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 5).double(), rank=2, alpha=4.0)
    nn.init.normal_(layer.lora_B)
    layer.requires_grad_(True)
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *params: layer(x), (x, *layer.parameters()))


def test_adapter_under_autocast_and_with_dropout_trains_through_autograd():
    """The two cases the hand-written product leaves to autograd: bf16 autocast (each product cast)
    and adapter dropout in training (the adapter reads another input than the base)."""
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 6), rank=2, alpha=4.0, dropout=0.5).train()
    nn.init.normal_(layer.lora_B)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and layer.lora_A.grad.abs().sum() > 0
    layer.zero_grad()
    torch.manual_seed(1)
    y = layer(x)
    assert y.grad_fn.name() != "_LoRAProductBackward"
    torch.manual_seed(1)
    torch.testing.assert_close(y, _plain(layer, x))
