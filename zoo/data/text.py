"""Raw text to fixed-length next-token blocks, through a memory-mapped token cache."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import TokenizedDataModule
from zoo.data.corpus import atomic_write_text, digest, files_digest, read_text, resolve_files
from zoo.data.resumable import ResumableSampler
from zoo.data.tokenizers import (
    TOKENIZER_KINDS,
    eot_id,
    load_tokenizer,
    text_chunks,
    train_bpe_tokenizer,
    train_char_tokenizer,
)

CACHE_VERSION = 1


class TokenBlocks(Dataset):
    """Fixed-length blocks of a token array with next-token targets.

    Item ``i`` starts at ``s = i * stride`` and is
    ``{"input_ids": tokens[s : s+T], "labels": tokens[s+1 : s+T+1]}``.
    ``stride == T`` gives consecutive, non-overlapping blocks; a smaller stride gives overlapping windows
    (``stride=1`` makes every position a possible start, like sampling random offsets).

    Args:
        tokens: 1-D token array (usually a ``np.memmap``).
        block_size: T, the number of positions per example.
        stride: Distance between block starts (defaults to ``block_size``).
    """

    def __init__(self, tokens: np.ndarray, block_size: int, stride: int | None = None) -> None:
        if len(tokens) < block_size + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one block of {block_size} + 1 positions")
        if stride is not None and not 0 < stride:
            raise ValueError(f"stride must be positive, got {stride}")
        self.tokens = tokens
        self.block_size = block_size
        self.stride = stride or block_size

    def __len__(self) -> int:
        return (len(self.tokens) - 1 - self.block_size) // self.stride + 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range for {len(self)} blocks")
        start = i * self.stride
        chunk = torch.from_numpy(self.tokens[start : start + self.block_size + 1].astype(np.int64))
        return {"input_ids": chunk[:-1], "labels": chunk[1:]}


class TextDataModule(TokenizedDataModule):
    """Causal-LM data from raw text files.

    ``prepare_data`` (once per node) resolves the files, builds or loads the tokenizer and encodes the
    corpus into a memory-mapped token file (uint16 when the vocabulary fits) whose name is keyed on the
    files' contents and the tokenizer, so a stale cache is never reused. ``setup`` (every rank) maps it
    and cuts train/validation blocks; under DDP Lightning's distributed sampler gives each rank its share.

    Args:
        files: Training corpus: paths, globs, ``stdlib:GLOB`` (the Python standard library's sources), URLs,
            or ``tinyshakespeare`` (downloaded once into ``cache_dir``).
        val_files: Separate validation files; when ``None`` the last ``val_fraction`` of the tokens is
            held out.
        val_fraction: Share of the corpus held out for validation when ``val_files`` is not given.
        tokenizer: ``"char"``, ``"bpe"`` (trained on ``files``), or a path to ``tokenizer.json`` / a directory
            with ``tokenizer.json`` or GPT-2's ``vocab.json`` + ``merges.txt``.
        bpe_vocab_size: Vocabulary size when training ``"bpe"``.
        max_seq_len: Positions per training example.
        train_stride: Distance between training block starts; ``None`` means ``max_seq_len`` (disjoint
            blocks), 1 makes every token a possible start. Validation blocks are always disjoint.
        batch_size: Training batch size per device.
        eval_batch_size: Validation/test batch size (defaults to ``batch_size``).
        num_workers: DataLoader worker processes.
        cache_dir: Where tokenizers, downloads and token arrays are cached.
        prompts: Prompts for ``zoo predict`` (one generated continuation each).
        shuffle_seed: Seed of the training order (epoch ``e`` uses ``shuffle_seed + e``); ``None`` takes
            the seed given to ``seed_everything`` (0 if none).
    """

    def __init__(
        self,
        files: list[str],
        *,
        val_files: list[str] | None = None,
        val_fraction: float = 0.1,
        tokenizer: str = "char",
        bpe_vocab_size: int = 8192,
        max_seq_len: int = 256,
        train_stride: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str = ".cache/zoo",
        prompts: list[str] | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0 and val_files is None:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.files = list(files)
        self.val_files = list(val_files) if val_files else None
        self.val_fraction = val_fraction
        self.tokenizer_spec = tokenizer
        self.bpe_vocab_size = bpe_vocab_size
        self.max_seq_len = max_seq_len
        self.train_stride = train_stride
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir).expanduser()
        self.prompts = prompts or ["\n"]
        self.shuffle_seed = shuffle_seed
        self.train_set: TokenBlocks | None = None
        self.val_set: TokenBlocks | None = None

    # -- tokenizer ---------------------------------------------------------------------------------

    @property
    def eot_id(self) -> int | None:
        return eot_id(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _build_tokenizer(self) -> Tokenizer:
        spec = self.tokenizer_spec
        if spec not in TOKENIZER_KINDS:
            return load_tokenizer(spec)
        files = resolve_files(self.files, cache_dir=self.cache_dir)
        extra = f"-{self.bpe_vocab_size}" if spec == "bpe" else ""
        key = digest(files_digest(files), spec + extra, str(CACHE_VERSION))
        path = self.cache_dir / "tokenizers" / f"{spec}{extra}-{key}" / "tokenizer.json"
        if path.is_file():
            return Tokenizer.from_file(str(path))
        if _local_rank() != 0:  # under torchrun/SLURM every process starts at once: local rank 0 trains
            return Tokenizer.from_file(str(_wait_for(path)))
        texts = (read_text(f) for f in files)
        tok = (
            train_char_tokenizer(texts)
            if spec == "char"
            else train_bpe_tokenizer(
                (chunk for text in texts for chunk in text_chunks(text, 4096)), vocab_size=self.bpe_vocab_size
            )
        )
        atomic_write_text(path, tok.to_str())
        return tok

    # -- Lightning hooks ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Tokenize the corpus once into the cache (local rank 0 only)."""
        self._token_file(self.files)
        if self.val_files:
            self._token_file(self.val_files)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            return
        train_tokens = np.memmap(self._token_file(self.files), dtype=self._dtype, mode="r")
        if self.val_files:
            val_tokens = np.memmap(self._token_file(self.val_files), dtype=self._dtype, mode="r")
        else:
            split = int(len(train_tokens) * (1.0 - self.val_fraction))
            train_tokens, val_tokens = train_tokens[:split], train_tokens[split:]
        self.train_set = TokenBlocks(train_tokens, self.max_seq_len, self.train_stride)
        self.val_set = TokenBlocks(val_tokens, self.max_seq_len)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        seed = (
            self.shuffle_seed if self.shuffle_seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        )
        sampler = self._resumable(ResumableSampler(self.train_set, batch_size=self.batch_size, seed=seed))
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(seed),  # worker seeds never draw from the global RNG
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        encoded = [self.encode(p) for p in self.prompts]
        if any(len(ids) == 0 for ids in encoded):
            raise ValueError("every prompt must encode to at least one token")
        for text, ids in zip(self.prompts, encoded):
            if len(ids) > self.max_seq_len:
                raise ValueError(
                    f"prompt {_preview(text)} is {len(ids)} tokens long, longer than the context of "
                    f"max_seq_len={self.max_seq_len} tokens; shorten it"
                )
        return DataLoader(encoded, batch_size=self.eval_batch_size, collate_fn=_collate_prompts)

    # -- internals ---------------------------------------------------------------------------------
    @property
    def _dtype(self) -> type:
        return np.uint16 if self.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32

    def _token_file(self, specs: list[str]) -> Path:
        files = resolve_files(specs, cache_dir=self.cache_dir)
        key = digest(
            files_digest(files), self.tokenizer.to_str(), np.dtype(self._dtype).name, str(CACHE_VERSION)
        )
        path = self.cache_dir / "tokens" / f"{key}.{np.dtype(self._dtype).name}"
        if not path.is_file():
            _encode_to_file(files, self.tokenizer, self._dtype, path)
        return path

    def _loader(self, dataset: Dataset | None, batch_size: int) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


def _local_rank() -> int:
    for var in ("LOCAL_RANK", "SLURM_LOCALID", "JSM_NAMESPACE_LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _wait_for(path: Path, timeout_s: float = 6 * 3600) -> Path:
    """Wait for local rank 0 to write ``path`` (atomically), up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for local rank 0 to write {path}")
        time.sleep(1.0)
    return path


def _preview(text: str, width: int = 40) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")


def _collate_prompts(prompts: list[list[int]]) -> dict[str, list[list[int]]]:
    return {"prompts": prompts}


def _encode_to_file(files: list[Path], tok: Tokenizer, dtype: type, path: Path) -> None:
    """Encode ``files`` in batches, streaming ids to a temporary file renamed into place when complete."""
    eot = eot_id(tok)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tokens-")
    try:
        with os.fdopen(fd, "wb") as out:
            for file in files:
                batch: list[str] = []
                for chunk in text_chunks(read_text(file), 4096):
                    batch.append(chunk)
                    if len(batch) == 256:
                        _write_batch(out, tok, batch, dtype)
                        batch = []
                _write_batch(out, tok, batch, dtype)
                if eot is not None:
                    out.write(np.array([eot], dtype=dtype).tobytes())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = {"files": [str(f) for f in files], "tokens": path.stat().st_size // np.dtype(dtype).itemsize}
    atomic_write_text(path.with_suffix(path.suffix + ".json"), json.dumps(meta, indent=1))


def _write_batch(out: Any, tok: Tokenizer, batch: list[str], dtype: type) -> None:
    if batch:
        encodings = tok.encode_batch(batch, add_special_tokens=False)
        ids = np.fromiter((i for e in encodings for i in e.ids), dtype=dtype)
        out.write(ids.tobytes())
