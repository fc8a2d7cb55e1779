"""Text data: tokenizers, the keyed token cache, next-token blocks, bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_file
from tokenizers import Tokenizer

from zoo.data import TextDataModule, TokenBlocks
from zoo.data.text import SlidingWindows
from zoo.data.tokenizers import load_tokenizer, train_bpe_tokenizer, train_char_tokenizer


def _dm(files, tmp_path, **kw) -> TextDataModule:
    kw.setdefault("max_seq_len", 16)
    kw.setdefault("batch_size", 4)
    return TextDataModule([str(f) for f in files], cache_dir=str(tmp_path / "cache"), **kw)


def test_char_tokenizer_round_trips_every_character():
    text = "To be, or not to be:\n\tthat is the question. Ünïcødé ✓\n"
    tok = train_char_tokenizer([text])
    ids = tok.encode(text).ids
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.encode("Z").tokens == ["<unk>"]  # never seen


def test_bpe_tokenizer_and_gpt2_vocab_merges_pair_agree(tmp_path, stdlib_text_file):
    text = stdlib_text_file.read_text()
    tok = train_bpe_tokenizer([text[i : i + 4096] for i in range(0, len(text), 4096)], vocab_size=500)
    assert tok.get_vocab_size() == 500
    sample = "def parse_args(self, args=None):\n    return namespace  # ünï\n"
    assert tok.decode(tok.encode(sample).ids) == sample
    tok.model.save(str(tmp_path))  # writes GPT-2 style vocab.json + merges.txt
    pair = load_tokenizer(tmp_path)
    assert pair.encode(sample).ids == tok.encode(sample).ids


BPE_TEXT = "".join(f"{i}: a naïve café — the quick brown fox ✓\n" for i in range(80))
EOT = "<|endoftext|>"


def _ready(dm: TextDataModule) -> TextDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _cached_tokens(cache: Path) -> np.ndarray:
    (path,) = (cache / "tokens").glob("*.uint16")
    return np.fromfile(path, dtype=np.uint16)


def _assert_blocks_come_from_the_cache(dm: TextDataModule, tokens: np.ndarray) -> None:
    stream = np.concatenate([dm.train_set.tokens, dm.val_set.tokens])
    assert stream.tolist() == tokens.tolist()
    joined = [i for b in range(len(dm.train_set)) for i in dm.train_set[b]["input_ids"].tolist()]
    assert len(joined) > len(dm.train_set.tokens) - 17
    # a block may end inside a multi-byte character: that last piece decodes to U+FFFD
    assert BPE_TEXT.startswith(dm.decode(joined).rstrip("\ufffd"))


def test_bpe_is_trained_on_the_corpus_and_saved_next_to_the_cache(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(BPE_TEXT, encoding="utf-8")
    dm = _ready(_dm([corpus], tmp_path, tokenizer="bpe", bpe_vocab_size=300))
    assert dm.vocab_size == 300 and dm.decode([dm.eot_id]) == EOT
    (saved,) = (tmp_path / "cache" / "tokenizers").rglob("tokenizer.json")
    assert saved.parent.name.startswith("bpe-300-")
    assert Tokenizer.from_file(str(saved)).to_str() == dm.tokenizer.to_str()
    tokens = _cached_tokens(tmp_path / "cache")
    assert len(tokens) < len(BPE_TEXT.encode()) / 3  # merges learned from this corpus, not raw bytes
    assert dm.decode(tokens.tolist()) == BPE_TEXT + EOT
    _assert_blocks_come_from_the_cache(dm, tokens)


@pytest.mark.parametrize(
    "saved_as", ["tokenizer.json", "directory with tokenizer.json", "vocab.json + merges.txt"]
)
def test_a_saved_tokenizer_is_loaded_from_its_path(tmp_path, saved_as):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(BPE_TEXT, encoding="utf-8")
    trained = _ready(_dm([corpus], tmp_path / "trained", tokenizer="bpe", bpe_vocab_size=300))
    (saved,) = (tmp_path / "trained" / "cache" / "tokenizers").rglob("tokenizer.json")
    spec = {"tokenizer.json": saved, "directory with tokenizer.json": saved.parent}.get(saved_as)
    if spec is None:  # GPT-2's own format
        spec = tmp_path / "gpt2"
        spec.mkdir()
        trained.tokenizer.model.save(str(spec))
        assert sorted(p.name for p in spec.iterdir()) == ["merges.txt", "vocab.json"]
    dm = _ready(_dm([corpus], tmp_path, tokenizer=str(spec)))
    assert dm.vocab_size == 300 and dm.eot_id == trained.eot_id
    tokens = _cached_tokens(tmp_path / "cache")
    assert tokens.tolist() == _cached_tokens(tmp_path / "trained" / "cache").tolist()
    assert dm.decode(tokens.tolist()) == BPE_TEXT + EOT
    _assert_blocks_come_from_the_cache(dm, tokens)
    # a given tokenizer is neither retrained nor copied into the cache
    assert not (tmp_path / "cache" / "tokenizers").exists()


def test_blocks_are_next_token_shifted_and_cover_the_stream():
    tokens = np.arange(50, dtype=np.uint16)
    blocks = TokenBlocks(tokens, block_size=8)
    assert len(blocks) == 6  # (50 - 1) // 8
    item = blocks[2]
    assert item["input_ids"].tolist() == list(range(16, 24))
    assert item["labels"].tolist() == list(range(17, 25))
    overlapping = TokenBlocks(tokens, block_size=8, stride=1)
    assert len(overlapping) == 42 and overlapping[41]["labels"][-1].item() == 49
    with pytest.raises(IndexError):
        blocks[6]


def test_cache_is_keyed_on_content_and_reused(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text("abcdefgh\n" * 200)
    dm = _dm([corpus], tmp_path)
    dm.prepare_data()
    token_files = sorted((tmp_path / "cache" / "tokens").glob("*.uint16"))
    assert len(token_files) == 1
    stamp = token_files[0].stat().st_mtime_ns
    _dm([corpus], tmp_path).prepare_data()  # same content: reused, not rewritten
    assert token_files[0].stat().st_mtime_ns == stamp
    corpus.write_text("abcdefgh\n" * 199 + "abcdefgX\n")  # same size, same name, new content
    dm2 = _dm([corpus], tmp_path)
    dm2.prepare_data()
    dm2.setup("fit")
    assert len(sorted((tmp_path / "cache" / "tokens").glob("*.uint16"))) == 2
    assert dm2.vocab_size == dm.vocab_size + 1  # the new character is in the rebuilt vocabulary


def test_setup_splits_train_and_validation_without_overlap(tmp_path, stdlib_text_file):
    dm = _dm([stdlib_text_file], tmp_path, val_fraction=0.1)
    dm.prepare_data()
    dm.setup("fit")
    n_train, n_val = len(dm.train_set.tokens), len(dm.val_set.tokens)
    assert n_val == pytest.approx((n_train + n_val) * 0.1, abs=2)
    assert np.shares_memory(dm.train_set.tokens, dm.val_set.tokens) is False or (
        dm.train_set.tokens.base is dm.val_set.tokens.base
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16) and batch["input_ids"].dtype == torch.long
    assert dm.decode(dm.val_set[0]["input_ids"].tolist()) in stdlib_text_file.read_text()


def test_glob_and_stdlib_specs(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(3):
        (tmp_path / "d" / f"{i}.txt").write_text(f"file {i}\n" * 50)
    dm = _dm([tmp_path / "d" / "*.txt"], tmp_path)
    assert dm.vocab_size == len(set("file 012\n")) + 1
    std = TextDataModule(["stdlib:json/*.py"], cache_dir=str(tmp_path / "cache"))
    assert std.vocab_size > 60


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        _ = _dm([tmp_path / "missing-*.txt"], tmp_path).vocab_size
    latin1 = tmp_path / "latin1.txt"  # 3 x 7 bytes of UTF-8 (18 characters), then "caf" and a Latin-1 é
    latin1.write_bytes("naïve\n".encode() * 3 + "caf\xe9 au lait\n".encode("latin-1") * 10)
    with pytest.raises(ValueError, match=re.escape(f"{latin1}: not UTF-8 text (byte 24: ")):
        _ = _dm([latin1], tmp_path).vocab_size
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(
        ValueError, match=re.escape(f"{empty}: cannot build a character vocabulary from an empty")
    ):
        _ = _dm([empty], tmp_path).vocab_size
    short = tmp_path / "short.txt"
    short.write_text("abc")
    dm = _dm([short], tmp_path)
    dm.prepare_data()
    with pytest.raises(
        ValueError, match=re.escape(f"{short}: the training split has 2 tokens, fewer than one")
    ):
        dm.setup("fit")


def test_checkpointed_tokenizer_must_match(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("abc\n" * 100)
    b.write_text("xyz!\n" * 100)
    state = _dm([a], tmp_path).state_dict()
    _dm([a], tmp_path).load_state_dict(state)  # same tokenizer: fine
    with pytest.raises(ValueError, match="different tokenizer"):
        _dm([b], tmp_path).load_state_dict(state)


def test_offline_download_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError, match="Offline\\? Download it elsewhere"):
        _ = TextDataModule(["tinyshakespeare"], cache_dir=str(tmp_path)).vocab_size


def test_non_zero_local_rank_waits_for_the_tokenizer_of_rank_zero(tmp_path, monkeypatch):
    import threading

    from zoo.data import cache as cache_module

    corpus = tmp_path / "a.txt"
    corpus.write_text("hello world\n" * 20)
    built = _dm([corpus], tmp_path).tokenizer  # what local rank 0 writes
    written = next((tmp_path / "cache" / "tokenizers").rglob("tokenizer.json"))
    payload = written.read_text()
    written.unlink()
    monkeypatch.setenv("LOCAL_RANK", "1")
    threading.Timer(0.5, lambda: written.write_text(payload)).start()
    waited = _dm([corpus], tmp_path).tokenizer  # does not train a second copy; waits for the file
    assert waited.to_str() == built.to_str()
    with pytest.raises(TimeoutError, match="local rank 0"):
        cache_module.wait_for(tmp_path / "never.json", timeout_s=0.2)


# -- corpus sanity: binary data that happens to decode as UTF-8 -----------------------------------------


def test_real_text_is_never_taken_for_binary(tmp_path):
    from zoo.data.corpus import read_text, resolve_files

    stdlib = resolve_files(["stdlib:*.py"], cache_dir=tmp_path)  # recipes/gpt2/stdlib-char.yaml's corpus
    shared = [shared_file("tinyshakespeare/input.txt"), shared_file("wikitext-2/wiki.valid.tokens")]
    assert len(stdlib) > 100
    for path in stdlib + shared:
        read_text(path)  # raises on binary
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"one\r\ntwo\rthree\n")
    assert read_text(crlf) == "one\ntwo\nthree\n"  # universal newlines, as before


def test_a_mostly_control_byte_file_is_refused_naming_file_line_and_offset(tmp_path):
    binary = tmp_path / "weights.txt"  # a binary file renamed .txt that happens to decode as UTF-8
    binary.write_bytes(b"header line\nsecond line\n" + bytes([0, 0, 0, 0, 0, 0, 0, 0, 7, 1, 2, 3]) * 50)
    with pytest.raises(ValueError) as err:
        _ = _dm([binary], tmp_path).vocab_size
    assert str(err.value).startswith(f"{binary}:3: binary data, not text: 600 of its 624 bytes (96%) ")
    assert "the first stretch starts at byte 24" in str(err.value)
    utf16 = tmp_path / "notes.txt"  # UTF-16 without a byte-order mark: ASCII with a NUL after each byte
    utf16.write_bytes("plain words\n".encode("utf-16-le") * 20)
    with pytest.raises(ValueError, match=f"{re.escape(str(utf16))}:1: binary data.*convert UTF-16"):
        _ = _dm([utf16], tmp_path).vocab_size


@pytest.mark.parametrize("control_bytes, refused", [(10, False), (11, True)])
def test_the_control_byte_limit_is_ten_percent(tmp_path, control_bytes, refused):
    from zoo.data.corpus import read_text

    path = tmp_path / "edge.txt"
    whitespace = b"\t\n\x0b\x0c\r" * 10  # control characters of text: never counted
    path.write_bytes(b"\x1b" * control_bytes + whitespace + b"a" * (50 - control_bytes))
    if refused:
        with pytest.raises(ValueError, match=r"11 of its 100 bytes \(11%\)"):
            read_text(path)
    else:
        assert read_text(path).count("\x1b") == 10


# -- text the tokenizer cannot represent ---------------------------------------------------------------


def test_unknown_characters_are_reported_once_and_never_targets(tmp_path, capsys):
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text("abc abc\n" * 40)
    # '€' is not in the char vocabulary; it sits in the second 4096-character encoding chunk
    val.write_text("abc abc\n" * 600 + "ab€ c\n" + "abc\n" * 10)
    dm = _dm([train], tmp_path, val_files=[str(val)], max_seq_len=8)
    dm.prepare_data()
    dm.setup("fit")
    assert capsys.readouterr().err.splitlines() == [
        f"zoo: {val}: the tokenizer cannot represent 1 character(s) ('€' x1), first at {val}:601; they are "
        "read as <unk> and never scored or trained on (their labels are -100)"
    ]
    unk = dm.tokenizer.token_to_id("<unk>")
    inputs = torch.cat([dm.val_set[i]["input_ids"] for i in range(len(dm.val_set))])
    labels = torch.cat([dm.val_set[i]["labels"] for i in range(len(dm.val_set))])
    assert (inputs == unk).sum() == 1  # kept in the input, so the context keeps its length
    assert (labels == unk).sum() == 0 and (labels == -100).sum() == 1  # never a target


# -- constructor checks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"eval_batch_size": -4}, "eval_batch_size must be a positive integer, got -4"),
        ({"max_seq_len": 0}, "max_seq_len must be a positive integer, got 0"),
        ({"train_stride": 0}, "train_stride must be a positive integer, got 0"),
        ({"test_stride": 0}, "test_stride must be a positive integer, got 0"),
        ({"test_stride": 17}, "test_stride=17 is larger than max_seq_len=16"),
        ({"num_workers": -1}, "num_workers must be >= 0, got -1"),
        ({"val_fraction": 1.0}, "val_fraction must be in (0, 1), got 1.0"),
    ],
)
def test_bad_sizes_are_refused_at_construction_naming_the_argument(tmp_path, bad, message):
    with pytest.raises(ValueError, match=re.escape(f"TextDataModule: {message}")):
        _dm([tmp_path / "never-read.txt"], tmp_path, **bad)


# -- packed documents ----------------------------------------------------------------------------------

STREAM = np.array([5, 6, 9, 1, 4, 9, 7, 3, 9, 2], dtype=np.uint16)  # documents end with 9 (the EOT here)


def test_blocks_without_packing_are_what_they_always_were():
    """The blocks of a stream with document ends, as zoo cut them before packing existed."""
    for blocks in (TokenBlocks(STREAM, block_size=4), TokenBlocks(STREAM, block_size=4, eot_id=None)):
        items = [blocks[i] for i in range(len(blocks))]
        assert [sorted(item) for item in items] == [["input_ids", "labels"]] * 2
        assert [item["input_ids"].tolist() for item in items] == [[5, 6, 9, 1], [4, 9, 7, 3]]
        assert [item["labels"].tolist() for item in items] == [[6, 9, 1, 4], [9, 7, 3, 9]]


def test_packed_blocks_mark_documents_and_never_target_across_them():
    blocks = TokenBlocks(STREAM, block_size=4, eot_id=9)
    first, second = blocks[0], blocks[1]
    assert first["input_ids"].tolist() == [5, 6, 9, 1]  # the same blocks as without packing
    assert first["document_ids"].tolist() == [0, 0, 0, 1]  # the end token belongs to its document
    assert first["labels"].tolist() == [6, 9, -100, 4]  # 1 would be predicted from the other document
    assert second["document_ids"].tolist() == [0, 0, 1, 1] and second["labels"].tolist() == [9, -100, 3, 9]
    windows = SlidingWindows(STREAM, block_size=4, stride=2, eot_id=9)  # zoo test scores the same way
    assert windows[1]["input_ids"].tolist() == [9, 1, 4, 9]
    assert windows[1]["document_ids"].tolist() == [0, 1, 1, 1]
    assert windows[1]["labels"].tolist() == [-100, -100, 9, -100]  # context, crossing, scored, crossing


def test_pack_documents_adds_document_ids_to_the_same_batches(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(BPE_TEXT[:1500], encoding="utf-8")
    b.write_text(BPE_TEXT[1500:], encoding="utf-8")
    plain = _ready(_dm([a, b], tmp_path, tokenizer="bpe", bpe_vocab_size=300, val_fraction=0.3))
    packed = _ready(
        _dm([a, b], tmp_path, tokenizer="bpe", bpe_vocab_size=300, val_fraction=0.3, pack_documents=True)
    )
    eot = plain.eot_id
    batches = zip(plain.train_dataloader(), packed.train_dataloader(), strict=True)
    boundaries = 0
    for before, after in batches:
        assert sorted(before) == ["input_ids", "labels"]
        assert sorted(after) == ["document_ids", "input_ids", "labels"]
        assert torch.equal(after["input_ids"], before["input_ids"])
        ends = before["input_ids"] == eot
        boundaries += int(ends.sum())
        assert torch.equal(after["labels"], before["labels"].masked_fill(ends, -100))
        assert torch.equal(after["document_ids"], ends.cumsum(1) - ends.long())
    assert boundaries == 1  # the end of a.txt is in the training split; b.txt's is in validation
    val = packed.val_set[len(packed.val_set) - 1]
    assert val["document_ids"].shape == val["input_ids"].shape


def test_pack_documents_needs_a_tokenizer_that_ends_documents(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text("abcdefgh\n" * 50)
    dm = _dm([corpus], tmp_path, pack_documents=True)
    dm.prepare_data()
    with pytest.raises(ValueError, match=r"pack_documents=True needs a tokenizer with <\|endoftext\|>"):
        dm.setup("fit")
