"""The one cache scheme of zoo.data: keys, their version, tokenizers built once per node, token files.

A derived file (a trained tokenizer, a token file, encoded pairs, pretraining instances) lives under
``cache_dir`` at a path keyed by `cache_key`: a digest of everything that decides its contents (the
files' contents by `zoo.data.corpus.files_digest`, the tokenizer's JSON, the settings) and
``CACHE_VERSION``, so a stale file is never reused and a change of layout rebuilds every cache.

Tokenizers: the CLI links ``data.vocab_size`` to the model when it instantiates the classes, before
Lightning's ``prepare_data``, and under torchrun or SLURM every process starts at once. So
`cached_tokenizer` is the rank gate: local rank 0 trains and writes the tokenizer (atomically), every
other local rank waits for that file and reads it; nobody trains a second copy.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from zoo.data.corpus import digest, read_text
from zoo.data.tokenizers import ENCODE_CHARS, UnknownTally, eot_id, text_chunks, unk_id
from zoo.io import atomic_write

CACHE_VERSION = 1
"""Bump when the layout of any cached file changes: every key changes with it, so caches are rebuilt."""


def cache_key(*parts: str) -> str:
    """The key of a derived file: a short digest of ``parts`` (what decides its contents) and the version."""
    return digest(*parts, str(CACHE_VERSION))


def tokenizer_path(cache_dir: Path, name: str, key: str) -> Path:
    """Where a trained tokenizer is cached: ``cache_dir/tokenizers/{name}-{key}/tokenizer.json``."""
    return cache_dir / "tokenizers" / f"{name}-{key}" / "tokenizer.json"


def cached_tokenizer(path: Path, train: Callable[[], Tokenizer]) -> Tokenizer:
    """The tokenizer cached at ``path``; when absent, local rank 0 calls ``train`` and writes the result
    (atomically) while every other local rank waits for that file (`wait_for`) and reads it."""
    if path.is_file():
        return Tokenizer.from_file(str(path))
    if local_rank() != 0:
        return Tokenizer.from_file(str(wait_for(path)))
    tokenizer = train()
    atomic_write(path, tokenizer.to_str())
    return tokenizer


def local_rank() -> int:
    """This process's rank on its node, from the launcher's environment (0 without a launcher)."""
    for var in ("LOCAL_RANK", "SLURM_LOCALID", "JSM_NAMESPACE_LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def wait_for(path: Path, timeout_s: float = 6 * 3600) -> Path:
    """Wait for local rank 0 to write ``path`` (atomically), up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for local rank 0 to write {path}")
        time.sleep(1.0)
    return path


# -- token files -------------------------------------------------------------------------------------
def read_token_meta(path: Path) -> dict[str, Any] | None:
    """A token file's metadata, or ``None`` when it must be (re-)encoded: missing, or written before the
    metadata counted unknown text."""
    meta_path = path.with_suffix(path.suffix + ".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return meta if "unknown" in meta else None


def encode_to_file(files: list[Path], tok: Tokenizer, dtype: type, path: Path) -> UnknownTally:
    """Encode ``files`` in batches, streaming ids into ``path`` (atomically: a temporary file renamed into
    place when complete), each file followed by ``<|endoftext|>`` when the tokenizer has it, then its
    metadata (files, token count, unknown text); both mark it complete."""
    eot = eot_id(tok)
    tally = UnknownTally(unk_id(tok))
    written: dict[str, int] = {}

    def write(out: Any) -> None:
        for file in files:
            _encode_file(out, file, tok, dtype, tally)
            if eot is not None:
                out.write(np.array([eot], dtype=dtype).tobytes())
        written["tokens"] = out.tell() // np.dtype(dtype).itemsize

    atomic_write(path, write)
    meta = {"files": [str(f) for f in files], "tokens": written["tokens"], "unknown": tally.as_dict()}
    atomic_write(path.with_suffix(path.suffix + ".json"), json.dumps(meta, indent=1))
    return tally


def _encode_file(out: Any, file: Path, tok: Tokenizer, dtype: type, tally: UnknownTally) -> None:
    """Encode one file in batches of 256 chunks, keeping each chunk's first line number for ``tally``."""
    batch: list[str] = []
    where: list[tuple[str, int]] = []
    line = 1
    for chunk in text_chunks(read_text(file), ENCODE_CHARS):
        batch.append(chunk)
        where.append((str(file), line))
        line += chunk.count("\n")
        if len(batch) == 256:
            _write_batch(out, tok, batch, where, dtype, tally)
            batch, where = [], []
    _write_batch(out, tok, batch, where, dtype, tally)


def _write_batch(
    out: Any, tok: Tokenizer, batch: list[str], where: list[tuple[str, int]], dtype: type, tally: UnknownTally
) -> None:
    if batch:
        encodings = tok.encode_batch(batch, add_special_tokens=False)
        tally.add(encodings, batch, where)
        ids = np.fromiter((i for e in encodings for i in e.ids), dtype=dtype)
        out.write(ids.tobytes())
