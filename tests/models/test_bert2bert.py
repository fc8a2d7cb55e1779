"""BERT2BERT: an encoder-decoder warm-started from the real all-MiniLM-L6-v2 BERT on both sides."""

from __future__ import annotations

import pytest
import torch

from zoo.models.bert import Bert, BertEncoderDecoder
from zoo.models.pretrained import load_pretrained
from zoo.models.protocols import EncoderDecoder

MINILM = dict(max_seq_len=512, embed_dim=384, num_heads=12, num_layers=6, hidden_dim=1536)
CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def warm(minilm_dir):
    """(BERT2BERT warm-started through `pretrained:` loading, the plain BERT), both in eval mode."""
    torch.manual_seed(0)
    bert = Bert.from_hf(minilm_dir, with_pretraining_heads=False).eval()
    model = BertEncoderDecoder(vocab_size=bert.vocab_size, **MINILM)
    load_pretrained(model, minilm_dir)  # what a task's `pretrained:` does
    return model.eval(), bert


def _source() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(1000, 20000, (2, 12))
    ids[:, 0], ids[0, -1] = CLS, SEP
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    ids[1, 7], ids[1, 8:] = SEP, 0
    return ids, mask


def test_encoder_gives_berts_hidden_states(warm, minilm_dir) -> None:
    model, bert = warm
    ids, mask = _source()
    with torch.no_grad():
        ours = model.encode(ids, attention_mask=mask)
        theirs = bert.hidden_states(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()  # and the reference implementation's
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours[real], expected[real], atol=1e-5, rtol=0)


def test_decoder_layers_are_berts_and_cross_attention_is_new(warm) -> None:
    model, bert = warm
    for ours, theirs in zip(model.decoder.layers, bert.layers, strict=True):
        for name, value in theirs.state_dict().items():  # self-attention, MLP, both norms
            torch.testing.assert_close(ours.state_dict()[name], value, atol=0, rtol=0)
        assert ours.self_attn.causal and not theirs.self_attn.causal
        cross = ours.cross_attn
        for weight in (cross.q_proj.weight, cross.kv_proj.weight, cross.out_proj.weight):
            assert 0.015 < weight.std().item() < 0.025  # BERT's N(0, 0.02) initialisation
            assert not any(weight.shape == w.shape and torch.equal(weight, w) for w in theirs.parameters())
        assert not cross.q_proj.bias.any() and torch.equal(ours.cross_attn_norm.weight, torch.ones(384))
    for part in ("positions", "segments", "norm"):
        torch.testing.assert_close(
            getattr(model.decoder_embeddings, part).state_dict(), getattr(bert.embeddings, part).state_dict()
        )
    shared = bert.embeddings.tokens.weight
    assert model.decoder_embeddings.tokens is model.encoder.embeddings.tokens
    assert model.lm_head.weight is model.encoder.embeddings.tokens.weight
    torch.testing.assert_close(model.lm_head.weight, shared, atol=0, rtol=0)


def test_cross_attention_can_start_as_a_copy_of_self_attention(minilm_dir) -> None:
    torch.manual_seed(0)
    model = BertEncoderDecoder(vocab_size=30522, **MINILM, cross_attention_init="self_attention")
    load_pretrained(model, minilm_dir)  # the option travels through `pretrained:` loading
    bert = Bert.from_hf(minilm_dir, with_pretraining_heads=False)
    C = 384
    for ours, theirs in zip(model.decoder.layers, bert.layers, strict=True):
        qkv, cross = theirs.self_attn.qkv_proj, ours.cross_attn
        torch.testing.assert_close(cross.q_proj.weight, qkv.weight[:C], atol=0, rtol=0)
        torch.testing.assert_close(cross.q_proj.bias, qkv.bias[:C], atol=0, rtol=0)
        torch.testing.assert_close(cross.kv_proj.weight, qkv.weight[C:], atol=0, rtol=0)
        torch.testing.assert_close(cross.kv_proj.bias, qkv.bias[C:], atol=0, rtol=0)
        torch.testing.assert_close(cross.out_proj.state_dict(), theirs.self_attn.out_proj.state_dict())
        torch.testing.assert_close(ours.cross_attn_norm.state_dict(), theirs.self_attn_norm.state_dict())
        assert cross.q_proj.weight.data_ptr() != qkv.weight.data_ptr()  # copies: they train apart
    # cross-attention over a memory equal to the decoder's own input is then its (unmasked) self-attention
    layer, x = model.decoder.layers[0].eval(), torch.randn(1, 5, C)
    with torch.no_grad():
        crossed, own = layer.cross_attn(x, memory=x), bert.layers[0].self_attn.eval()(x)
    torch.testing.assert_close(crossed, own, atol=1e-5, rtol=0)
    plain = BertEncoderDecoder(vocab_size=30522, **MINILM)
    load_pretrained(plain, minilm_dir)  # the default stays the paper's fresh cross-attention
    assert not torch.equal(plain.decoder.layers[0].cross_attn.q_proj.weight, layer.cross_attn.q_proj.weight)
    with pytest.raises(
        ValueError, match="cross_attention_init must be one of random, self_attention, got 'copy'"
    ):
        BertEncoderDecoder(cross_attention_init="copy")


def test_decoder_is_causal_and_cached_decoding_matches(warm) -> None:
    model, _ = warm
    ids, mask = _source()
    target = torch.tensor([[CLS, 2023, 2003, 1037, 3231, 1012], [CLS, 7592, 2088, 2003, 2307, 1012]])
    changed = target.clone()
    changed[:, 4] = 4248
    with torch.no_grad():
        logits = model(ids, target, attention_mask=mask)
        after = model(ids, changed, attention_mask=mask)
        memory = model.encode(ids, attention_mask=mask)
        cache = model.init_cache(2, target_len=6, source_len=12)
        stepwise = torch.cat(
            [model.decode(target[:, t : t + 1], memory, memory_mask=mask, cache=cache) for t in range(6)], 1
        )
    torch.testing.assert_close(after[:, :4], logits[:, :4], atol=0, rtol=0)  # earlier positions unchanged
    assert not torch.allclose(after[:, 4:], logits[:, 4:])  # the changed token is read from there on
    torch.testing.assert_close(stepwise, logits, atol=1e-4, rtol=1e-4)
    assert isinstance(model, EncoderDecoder)


def test_from_hf_and_architecture_mismatch(minilm_dir) -> None:
    torch.manual_seed(0)
    model = BertEncoderDecoder.from_hf(minilm_dir)
    assert model.spec["init_args"]["embed_dim"] == 384 and len(model.decoder.layers) == 6
    wrong = BertEncoderDecoder(vocab_size=model.vocab_size, **{**MINILM, "num_layers": 4})
    with pytest.raises(ValueError, match=r"num_layers=4 \(pretrained: 6\)"):
        load_pretrained(wrong, minilm_dir)


def test_from_scratch_is_bert_initialised() -> None:
    torch.manual_seed(0)
    model = BertEncoderDecoder(vocab_size=120, max_seq_len=16, embed_dim=32, num_heads=4, num_layers=2)
    assert model.num_parameters() < sum(p.numel() for p in model.state_dict().values())  # tied table
    assert not model.encoder.embeddings.tokens.weight[0].any()  # [PAD]
    with pytest.raises(ValueError, match="num_heads"):
        BertEncoderDecoder(embed_dim=30, num_heads=4)
