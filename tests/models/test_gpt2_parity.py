"""GPT-2 parity with transformers.GPT2LMHeadModel: same weights, same logits."""

from __future__ import annotations

import pytest
import torch

from zoo.models.gpt2 import GPT2

transformers = pytest.importorskip("transformers")


def _hf_model(tmp_path, **overrides):
    config = transformers.GPT2Config(
        vocab_size=97, n_positions=32, n_embd=48, n_head=4, n_layer=3, **overrides
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    return hf


def _padded_batch():
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    mask[2, 4:] = 0
    return ids, mask


def test_from_hf_matches_transformers_on_padded_batch(tmp_path):
    hf = _hf_model(tmp_path)
    ours = GPT2.from_hf(tmp_path / "hf").eval()
    ids, mask = _padded_batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
    # without a mask, every position
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_to_hf_round_trips_into_transformers(tmp_path):
    torch.manual_seed(2)
    ours = GPT2(vocab_size=61, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=2).eval()
    out = ours.to_hf(tmp_path / "export")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    # GPT-2's <|endoftext|> id (50256) is not in a 61-token vocabulary: no bos/eos is claimed
    assert hf.config.bos_token_id is None and hf.config.eos_token_id is None
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    again = GPT2.from_hf(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids), ours(ids), atol=0, rtol=0)


def test_pytorch_model_bin_is_loaded_weights_only(tmp_path):
    import shutil

    hf = _hf_model(tmp_path)
    (tmp_path / "bin").mkdir()
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "bin" / "config.json")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    ours = GPT2.from_hf(tmp_path / "bin").eval()
    ids, _ = _padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_checkpoint_of_another_family_is_a_clear_error(tmp_path):
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="config.json: model_type='bert', not a GPT-2 checkpoint"):
        GPT2.from_hf(tmp_path / "bert")


def test_offline_hub_name_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not a local directory"):
        GPT2.from_hf("surely-not-a-local-dir/gpt2-nope")


def test_untied_output_head_round_trips_both_ways(tmp_path):
    """``tie_weights=False`` (the shakespeare-char recipe's setting) keeps its own ``lm_head``."""
    hf = _hf_model(tmp_path, tie_word_embeddings=False)
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    with torch.no_grad():  # make the head visibly different from the embedding
        hf.lm_head.weight.normal_(0.0, 0.05)
    hf.save_pretrained(tmp_path / "hf")
    ours = GPT2.from_hf(tmp_path / "hf").eval()
    assert ours.lm_head.weight is not ours.tokens.weight
    ids, mask = _padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    out = ours.to_hf(tmp_path / "export")
    back = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert not back.config.tie_word_embeddings
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, ours(ids), atol=1e-5, rtol=1e-5)
