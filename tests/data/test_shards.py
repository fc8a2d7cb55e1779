"""Corpora larger than memory: streaming sharded preparation equals one-process tokenization, shards hold
whole documents, training reads them lazily with a per-epoch document shuffle and disjoint DDP shares, and
a corpus behind an fsspec URL is fetched shard by shard into a bounded cache."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file

from zoo.data import TextDataModule
from zoo.data.corpus import read_text, read_text_blocks
from zoo.data.resumable import EpochSampler, TrainPosition
from zoo.data.shards import INDEX, DocumentStream, ShardWriter, open_shards
from zoo.data.tokenizers import stream_chunks, text_chunks

EOT = "<|endoftext|>"


def _dm(files, tmp_path, cache="cache", **kw) -> TextDataModule:
    kw.setdefault("max_seq_len", 16)
    kw.setdefault("batch_size", 4)
    return TextDataModule([str(f) for f in files], cache_dir=str(tmp_path / cache), **kw)


def _docs_corpus(tmp_path: Path, n: int = 60) -> Path:
    rng = random.Random(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "naïve", "café", "✓"]
    text = "".join(
        "\n".join(" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(rng.randint(1, 8)))
        + f"\n{EOT}\n"
        for _ in range(n)
    )
    path = tmp_path / "docs.txt"
    path.write_text(text, encoding="utf-8")
    return path


# -- reading in pieces ---------------------------------------------------------------------------------


def test_a_file_read_in_blocks_is_the_whole_file_and_chunks_the_same(tmp_path):
    text = "".join(f"line {i} ünïcødé ✓ {'x' * (i % 37)}\r\n" if i % 5 else f"{i}\r" for i in range(400))
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode() + "tail without newline é".encode())
    for block in (7, 64, 1000, 1 << 20):  # tiny blocks cut inside multi-byte characters and \r\n pairs
        pieces = list(read_text_blocks(path, block))
        assert "".join(pieces) == read_text(path)
        for size in (5, 100):
            assert list(stream_chunks(pieces, size)) == list(text_chunks(read_text(path), size))


def test_reading_errors_in_blocks_name_the_byte_and_line_in_the_whole_file(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok line\n" * 100 + b"\xff\n")
    with pytest.raises(ValueError, match=rf"{bad}: not UTF-8 text \(byte 800: invalid start byte\)"):
        list(read_text_blocks(bad, 64))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"text line\n" * 100 + b"\x00" * 200 + b"\n")
    with pytest.raises(ValueError, match=rf"{binary}:101: binary data.*starts at byte 1000"):
        list(read_text_blocks(binary, 256))


# -- preparing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, tokenizer", [("tinyshakespeare/input.txt", "char"), ("wikitext-2/wiki.valid.tokens", "bpe")]
)
def test_sharded_prepare_equals_one_process_tokenization(tmp_path, source, tokenizer):
    corpus = shared_file(source)
    kw = dict(tokenizer=tokenizer, bpe_vocab_size=1000)
    one = _dm([corpus], tmp_path, "one", **kw)
    one.prepare_data()
    # 2 worker processes, 64 kB pieces, ~100k-token shards: many pieces, several shards
    sharded = _dm([corpus], tmp_path, "sharded", shard_tokens=100_000, num_proc=2, chunk_bytes=1 << 16, **kw)
    sharded.prepare_data()
    assert sharded.tokenizer.to_str() == one.tokenizer.to_str()  # trained from the streamed text
    expected = np.asarray(one._tokens(str(corpus)))
    tokens = sharded._tokens(str(corpus))
    assert len(tokens.names) > 2
    assert np.array_equal(tokens[0 : len(tokens)], expected)
    assert not (tmp_path / "sharded" / "tokens").exists()


def test_shards_hold_at_most_shard_tokens_cut_between_documents(tmp_path):
    corpus = _docs_corpus(tmp_path)
    dm = _dm([corpus], tmp_path, tokenizer="bpe", bpe_vocab_size=300, shard_tokens=300, chunk_bytes=200)
    dm.prepare_data()
    tokens = dm._tokens(str(corpus))
    ends = np.flatnonzero(tokens[0 : len(tokens)] == dm.eot_id) + 1
    assert len(ends) == 61 and len(tokens.names) > 3  # 60 written, 1 after the file
    assert set(tokens.offsets[1:]) <= set(ends), "a shard ends inside a document"
    assert np.array_equal(tokens.documents(), np.concatenate([[0], ends[:-1]]))
    index = json.loads((tmp_path / "cache" / "shards").glob("*/index.json").__next__().read_text())
    sizes = [s["tokens"] for s in index["shards"]]
    assert max(sizes) <= 300 and min(sizes[:-1]) >= 150, sizes


def test_a_shard_ends_at_its_last_document_start_in_its_second_half(tmp_path):
    writer = ShardWriter(tmp_path, dtype=np.uint16, shard_tokens=10, eot=0)
    writer.write(np.array([1, 1, 1, 1, 1, 0, 2, 2]), new_document=True)  # 8 tokens; a document at 6
    # 16 > 10, and no document starts in this piece at 5..10: shard 0 ends at 6, [2, 2] move on
    writer.write(np.array([2, 2, 2, 2, 2, 0, 3, 0]), new_document=False)
    writer.write(np.array([4, 4, 0]), new_document=True)  # a file starts at 10: shard 1 ends there
    writer.write(np.arange(5, 20), new_document=True)  # no document start at 5..10: cut at 10 exactly
    shards = writer.close()
    assert [(s["tokens"], s["documents"]) for s in shards] == [(6, 1), (10, 2), (10, 2), (8, 1)]
    assert np.fromfile(tmp_path / "documents.int64", dtype=np.int64).tolist() == [0, 6, 14, 16, 19, 26]
    stream = np.concatenate([np.fromfile(tmp_path / s["file"], dtype=np.uint16) for s in shards])
    assert stream.tolist() == [1, 1, 1, 1, 1, 0, 2, 2, 2, 2, 2, 2, 2, 0, 3, 0, 4, 4, 0, *range(5, 20)]
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [s["file"] for s in shards]


@pytest.mark.parametrize("shard_tokens", [7, 64, 300])
@pytest.mark.parametrize("vocab, piece", [(4, 200), (40, 20)], ids=["short-documents", "long-documents"])
def test_shards_of_random_documents_keep_every_token_within_the_bound(tmp_path, shard_tokens, vocab, piece):
    writer = ShardWriter(tmp_path, dtype=np.uint16, shard_tokens=shard_tokens, eot=0)
    rng = np.random.default_rng(shard_tokens)
    pieces = [rng.integers(0, vocab, size=rng.integers(1, piece)) for _ in range(200)]  # 0: a document end
    for i, ids in enumerate(pieces):
        writer.write(ids, new_document=i % 10 == 0)  # every 10th piece starts a file
    shards = writer.close()
    sizes = [s["tokens"] for s in shards]
    assert max(sizes) <= shard_tokens and min(sizes[:-1]) * 2 >= shard_tokens
    stream = np.concatenate([np.fromfile(tmp_path / s["file"], dtype=np.uint16) for s in shards])
    assert stream.tolist() == np.concatenate(pieces).tolist()
    file_starts = np.cumsum([0, *map(len, pieces)])[:-1][::10]
    shard_starts = np.cumsum([0, *sizes])[:-1]
    expected = np.union1d(np.union1d(np.flatnonzero(stream == 0) + 1, file_starts), shard_starts)
    documents = np.fromfile(tmp_path / "documents.int64", dtype=np.int64)
    assert documents.tolist() == expected[expected < len(stream)].tolist()
    per_shard = np.histogram(documents, [*shard_starts, len(stream)])[0]
    assert [s["documents"] for s in shards] == per_shard.tolist()


def test_an_interrupted_prepare_leaves_nothing_usable_and_the_next_run_completes(tmp_path, monkeypatch):
    corpus = _docs_corpus(tmp_path)
    dm = _dm([corpus], tmp_path, tokenizer="bpe", bpe_vocab_size=300, shard_tokens=300, chunk_bytes=200)
    calls = {"n": 0}
    real_write = ShardWriter.write

    def write_then_die(self, ids, *, new_document):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_write(self, ids, new_document=new_document)

    monkeypatch.setattr(ShardWriter, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        dm.prepare_data()
    (folder,) = (tmp_path / "cache" / "shards").iterdir()
    assert list(folder.glob("shard-*")) and not (folder / INDEX).exists()
    with pytest.raises(FileNotFoundError, match="no index.json"):
        open_shards(str(folder), cache_dir=tmp_path)
    monkeypatch.setattr(ShardWriter, "write", real_write)
    _dm([corpus], tmp_path, tokenizer="bpe", bpe_vocab_size=300, shard_tokens=300).prepare_data()
    assert (folder / INDEX).is_file()


def test_unknown_characters_are_reported_with_file_and_line(tmp_path, capsys):
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text("abc abc\n" * 40)
    val.write_text("abc abc\n" * 600 + "ab€ c\n" + "abc\n" * 10)  # '€' is in a later piece and chunk
    dm = _dm([train], tmp_path, val_files=[str(val)], max_seq_len=8, shard_tokens=500, chunk_bytes=1000)
    dm.prepare_data()
    dm.setup("fit")
    assert capsys.readouterr().err.splitlines() == [
        f"zoo: {val}: the tokenizer cannot represent 1 character(s) ('€' x1), first at {val}:601; they are "
        "read as <unk> and never scored or trained on (their labels are -100)"
    ]
    labels = np.concatenate([dm.val_set[i]["labels"].numpy() for i in range(len(dm.val_set))])
    assert (labels == -100).sum() == 1


# -- training on shards --------------------------------------------------------------------------------


def _stream(tmp_path: Path) -> tuple[TextDataModule, object]:
    corpus = _docs_corpus(tmp_path)
    dm = _dm([corpus], tmp_path, tokenizer="bpe", bpe_vocab_size=300, shard_tokens=300, shuffle_seed=3)
    dm.prepare_data()
    return dm, dm._tokens(str(corpus))


def test_documents_are_shuffled_per_epoch_from_the_seed_alone(tmp_path):
    dm, tokens = _stream(tmp_path)
    n = len(tokens)

    def read(seed, epoch):
        stream = DocumentStream(tokens, 0, n, seed=seed)
        stream.set_epoch(epoch)
        return stream[0:n]

    in_order = DocumentStream(tokens, 0, n)[0:n]
    assert np.array_equal(in_order, tokens[0:n])
    epoch0, epoch1 = read(3, 0), read(3, 1)
    assert np.array_equal(epoch0, read(3, 0)) and not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(epoch0, in_order)

    def documents(stream):
        cuts = np.flatnonzero(stream == dm.eot_id) + 1
        return sorted(tuple(d) for d in np.split(stream, cuts) if len(d))

    assert documents(epoch0) == documents(epoch1) == documents(in_order)  # whole documents, reordered


def test_training_blocks_follow_the_epoch_and_ranks_read_disjoint_shares(tmp_path):
    dm, _ = _stream(tmp_path)
    dm.setup("fit")
    blocks = dm.train_set
    first = [blocks[(0, i)]["input_ids"].tolist() for i in range(len(blocks))]
    second = [blocks[(1, i)]["input_ids"].tolist() for i in range(len(blocks))]
    assert first != second
    shares = []
    for rank in (0, 1):
        sampler = EpochSampler(blocks, batch_size=4, seed=3, shuffle=False, num_replicas=2, rank=rank)
        sampler.set_epoch(1)
        keys = list(sampler)
        assert {epoch for epoch, _ in keys} == {1}
        shares.append({i for _, i in keys})
        resumed = EpochSampler(blocks, batch_size=4, seed=3, shuffle=False, num_replicas=2, rank=rank)
        resumed.resume_from(TrainPosition(epoch=1, batches=2))
        resumed.set_epoch(1)
        assert list(resumed) == keys[8:]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(range(len(blocks)))
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSampler)
    batch = next(iter(loader))
    assert batch["input_ids"].tolist() == [first[i] for i in range(4)]


def test_validation_blocks_equal_the_single_file_ones(tmp_path, stdlib_text_file):
    one = _dm([stdlib_text_file], tmp_path, "one")
    one.prepare_data()
    one.setup("fit")
    sharded = _dm([stdlib_text_file], tmp_path, "sharded", shard_tokens=20_000)
    sharded.prepare_data()
    sharded.setup("fit")
    assert len(sharded.val_set) == len(one.val_set) and len(sharded.train_set) == len(one.train_set)
    for i in range(len(one.val_set)):
        assert one.val_set[i]["input_ids"].tolist() == sharded.val_set[i]["input_ids"].tolist()


# -- an object-store layout ----------------------------------------------------------------------------


def test_a_corpus_behind_a_url_is_fetched_shard_by_shard_into_a_bounded_cache(tmp_path):
    import fsspec

    local, tokens = _stream(tmp_path)
    (folder,) = (tmp_path / "cache" / "shards").iterdir()
    fs = fsspec.filesystem("memory")
    fs.put(str(folder), "/bucket/corpus", recursive=True)
    try:
        dm = _dm(["memory://bucket/corpus"], tmp_path, "remote", shard_tokens=None, max_cached_shards=2)
        assert dm.tokenizer.to_str() == local.tokenizer.to_str()  # the corpus's own tokenizer
        dm.prepare_data()
        dm.setup("fit")
        cached = tmp_path / "remote" / "remote-shards"
        assert not list(cached.rglob("shard-*"))  # setup reads the index, not the corpus
        seen = []
        for i in range(len(dm.val_set)):
            seen.append(dm.val_set[i]["input_ids"].tolist())
            assert len(list(cached.rglob("shard-*"))) <= 2
        for i in range(len(dm.train_set)):
            dm.train_set[(0, i)]
            assert len(list(cached.rglob("shard-*"))) <= 2
        local.setup("fit")
        assert seen == [local.val_set[i]["input_ids"].tolist() for i in range(len(local.val_set))]
        assert len(tokens.names) > 2
    finally:
        fs.rm("/bucket", recursive=True)


def test_bad_shard_settings_and_missing_corpora_are_named(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc\n" * 100)
    for bad in ("shard_tokens", "num_proc", "chunk_bytes", "max_cached_shards"):
        with pytest.raises(ValueError, match=f"{bad} must be a positive integer, got 0"):
            _dm([corpus], tmp_path, **{bad: 0})
    with pytest.raises(FileNotFoundError, match="memory://nowhere/corpus: no tokenizer.json"):
        _ = _dm(["memory://nowhere/corpus"], tmp_path).tokenizer


def _documented_litdata_module():
    """The `LitDataTokens` code block of docs/data.md, executed as a module."""
    import re
    import sys
    import types

    docs = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text()
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", docs, re.S) if "class LitDataTokens" in c]
    module = types.ModuleType("my_data")
    sys.modules["my_data"] = module
    exec(compile(code, "docs/data.md", "exec"), module.__dict__)
    return module


def test_the_documented_litdata_module_trains_on_a_zoo_corpus_converted_as_documented(tmp_path):
    pytest.importorskip("litdata", reason="litdata is not installed (pip install litdata)")
    import torch
    from conftest import cpu_trainer
    from litdata import TokensLoader, optimize

    from zoo.models.gpt2 import GPT2
    from zoo.tasks import CausalLM

    local, tokens = _stream(tmp_path)
    (folder,) = (tmp_path / "cache" / "shards").iterdir()
    paths = [str(folder / name) for name in tokens.names]
    optimize(fn=_shard_tokens, inputs=paths, output_dir=str(tmp_path / "lit"), chunk_size=17 * 64,
             item_loader=TokensLoader(), num_workers=1, verbose=False)  # fmt: skip
    my_data = _documented_litdata_module()
    tok = tmp_path / "tokenizer.json"
    tok.write_text(local.tokenizer.to_str())
    dm = my_data.LitDataTokens(str(tmp_path / "lit"), tokenizer=str(tok), max_seq_len=16, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 16) and torch.equal(
        batch["input_ids"][:, 1:], batch["labels"][:, :-1]
    )
    stream = tokens[0 : len(tokens)].tolist()
    row = batch["input_ids"][0].tolist()
    assert any(stream[i : i + 16] == row for i in range(len(stream) - 15)), "a block of the zoo corpus"
    model = CausalLM(GPT2(vocab_size=dm.vocab_size, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1))
    cpu_trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(model, datamodule=dm)
    assert dm.state_dict()["loader"], "the loader's position travels in the checkpoint"


def _shard_tokens(path: str):
    import torch

    yield torch.from_numpy(np.fromfile(path, np.uint16).astype(np.int32))


def test_a_corpus_prepared_by_the_command_is_read_from_its_folder(tmp_path, capsys):
    from zoo.data.prepare_corpus import main

    local, tokens = _stream(tmp_path)
    tok, out = tmp_path / "tokenizer.json", tmp_path / "out"
    tok.write_text(local.tokenizer.to_str())
    args = ["--files", str(tmp_path / "docs.txt"), "--tokenizer", str(tok), "--out", str(out)]
    main([*args, "--shard-tokens", "300", "--num-proc", "2", "--chunk-bytes", "500"])
    assert (
        capsys.readouterr().out
        == f"{out}: {len(tokens):,} tokens of 1 file(s) in {len(tokens.names)} shard(s)\n"
    )
    dm = _dm([out], tmp_path, "reader", tokenizer=str(tok))
    dm.setup("fit")
    assert np.array_equal(dm._tokens(str(out))[0 : len(tokens)], tokens[0 : len(tokens)])
    other = tmp_path / "other.json"
    other.write_text(_dm([tmp_path / "docs.txt"], tmp_path, "char").tokenizer.to_str())
    with pytest.raises(
        ValueError, match=rf"tokenizer '{other}' \(vocab \d+\) is not the one {out} was prepared"
    ):
        _ = _dm([out], tmp_path, "reader", tokenizer=str(other)).tokenizer


# -- a damaged corpus is found before training -----------------------------------------------------------


def test_a_missing_or_cut_cache_shard_is_named_at_setup(tmp_path):
    dm, tokens = _stream(tmp_path)
    (folder,) = (tmp_path / "cache" / "shards").iterdir()
    shard = folder / tokens.names[1]
    data = shard.read_bytes()
    shard.write_bytes(data[:-2])
    fresh = _dm([tmp_path / "docs.txt"], tmp_path, tokenizer="bpe", bpe_vocab_size=300, shard_tokens=300)
    with pytest.raises(ValueError) as cut:
        fresh.setup("fit")
    assert str(cut.value) == (
        f"{shard} has {len(data) - 2:,} bytes, but index.json records {len(data) // 2:,} tokens "
        f"({len(data):,} bytes); delete the folder {folder} and run again: prepare_data prepares it anew"
    )
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=rf"^{shard} is missing \(index.json lists it with [\d,]+ "
                       rf"tokens\); delete the folder {folder} and run again"):  # fmt: skip
        fresh.setup("fit")


def test_a_missing_shard_of_a_prepared_or_remote_corpus_is_named_at_setup(tmp_path):
    import fsspec

    local, tokens = _stream(tmp_path)
    (folder,) = (tmp_path / "cache" / "shards").iterdir()
    (folder / tokens.names[-1]).unlink()
    dm = _dm([folder], tmp_path, "reader", shard_tokens=None)
    with pytest.raises(FileNotFoundError, match=rf"{tokens.names[-1]} is missing .*; restore it, or prepare"):
        dm.setup("fit")
    fs = fsspec.filesystem("memory")
    fs.put(str(folder), "/bucket/broken", recursive=True)
    try:
        remote = _dm(["memory://bucket/broken"], tmp_path, "remote", shard_tokens=None)
        missing = rf"^memory://bucket/broken/{tokens.names[-1]} is missing"
        with pytest.raises(FileNotFoundError, match=missing):
            remote.setup("fit")
    finally:
        fs.rm("/bucket", recursive=True)
