"""Text data: tokenizers, the keyed token cache, next-token blocks, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.data import TextDataModule, TokenBlocks
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
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 10)
    with pytest.raises(ValueError, match="latin1.txt: not UTF-8"):
        _ = _dm([latin1], tmp_path).vocab_size
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty corpus"):
        _ = _dm([empty], tmp_path).vocab_size
    short = tmp_path / "short.txt"
    short.write_text("abc")
    dm = _dm([short], tmp_path)
    dm.prepare_data()
    with pytest.raises(ValueError, match="cannot fill one block"):
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

    from zoo.data import text as text_module

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
        text_module._wait_for(tmp_path / "never.json", timeout_s=0.2)
