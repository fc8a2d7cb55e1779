"""The one cache scheme: keys carry the version, and only local rank 0 trains a tokenizer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from zoo.data import BertPretrainingDataModule, ParallelTextDataModule, TextDataModule
from zoo.data import cache as cache_module
from zoo.data.cache import CACHE_VERSION, cache_key, cached_tokenizer
from zoo.data.corpus import digest
from zoo.data.tokenizers import train_char_tokenizer


def test_cache_key_changes_with_every_part_and_the_version(monkeypatch):
    key = cache_key("files", "tokenizer")
    assert key == digest("files", "tokenizer", str(CACHE_VERSION))
    assert len({key, cache_key("files", "other"), cache_key("other", "tokenizer")}) == 3
    monkeypatch.setattr(cache_module, "CACHE_VERSION", CACHE_VERSION + 1)
    assert cache_key("files", "tokenizer") != key


def test_rank_zero_trains_and_writes_other_ranks_wait_and_read(tmp_path, monkeypatch):
    path = tmp_path / "tokenizers" / "char-key" / "tokenizer.json"
    trained = train_char_tokenizer(["hello"])

    def must_not_train() -> Tokenizer:
        raise AssertionError("a non-zero local rank trained a tokenizer")

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(cache_module.time, "sleep", lambda s: None)  # poll without waiting
    writer = threading.Timer(0.2, lambda: cache_module.atomic_write(path, trained.to_str()))
    writer.start()
    assert cached_tokenizer(path, must_not_train).to_str() == trained.to_str()
    writer.join()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert cached_tokenizer(path, must_not_train).to_str() == trained.to_str()  # cached: read, not trained
    with pytest.raises(TimeoutError, match="local rank 0"):
        cache_module.wait_for(tmp_path / "never.json", timeout_s=0.05)


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _text(tmp_path: Path) -> TextDataModule:
    corpus = _write(tmp_path / "a.txt", "hello world, said the zoo\n" * 20)
    return TextDataModule([corpus], tokenizer="bpe", bpe_vocab_size=280, cache_dir=str(tmp_path / "cache"))


def _parallel(tmp_path: Path) -> ParallelTextDataModule:
    de = _write(tmp_path / "a.de", "ein kleiner hund\nzwei katzen\n" * 10)
    en = _write(tmp_path / "a.en", "a small dog\ntwo cats\n" * 10)
    return ParallelTextDataModule([de, en], [de, en], bpe_vocab_size=300, cache_dir=str(tmp_path / "cache"))


def _pretraining(tmp_path: Path) -> BertPretrainingDataModule:
    documents = "\n\n".join(f"The dog {i} runs.\nThe cat {i} sleeps." for i in range(6))
    corpus = _write(tmp_path / "docs.txt", documents + "\n")
    return BertPretrainingDataModule([corpus], wordpiece_vocab_size=120, cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("make", [_text, _parallel, _pretraining], ids=["text", "parallel", "pretraining"])
def test_every_data_module_trains_its_tokenizer_on_local_rank_zero_only(make, tmp_path, monkeypatch):
    """The CLI asks for ``vocab_size`` when it instantiates the classes, in every process at once: a
    non-zero local rank waits for the file local rank 0 writes and never trains a copy of its own."""
    waited: list[Path] = []

    class Waiting(Exception):
        pass

    def wait_for(path: Path, timeout_s: float = 0.0) -> Path:
        waited.append(path)
        raise Waiting

    monkeypatch.setattr(cache_module, "wait_for", wait_for)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(Waiting):
        _ = make(tmp_path).vocab_size
    assert not (tmp_path / "cache" / "tokenizers").exists()  # nothing trained, nothing written
    monkeypatch.setenv("LOCAL_RANK", "0")
    built = make(tmp_path).tokenizer
    assert waited[0].is_file()  # rank 0 wrote exactly the file the other rank waits for
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert make(tmp_path).tokenizer.to_str() == built.to_str()  # read: the same tokenizer on every rank
