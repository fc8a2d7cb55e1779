"""Corpora larger than memory: streaming, multi-process tokenization into token shards, and lazy reading of
those shards from a local directory or an object store (any ``fsspec`` URL).

A sharded corpus is a directory::

    index.json         written last (atomically): dtype, each shard's token and document counts
    tokenizer.json     the tokenizer that wrote it
    documents.int64    where each document starts in the token stream (the shards one after another)
    shard-00000.uint16 token ids, at most ``shard_tokens`` of them per shard, cut between documents
    shard-00001.uint16 ...            where one ends in the shard's second half (`ShardWriter`)

Its token stream is exactly what `zoo.data.text.TextDataModule` writes into its single token file for the
same files and tokenizer: the same chunks are encoded (`stream_chunks`), only in worker processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from zoo.data.corpus import digest, read_text_blocks
from zoo.data.tokenizers import ENCODE_CHARS, UnknownTally, eot_id, stream_chunks, unk_id
from zoo.io import atomic_write

INDEX = "index.json"
TOKENIZER = "tokenizer.json"
DOCUMENTS = "documents.int64"
SHARD_VERSION = 1
_BATCH = 256  # chunks per encode_batch call: the encodings of one batch are the worker's largest object


@dataclass
class Piece:
    """About ``chunk_bytes`` of one file's text as encoding chunks; the unit of work of one worker call."""

    file: str
    chunks: list[str]
    lines: list[int]  # the first line of each chunk in ``file``
    first: bool  # the file's first piece: a new document starts here
    last: bool  # the file's last piece: ``<|endoftext|>`` follows it


@dataclass
class Encoded:
    """A `Piece`'s token ids and the unknown text among them."""

    ids: np.ndarray
    first: bool
    tally: UnknownTally | None = field(default=None)


def file_pieces(files: list[Path], chunk_bytes: int) -> Iterator[Piece]:
    """The files' text in `Piece`s, read ``chunk_bytes`` at a time (never a whole file)."""
    for file in files:
        line, chunks, lines, size, first = 1, [], [], 0, True
        for chunk in stream_chunks(read_text_blocks(file, chunk_bytes), ENCODE_CHARS):
            chunks.append(chunk)
            lines.append(line)
            line += chunk.count("\n")
            size += len(chunk)
            if size >= chunk_bytes:
                yield Piece(str(file), chunks, lines, first, last=False)
                chunks, lines, size, first = [], [], 0, False
        yield Piece(str(file), chunks, lines, first, last=True)


_worker: dict[str, Any] = {}


def _init_worker(tokenizer_json: str, dtype: str) -> None:
    _worker["tok"] = Tokenizer.from_str(tokenizer_json)
    _worker["dtype"] = np.dtype(dtype)


def _encode_piece(piece: Piece) -> Encoded:
    tok, dtype = _worker["tok"], _worker["dtype"]
    tally = UnknownTally(unk_id(tok))
    parts = []
    for i in range(0, len(piece.chunks), _BATCH):
        batch = piece.chunks[i : i + _BATCH]
        encodings = tok.encode_batch(batch, add_special_tokens=False)
        tally.add(encodings, batch, [(piece.file, line) for line in piece.lines[i : i + _BATCH]])
        parts.append(np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=dtype))
    eot = eot_id(tok)
    if piece.last and eot is not None:
        parts.append(np.array([eot], dtype=dtype))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return Encoded(ids, piece.first, tally if tally.count else None)


def encode_pieces(pieces: Iterator[Piece], tok: Tokenizer, dtype: type, num_proc: int) -> Iterator[Encoded]:
    """`Encoded` pieces in order, by ``num_proc`` worker processes (1: this process) with at most
    ``2 * num_proc`` pieces in flight, so memory stays bounded whatever the corpus size."""
    if num_proc == 1:
        _init_worker(tok.to_str(), np.dtype(dtype).name)
        yield from map(_encode_piece, pieces)
        return
    # each worker is one encoding thread; set before the fork so that `tokenizers` does not warn about it
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = multiprocessing.Pool(num_proc, _init_worker, (tok.to_str(), np.dtype(dtype).name))
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    with pool:
        pending: deque = deque()
        for piece in pieces:
            pending.append(pool.apply_async(_encode_piece, (piece,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class ShardWriter:
    """Writes a token stream into shards of at most ``shard_tokens`` tokens, cut between documents.

    A document starts at each file's start and after each ``eot``. A shard that the next piece would take
    past ``shard_tokens`` ends at its last document start in ``[shard_tokens / 2, shard_tokens]``; when
    that start lies in an earlier piece, the shard's tokens after it move into the next shard. With no
    document start there (a document longer than half a shard), the shard ends at exactly
    ``shard_tokens`` and the document goes on in the next one. So every shard but the last holds between
    half and all of ``shard_tokens``. Document starts go to ``documents.int64`` shard by shard, so memory
    does not grow with the number of documents.
    """

    def __init__(self, out_dir: Path, *, dtype: type, shard_tokens: int, eot: int | None) -> None:
        self.out_dir, self.dtype, self.shard_tokens, self.eot = out_dir, np.dtype(dtype), shard_tokens, eot
        self.shards: list[dict[str, Any]] = []
        self._documents = open(out_dir / DOCUMENTS, "wb")  # noqa: SIM115 (closed in close)
        self._offset = 0  # stream position of the open shard's first token
        self._out: Any = None
        self._count = 0
        self._starts: list[np.ndarray] = []  # document starts in the open shard, in its positions

    def write(self, ids: np.ndarray, *, new_document: bool) -> None:
        """Append one piece's ids; ``new_document``: a file starts with them."""
        bounds = np.flatnonzero(ids == self.eot) + 1 if self.eot is not None else np.zeros(0, np.int64)
        bounds = np.concatenate([[0], bounds]) if new_document else bounds
        while self._count + len(ids) > self.shard_tokens:
            end = self._shard_end(bounds)
            if end < self._count:
                self._carry(end)
                continue
            cut = end - self._count
            self._append(ids[:cut], bounds[bounds < cut])
            self._close()
            ids, bounds = ids[cut:], bounds[bounds >= cut] - cut
        self._append(ids, bounds)

    def close(self) -> list[dict[str, Any]]:
        """Close the last shard; the shards' entries for the index."""
        self._close()
        self._documents.close()
        return self.shards

    def _shard_end(self, bounds: np.ndarray) -> int:
        """Where the open shard ends, in its positions, when a piece with document starts ``bounds``
        overflows it: its last document start in the second half of a shard, else ``shard_tokens``."""
        starts = np.concatenate([*self._starts, bounds + self._count])
        fits = starts[(2 * starts >= self.shard_tokens) & (starts <= self.shard_tokens) & (starts > 0)]
        return int(fits.max()) if len(fits) else self.shard_tokens

    def _append(self, ids: np.ndarray, bounds: np.ndarray) -> None:
        if not len(ids):
            return
        if self._out is None:
            self._out = open(self.out_dir / self._name(len(self.shards)), "wb")  # noqa: SIM115 (closed in _close)
            self._starts = [np.zeros(1, np.int64)]
        self._starts.append(bounds.astype(np.int64) + self._count)
        self._out.write(ids.astype(self.dtype, copy=False).tobytes())
        self._count += len(ids)

    def _carry(self, at: int) -> None:
        """End the open shard at its position ``at`` (a document start); its tokens from there on, copied
        a block at a time, start the next shard."""
        starts = np.unique(np.concatenate(self._starts))
        tail, size = self._count - at, self.dtype.itemsize
        self._out.flush()
        following = self.out_dir / self._name(len(self.shards) + 1)
        with open(self._out.name, "rb") as source, open(following, "wb") as target:
            source.seek(at * size)
            shutil.copyfileobj(source, target, 1 << 20)
        self._out.truncate(at * size)
        self._count, self._starts = at, [starts[starts < at]]
        self._close()
        self._out = open(following, "ab")  # noqa: SIM115 (closed in _close)
        self._count, self._starts = tail, [starts[starts >= at] - at]

    def _name(self, shard: int) -> str:
        return f"shard-{shard:05d}.{self.dtype.name}"

    def _close(self) -> None:
        if self._out is None:
            return
        self._out.close()
        starts = np.unique(np.concatenate(self._starts))
        starts = starts[starts < self._count]
        self._documents.write((starts + self._offset).astype(np.int64).tobytes())
        self.shards.append(
            {"file": Path(self._out.name).name, "tokens": self._count, "documents": len(starts)}
        )
        self._offset += self._count
        self._out, self._count, self._starts = None, 0, []


def prepare_shards(
    files: list[Path],
    tok: Tokenizer,
    out_dir: Path,
    *,
    dtype: type,
    shard_tokens: int,
    num_proc: int = 1,
    chunk_bytes: int = 1 << 20,
) -> UnknownTally:
    """Tokenize ``files`` into a sharded corpus in ``out_dir``; ``index.json`` is written last.

    Peak memory is about ``(2 * num_proc + 2) * chunk_bytes`` of text plus, per worker, the tokenizer and
    the encodings of 256 chunks, whatever the size of the corpus.

    Returns:
        The unknown text of the corpus (also saved in the index).

    Raises:
        ValueError: ``"FILE, ...: the corpus is empty: no text to tokenize"`` (nothing is left in
            ``out_dir``); a file's reading error (`read_text_blocks`).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INDEX).unlink(missing_ok=True)  # first: from here on the folder is not a corpus
    for stale in out_dir.glob("shard-*"):
        stale.unlink()
    eot = eot_id(tok)
    writer = ShardWriter(out_dir, dtype=dtype, shard_tokens=shard_tokens, eot=eot)
    tally = UnknownTally(unk_id(tok))
    text_tokens = 0  # tokens other than the <|endoftext|> zoo adds after each file
    for encoded in encode_pieces(file_pieces(files, chunk_bytes), tok, dtype, num_proc):
        writer.write(encoded.ids, new_document=encoded.first)
        text_tokens += len(encoded.ids) if eot is None else int(np.count_nonzero(encoded.ids != eot))
        if encoded.tally is not None:
            tally.update(encoded.tally)
    shards = writer.close()
    if not text_tokens:
        raise _empty_corpus(files, out_dir, shards)
    atomic_write(out_dir / TOKENIZER, tok.to_str())
    index = {
        "version": SHARD_VERSION,
        "dtype": np.dtype(dtype).name,
        "tokens": sum(s["tokens"] for s in shards),
        "files": [str(f) for f in files],
        "unknown": tally.as_dict(),
        "shards": shards,
    }
    atomic_write(out_dir / INDEX, json.dumps(index))
    return tally


def _empty_corpus(files: list[Path], out_dir: Path, shards: list[dict[str, Any]]) -> ValueError:
    """Remove what was written for a corpus without text; the error that names its files."""
    for name in [s["file"] for s in shards] + [DOCUMENTS]:
        (out_dir / name).unlink(missing_ok=True)
    more = f" and {len(files) - 3} more" if len(files) > 3 else ""
    return ValueError(f"{', '.join(map(str, files[:3]))}{more}: the corpus is empty: no text to tokenize")


def is_shard_url(spec: str) -> bool:
    """Whether a corpus spec names a sharded corpus: an ``fsspec`` URL other than http(s) (``s3://...``,
    ``gs://...``, ``file://...``, ``memory://...``), or a local directory holding ``index.json``."""
    if "://" in spec:
        return not spec.startswith(("http://", "https://"))
    return (Path(spec).expanduser() / INDEX).is_file()


class ShardStore:
    """The files of one sharded corpus: a local directory is read in place; any other URL is read through
    ``fsspec``, each shard copied on first use into ``cache_dir``, which holds at most ``max_cached`` of
    them (least recently used first out), so the corpus is never copied whole.

    Args:
        url: A local directory, ``file://`` URL or any ``fsspec`` URL (``s3://bucket/corpus``).
        cache_dir: Where remote shards are copied.
        max_cached: Remote shards kept on local disk at once by this process.
    """

    def __init__(self, url: str, *, cache_dir: Path, max_cached: int = 4) -> None:
        import fsspec

        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local_root = Path(self.root) if "file" in protocols else None
        self.cache = Path(cache_dir) / "remote-shards" / digest(url)
        self.max_cached = max_cached
        self._cached: OrderedDict[str, None] = OrderedDict()

    def read_bytes(self, name: str) -> bytes:
        """A small file of the corpus (index, tokenizer, document starts), read whole."""
        path = f"{self.root.rstrip('/')}/{name}"
        if not self.fs.exists(path):
            raise FileNotFoundError(f"{self.url}: no {name} (not a prepared corpus, or it was interrupted)")
        return self.fs.cat_file(path)

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def sizes(self) -> dict[str, int]:
        """The size in bytes of each file of the corpus folder, by name (one listing, also remote)."""
        if self.local_root is not None:
            return {p.name: p.stat().st_size for p in self.local_root.iterdir() if p.is_file()}
        listing = self.fs.ls(self.root, detail=True)
        return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e["size"] for e in listing if e["type"] == "file"}

    def path(self, name: str) -> Path:
        """A local path of shard ``name``, fetched first if the corpus is remote."""
        if self.local_root is not None:
            return self.local_root / name
        local = self.cache / name
        self._cached[name] = None
        self._cached.move_to_end(name)
        if not local.is_file():
            atomic_write(local, lambda f: self.fs.get_file(f"{self.root.rstrip('/')}/{name}", f.name))
        while len(self._cached) > self.max_cached:
            old, _ = self._cached.popitem(last=False)
            (self.cache / old).unlink(missing_ok=True)  # an open memory map of it stays valid
        return local


class ShardedTokens:
    """A sharded corpus as one lazy 1-D token array: ``len`` and slicing (``tokens[a:b]``) as on a
    ``np.memmap``; each shard is mapped on first use, at most ``max_open`` at once.

    Args:
        store: Where the shards are.
        index: The corpus's ``index.json``.
        max_open: Shards kept mapped at once.
    """

    def __init__(self, store: ShardStore, index: dict[str, Any], *, max_open: int = 4) -> None:
        if index.get("version") != SHARD_VERSION:
            raise ValueError(f"{store.url}: index version {index.get('version')}, expected {SHARD_VERSION}")
        self.store = store
        self.index = index
        self.dtype = np.dtype(index["dtype"])
        self.names = [s["file"] for s in index["shards"]]
        sizes = np.array([s["tokens"] for s in index["shards"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])  # (num_shards + 1,)
        self.max_open = max_open
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ShardedTokens supports contiguous slices only")
        start, stop, _ = key.indices(len(self))
        parts = []
        while start < stop:
            shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
            end = min(stop, int(self.offsets[shard + 1]))
            base = int(self.offsets[shard])
            parts.append(np.array(self._map(shard)[start - base : end - base]))
            start = end
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def documents(self) -> np.ndarray:
        """Start of every document (each shard's start included), in stream positions, ascending."""
        return np.frombuffer(self.store.read_bytes(DOCUMENTS), dtype=np.int64)

    def _map(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            self._maps[shard] = np.memmap(self.store.path(self.names[shard]), dtype=self.dtype, mode="r")
            while len(self._maps) > self.max_open:
                self._maps.popitem(last=False)
        self._maps.move_to_end(shard)
        return self._maps[shard]

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers map their own shards
        return {**self.__dict__, "_maps": OrderedDict()}


REPREPARE = "restore it, or prepare the corpus again (python -m zoo.data.prepare_corpus)"


def open_shards(
    url: str, *, cache_dir: Path, max_cached: int = 4, remedy: str = REPREPARE
) -> tuple[ShardedTokens, Tokenizer]:
    """A prepared corpus (a directory or ``fsspec`` URL with ``index.json``) and its tokenizer, once
    `check_shards` has found every file it lists (``remedy``: what its error tells the user to do)."""
    store = ShardStore(url, cache_dir=cache_dir, max_cached=max_cached)
    index = json.loads(store.read_text(INDEX))
    tokenizer = Tokenizer.from_str(store.read_text(TOKENIZER))
    check_shards(store, index, remedy=remedy)
    return ShardedTokens(store, index, max_open=max_cached), tokenizer


def check_shards(store: ShardStore, index: dict[str, Any], *, remedy: str = REPREPARE) -> None:
    """Every shard of ``index`` (and ``documents.int64``) is present with the size the index records, so
    that a deleted or cut file is found before training, not at the step that first reads it.

    Raises:
        FileNotFoundError: ``"URL/shard-00003.uint16 is missing (index.json lists it with N tokens);
            REMEDY"``.
        ValueError: ``"URL/shard-00003.uint16 has B bytes, but index.json records N tokens (E bytes);
            REMEDY"``.
    """
    sizes = store.sizes()
    itemsize = np.dtype(index["dtype"]).itemsize
    expected = {s["file"]: (s["tokens"] * itemsize, f"{s['tokens']:,} tokens") for s in index["shards"]}
    documents = sum(s["documents"] for s in index["shards"])
    expected[DOCUMENTS] = (documents * 8, f"{documents:,} documents")
    for name, (size, what) in expected.items():
        where = f"{store.url.rstrip('/')}/{name}"
        if name not in sizes:
            raise FileNotFoundError(f"{where} is missing (index.json lists it with {what}); {remedy}")
        if sizes[name] != size:
            raise ValueError(
                f"{where} has {sizes[name]:,} bytes, but index.json records {what} ({size:,} bytes); {remedy}"
            )


class DocumentStream:
    """Positions ``[start, end)`` of a `ShardedTokens` as documents read in an order that changes each epoch.

    Without ``seed`` the documents keep their order (the stream is ``tokens[start:end]``). With it, epoch
    ``e`` reads the shards in a random order and each shard's documents in a random order, both drawn from
    ``(seed, e)`` alone: a document-level shuffle that still reads one shard at a time (what a bounded
    cache of remote shards needs). A document cut by ``start`` or ``end`` keeps its part inside.

    Args:
        tokens: The corpus.
        start: First position.
        end: One past the last position.
        seed: Shuffling seed; ``None`` keeps the corpus order.
    """

    def __init__(self, tokens: ShardedTokens, start: int, end: int, *, seed: int | None = None) -> None:
        starts = tokens.documents()
        starts = np.unique(np.concatenate([[start], starts[(starts > start) & (starts < end)]]))
        self.tokens = tokens
        self.starts = starts  # (D,) each document's first position
        self.lengths = np.diff(np.concatenate([starts, [end]]))  # (D,)
        self.shard = np.searchsorted(tokens.offsets, starts, side="right") - 1  # (D,)
        self.seed = seed
        self.epoch: int | None = None
        self.set_epoch(0)

    def __len__(self) -> int:
        return int(self.lengths.sum())

    def set_epoch(self, epoch: int) -> None:
        """Read the documents in epoch ``epoch``'s order from now on."""
        if epoch == self.epoch:
            return
        self.epoch = epoch
        order = np.arange(len(self.starts))
        if self.seed is not None:
            rng = np.random.default_rng([self.seed, epoch])
            shard_rank = rng.permutation(len(self.tokens.offsets) - 1)
            order = np.lexsort((rng.random(len(self.starts)), shard_rank[self.shard]))
        self.order = order  # (D,) documents in reading order
        self.ends = np.cumsum(self.lengths[order])  # (D,) end of each in the reordered stream

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, _ = key.indices(len(self))
        parts = []
        k = int(np.searchsorted(self.ends, start, side="right"))
        while start < stop:
            doc = self.order[k]
            offset = start - int(self.ends[k] - self.lengths[doc])
            take = min(stop - start, int(self.lengths[doc]) - offset)
            begin = int(self.starts[doc]) + offset
            parts.append(self.tokens[begin : begin + take])
            start, k = start + take, k + 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.tokens.dtype)
