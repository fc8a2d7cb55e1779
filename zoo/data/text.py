"""Raw text to next-token blocks (training, validation) and sliding windows (scoring a file), through a
memory-mapped token cache.

The corpus is one token stream: each file's tokens followed by ``<|endoftext|>`` when the tokenizer has it
(``bpe``, GPT-2's vocabulary; a file may hold more of them, each ending a document). Blocks are cut from
that stream regardless of documents; with ``pack_documents`` each block also carries ``document_ids`` so the
model keeps its documents apart (see `TextDataModule`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import TokenizedDataModule
from zoo.data.batch import IGNORE_INDEX
from zoo.data.corpus import (
    digest,
    files_digest,
    read_text,
    read_text_blocks,
    resolve_files,
)
from zoo.data.resumable import EpochSampler, ResumableSampler
from zoo.data.shards import (
    INDEX,
    TOKENIZER,
    DocumentStream,
    ShardedTokens,
    ShardStore,
    is_shard_url,
    open_shards,
    prepare_shards,
)
from zoo.data.tokenizers import (
    ENCODE_CHARS,
    EOT,
    TOKENIZER_KINDS,
    UnknownTally,
    eot_id,
    load_tokenizer,
    stream_chunks,
    text_chunks,
    train_bpe_tokenizer,
    train_char_tokenizer,
    unk_id,
)
from zoo.errors import check_non_negative, check_positive
from zoo.io import atomic_write

CACHE_VERSION = 1
DEFAULT_SHARD_TOKENS = 1 << 24


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
        ignore_id: A label equal to this id (the tokenizer's ``<unk>``) becomes -100: never a target.
        eot_id: The token that ends each document (``<|endoftext|>``), for packed documents: items also
            hold ``document_ids`` and the target after it is -100 (see `document_item`); ``None``: off.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        stride: int | None = None,
        ignore_id: int | None = None,
        eot_id: int | None = None,
    ) -> None:
        if len(tokens) < block_size + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one block of {block_size} + 1 positions")
        check_positive("TokenBlocks", block_size=block_size, stride=stride)
        self.tokens = tokens
        self.block_size = block_size
        self.stride = stride or block_size
        self.ignore_id = ignore_id
        self.eot_id = eot_id

    def __len__(self) -> int:
        return (len(self.tokens) - 1 - self.block_size) // self.stride + 1

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range for {len(self)} blocks")
        start = i * self.stride
        chunk = self.tokens[start : start + self.block_size + 1]
        return _next_token_item(chunk, self.ignore_id, eot_id=self.eot_id)


class ShuffledBlocks(TokenBlocks):
    """`TokenBlocks` over a `DocumentStream` whose documents change order each epoch.

    Items are asked for as ``(epoch, i)`` (`zoo.data.resumable.EpochSampler` yields them): block ``i`` of
    that epoch's document order, so the order is the same in every DataLoader worker and after a resume.
    """

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        self.tokens.set_epoch(epoch)
        return super().__getitem__(i)


class SlidingWindows(Dataset):
    """Windows that score every token of a stream exactly once: strided sliding-window evaluation.

    With ``N`` tokens, targets are tokens ``1 .. N-1`` (token 0 has nothing before it). Window ``k`` starts
    at ``s = min(k * stride, N - 1 - T)`` (the last window ends at the last token) and holds
    ``input_ids = tokens[s : s+T]`` and ``labels = tokens[s+1 : s+T+1]``, where the labels of targets an
    earlier window already scored are -100: they are context only. So the first window scores its ``T``
    targets with the context from the start of the stream, and every later target is predicted from at
    least ``T - stride + 1`` tokens before it. ``stride == T`` gives disjoint windows (cheapest, least
    context); ``stride == 1`` gives every target the full ``T`` (``T`` times the cost). A stream shorter
    than a window is one window of ``N - 1`` positions.

    Args:
        tokens: 1-D token array, at least 2 tokens.
        block_size: T, the positions per window (the model's context).
        stride: New targets per window after the first (at most ``block_size``; defaults to it).
        ignore_id: A label equal to this id (the tokenizer's ``<unk>``) becomes -100: never scored.
        eot_id: The token that ends each document, for packed documents (as in `TokenBlocks`).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        stride: int | None = None,
        ignore_id: int | None = None,
        eot_id: int | None = None,
    ) -> None:
        check_positive("SlidingWindows", block_size=block_size, stride=stride)
        stride = stride or block_size
        if stride > block_size:
            raise ValueError(
                f"stride={stride} is larger than the window of {block_size} tokens: the tokens between "
                "windows would never be scored"
            )
        if len(tokens) < 2:
            raise ValueError(f"{len(tokens)} token(s) to score: at least 2 are needed (the first is context)")
        self.tokens = tokens
        self.width = min(block_size, len(tokens) - 1)
        self.stride = stride
        self.ignore_id = ignore_id
        self.eot_id = eot_id
        self._last_start = len(tokens) - 1 - self.width

    def __len__(self) -> int:
        return 1 + -(-self._last_start // self.stride)  # 1 + ceil(last_start / stride)

    def start(self, i: int) -> int:
        """Index of window ``i``'s first input token."""
        return min(i * self.stride, self._last_start)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        s = self.start(i)
        scored_before = 0 if i == 0 else self.start(i - 1) + self.width - s  # targets the last window scored
        chunk = self.tokens[s : s + self.width + 1]
        return _next_token_item(chunk, self.ignore_id, context=scored_before, eot_id=self.eot_id)


class TextDataModule(TokenizedDataModule):
    """Causal-LM data from raw text files.

    ``prepare_data`` (once per node) resolves the files, builds or loads the tokenizer and encodes the
    corpus into a memory-mapped token file (uint16 when the vocabulary fits) whose name is keyed on the
    files' contents and the tokenizer, so a stale cache is never reused. ``setup`` (every rank) maps it
    and cuts train/validation blocks; under DDP Lightning's distributed sampler gives each rank its share.
    ``zoo test`` scores ``test_file`` (default: the validation tokens) with `SlidingWindows`.

    Text the tokenizer cannot represent (a character the ``char`` vocabulary never saw) is read as
    ``<unk>``, is never a target (label -100), and is reported once per corpus on stderr: how many
    characters, which, and the first ``file:line``.

    Documents: each file ends with ``<|endoftext|>`` when the tokenizer has it (``bpe`` and GPT-2's
    vocabulary; ``char`` has none, so its files run into each other), and that token written inside a file
    ends a document too. Blocks are cut from the stream as it is, so by default a block's positions attend
    across those boundaries. ``pack_documents=True`` keeps the same blocks but gives each the batch key
    ``document_ids`` (B, T), the document of each position, counted from 0 in each block (the
    ``<|endoftext|>`` belongs to the document it ends): a `zoo.models.protocols.PackedDecoder` then
    attends only within a document, with positions restarting at each one, and the target after each
    ``<|endoftext|>`` (the next document's first token, which nothing in its own document precedes) is -100.
    Every document in a block then gets the loss it would get alone (one cut by the block's start is
    scored from there, without its earlier text). This applies to training, validation and ``zoo test``
    windows alike.

    Args:
        files: Training corpus: paths, globs, ``stdlib:GLOB`` (the Python standard library's sources), URLs,
            or ``tinyshakespeare`` (downloaded once into ``cache_dir``).
        val_files: Separate validation files; when ``None`` the last ``val_fraction`` of the tokens is
            held out.
        val_fraction: Share of the corpus held out for validation when ``val_files`` is not given.
        test_file: What ``zoo test`` scores (a path, glob or URL, like ``files``), with the tokenizer built
            from ``files`` (the checkpoint's: a different one is refused); ``None``: the validation tokens.
        tokenizer: ``"char"``, ``"bpe"`` (trained on ``files``), or a path to ``tokenizer.json`` / a directory
            with ``tokenizer.json`` or GPT-2's ``vocab.json`` + ``merges.txt``.
        bpe_vocab_size: Vocabulary size when training ``"bpe"``.
        max_seq_len: Positions per training example.
        train_stride: Distance between training block starts; ``None`` means ``max_seq_len`` (disjoint
            blocks), 1 makes every token a possible start. Validation blocks are always disjoint.
        test_stride: New targets per window when ``zoo test`` scores (see `SlidingWindows`); each
            later target gets at least ``max_seq_len - test_stride + 1`` tokens of context. ``None`` means
            ``max_seq_len`` (disjoint windows); at most ``max_seq_len``.
        pack_documents: Keep the documents of each block apart (``document_ids``, see above); needs a
            tokenizer with ``<|endoftext|>``. Off: blocks and numbers exactly as without the option.
        batch_size: Training batch size per device.
        eval_batch_size: Validation/test batch size (defaults to ``batch_size``).
        num_workers: DataLoader worker processes.
        cache_dir: Where tokenizers, downloads and token arrays are cached.
        prompts: Prompts for ``zoo predict`` (one generated continuation each).
        shuffle_seed: Seed of the training order (epoch ``e`` uses ``shuffle_seed + e``); ``None`` takes
            the seed given to ``seed_everything`` (0 if none).
        shard_tokens: Tokens per shard of a sharded corpus; set, the corpus is prepared by streaming (read
            ``chunk_bytes`` at a time, never whole) into shards of whole documents, and training reads
            them lazily with a per-epoch document shuffle (see "Corpora larger than memory" in the docs).
            ``None``: one token file, as before. A ``files`` entry that is a prepared corpus (an
            ``fsspec`` URL such as ``s3://bucket/corpus`` or a directory with ``index.json``) is always
            read as shards.
        num_proc: Worker processes that tokenize a sharded corpus (1: this process).
        chunk_bytes: Text per unit of work when preparing shards; memory is bounded by about
            ``(2 * num_proc + 2) * chunk_bytes`` plus each worker's tokenizer, not by the corpus.
        max_cached_shards: Shards of a remote corpus kept on local disk (and shards mapped) at once,
            per process.
    """

    def __init__(
        self,
        files: list[str],
        *,
        val_files: list[str] | None = None,
        val_fraction: float = 0.1,
        test_file: str | None = None,
        tokenizer: str = "char",
        bpe_vocab_size: int = 8192,
        max_seq_len: int = 256,
        train_stride: int | None = None,
        test_stride: int | None = None,
        pack_documents: bool = False,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str = ".cache/zoo",
        prompts: list[str] | None = None,
        shuffle_seed: int | None = None,
        shard_tokens: int | None = None,
        num_proc: int = 1,
        chunk_bytes: int = 1 << 20,
        max_cached_shards: int = 4,
    ) -> None:
        super().__init__()
        _check_arguments(locals())
        self.files = list(files)
        self.val_files = list(val_files) if val_files else None
        self.val_fraction = val_fraction
        self.test_file = test_file
        self.tokenizer_spec = tokenizer
        self.bpe_vocab_size = bpe_vocab_size
        self.max_seq_len = max_seq_len
        self.train_stride = train_stride
        self.test_stride = test_stride
        self.pack_documents = pack_documents
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir).expanduser()
        self.prompts = prompts or ["\n"]
        self.shuffle_seed = shuffle_seed
        self.shard_tokens = shard_tokens
        self.num_proc = num_proc
        self.chunk_bytes = chunk_bytes
        self.max_cached_shards = max_cached_shards
        self.sharded = shard_tokens is not None or any(
            is_shard_url(s) for s in self.files + (self.val_files or [])
        )
        self.train_set: TokenBlocks | None = None
        self.val_set: TokenBlocks | None = None
        self.test_set: SlidingWindows | None = None
        self._reported: set[str] = set()

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
        if is_shard_url(self.files[0]):
            return self._corpus_tokenizer()
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
        if self.sharded:  # the same text, never a whole file at once; the same chunks for BPE
            texts = (
                c for f in files for c in stream_chunks(read_text_blocks(f, self.chunk_bytes), ENCODE_CHARS)
            )
        try:
            tok = (
                train_char_tokenizer(texts)
                if spec == "char"
                else train_bpe_tokenizer(
                    (chunk for text in texts for chunk in text_chunks(text, ENCODE_CHARS)),
                    vocab_size=self.bpe_vocab_size,
                )
            )
        except ValueError as err:  # an empty corpus: say which files (reading errors already do)
            if any(str(err).startswith(str(f)) for f in files):
                raise
            raise ValueError(f"{', '.join(str(f) for f in files)}: {err}") from err
        atomic_write(path, tok.to_str())
        return tok

    # -- Lightning hooks ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Tokenize the corpora the run needs once into the cache (local rank 0 only)."""
        testing = self.trainer is not None and self.trainer.testing
        for specs in self._corpora("test" if testing else "fit"):
            self._shards(specs) if self.sharded else self._token_file(specs)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            return
        ignore, eot = unk_id(self.tokenizer), self._document_end()
        if stage == "test":
            tokens = self._tokens(self.test_file) if self.test_file else self._train_and_val_tokens()[1]
            if len(tokens) < 2:
                raise ValueError(
                    f"{self.test_file or 'the validation split'}: {len(tokens)} token(s), too few to score "
                    "(the first token is only context)"
                )
            self.test_set = SlidingWindows(
                tokens, self.max_seq_len, self.test_stride, ignore_id=ignore, eot_id=eot
            )
            return
        train_tokens, val_tokens = self._train_and_val_tokens()
        where = ", ".join(self.files)
        for split, tokens in (("training", train_tokens), ("validation", val_tokens)):
            if len(tokens) < self.max_seq_len + 1:
                source = ", ".join(self.val_files) if split == "validation" and self.val_files else where
                raise ValueError(
                    f"{source}: the {split} split has {len(tokens)} tokens, fewer than one block of "
                    f"max_seq_len + 1 = {self.max_seq_len + 1}; give more text, a smaller max_seq_len"
                    + (" or a larger val_fraction" if split == "validation" and not self.val_files else "")
                )
        self.train_set = (ShuffledBlocks if self.sharded else TokenBlocks)(
            train_tokens, self.max_seq_len, self.train_stride, ignore_id=ignore, eot_id=eot
        )
        self.val_set = TokenBlocks(val_tokens, self.max_seq_len, ignore_id=ignore, eot_id=eot)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        seed = self._seed()
        if self.sharded:  # the documents are shuffled; the blocks are read in order, one shard at a time
            sampler = self._resumable(
                EpochSampler(self.train_set, batch_size=self.batch_size, seed=seed, shuffle=False)
            )
        else:
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
        """`SlidingWindows` over ``test_file`` (or the validation tokens), in order."""
        return self._loader(self.test_set, self.eval_batch_size)

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
    def _seed(self) -> int:
        return (
            self.shuffle_seed if self.shuffle_seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        )

    def _document_end(self) -> int | None:
        """The id that ends each document when ``pack_documents`` is on, else ``None``."""
        if not self.pack_documents:
            return None
        if self.eot_id is None:
            raise ValueError(
                f"TextDataModule: pack_documents=True needs a tokenizer with {EOT} between documents "
                f"(tokenizer 'bpe' or GPT-2's vocabulary); tokenizer {self.tokenizer_spec!r} has none, so "
                "its token stream marks no document boundary"
            )
        return self.eot_id

    @property
    def _dtype(self) -> type:
        return np.uint16 if self.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32

    def _corpora(self, stage: str) -> list[list[str]]:
        """The corpus specs ``stage`` reads: each list is one token file."""
        if stage == "test" and self.test_file:
            return [[self.test_file]]
        if stage == "test" and self.val_files:
            return [self.val_files]
        return [self.files] + ([self.val_files] if self.val_files else [])

    def _train_and_val_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        if self.sharded:
            return self._sharded_splits()
        train_tokens = self._tokens(*self.files)
        if self.val_files:
            return train_tokens, self._tokens(*self.val_files)
        split = int(len(train_tokens) * (1.0 - self.val_fraction))
        return train_tokens[:split], train_tokens[split:]

    def _tokens(self, *specs: str) -> np.ndarray:
        """The token ids of the corpus ``specs``, memory-mapped from the cache (encoded first if needed)."""
        if self.sharded:
            return self._shards(list(specs))
        path = self._token_file(list(specs))
        if path.stat().st_size == 0:  # np.memmap refuses empty files
            return np.zeros(0, dtype=self._dtype)
        return np.memmap(path, dtype=self._dtype, mode="r")

    def _token_file(self, specs: list[str]) -> Path:
        """Path of the cached token file of ``specs``; the first call per corpus reports unknown text."""
        files = resolve_files(specs, cache_dir=self.cache_dir)
        key = digest(
            files_digest(files), self.tokenizer.to_str(), np.dtype(self._dtype).name, str(CACHE_VERSION)
        )
        path = self.cache_dir / "tokens" / f"{key}.{np.dtype(self._dtype).name}"
        meta = _read_meta(path)
        if meta is None:
            tally = _encode_to_file(files, self.tokenizer, self._dtype, path)
        else:
            tally = UnknownTally.from_dict(unk_id(self.tokenizer), meta["unknown"])
        self._report_unknown(specs, tally)
        return path

    def _report_unknown(self, specs: list[str], tally: UnknownTally) -> None:
        corpus = ", ".join(specs)
        if tally.count and corpus not in self._reported:
            self._reported.add(corpus)
            _report(tally.message(corpus))

    def _sharded_splits(self) -> tuple[DocumentStream, DocumentStream]:
        """Training stream (its documents shuffled each epoch) and validation stream (in order)."""
        train = self._shards(self.files)
        if self.val_files:
            val = self._shards(self.val_files)
            return DocumentStream(train, 0, len(train), seed=self._seed()), DocumentStream(val, 0, len(val))
        split = int(len(train) * (1.0 - self.val_fraction))
        return DocumentStream(train, 0, split, seed=self._seed()), DocumentStream(train, split, len(train))

    def _shards(self, specs: list[str]) -> ShardedTokens:
        """The sharded corpus of ``specs``: opened if it is one prepared corpus, else prepared (once, by
        streaming) into ``cache_dir/shards/<key>``; the first call per corpus reports unknown text."""
        if len(specs) == 1 and is_shard_url(specs[0]):
            tokens, tok = open_shards(specs[0], cache_dir=self.cache_dir, max_cached=self.max_cached_shards)
            if tok.to_str() != self.tokenizer.to_str():
                raise ValueError(
                    f"{specs[0]}: prepared with another tokenizer (vocab {tok.get_vocab_size()}) than the "
                    f"one of files (vocab {self.vocab_size}); prepare it with the same tokenizer"
                )
            return tokens
        if any(is_shard_url(s) for s in specs):
            raise ValueError(
                f"{', '.join(specs)}: a prepared corpus (URL) must be the only entry of its list"
            )
        files = resolve_files(specs, cache_dir=self.cache_dir)
        shard_tokens = self.shard_tokens or DEFAULT_SHARD_TOKENS
        dtype = np.dtype(self._dtype).name
        key = digest(
            files_digest(files), self.tokenizer.to_str(), dtype, str(CACHE_VERSION), f"shards-{shard_tokens}"
        )
        out = self.cache_dir / "shards" / key
        if (out / INDEX).is_file():
            tally = UnknownTally.from_dict(
                unk_id(self.tokenizer), json.loads((out / INDEX).read_text())["unknown"]
            )
        else:
            tally = prepare_shards(
                files,
                self.tokenizer,
                out,
                dtype=self._dtype,
                shard_tokens=shard_tokens,
                num_proc=self.num_proc,
                chunk_bytes=self.chunk_bytes,
            )
        self._report_unknown(specs, tally)
        remedy = f"delete the folder {out} and run again: prepare_data prepares it anew"
        return open_shards(
            str(out), cache_dir=self.cache_dir, max_cached=self.max_cached_shards, remedy=remedy
        )[0]

    def _corpus_tokenizer(self) -> Tokenizer:
        """The tokenizer saved with the prepared corpus ``files``; a ``tokenizer`` path must be the same."""
        saved = Tokenizer.from_str(ShardStore(self.files[0], cache_dir=self.cache_dir).read_text(TOKENIZER))
        if self.tokenizer_spec not in TOKENIZER_KINDS:
            given = load_tokenizer(self.tokenizer_spec)
            if given.to_str() != saved.to_str():
                raise ValueError(
                    f"TextDataModule: tokenizer {self.tokenizer_spec!r} (vocab {given.get_vocab_size()}) is "
                    f"not the one {self.files[0]} was prepared with (vocab {saved.get_vocab_size()})"
                )
        return saved

    def _loader(self, dataset: Dataset | None, batch_size: int) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator(),  # no draw from the global RNG, which a resumed run restores
        )


def _check_arguments(args: dict[str, Any]) -> None:
    """TextDataModule's constructor checks: every message names the argument."""
    owner = "TextDataModule"
    if not args["files"]:
        raise ValueError(f"{owner}: files must list at least one corpus file")
    if args["val_files"] is None and not 0.0 < args["val_fraction"] < 1.0:
        raise ValueError(f"{owner}: val_fraction must be in (0, 1), got {args['val_fraction']!r}")
    sizes = (
        *("bpe_vocab_size", "max_seq_len", "train_stride", "test_stride", "batch_size", "eval_batch_size"),
        *("shard_tokens", "num_proc", "chunk_bytes", "max_cached_shards"),
    )
    check_positive(owner, **{name: args[name] for name in sizes})
    check_non_negative(owner, num_workers=args["num_workers"])
    if args["test_stride"] is not None and args["test_stride"] > args["max_seq_len"]:
        raise ValueError(
            f"{owner}: test_stride={args['test_stride']} is larger than max_seq_len={args['max_seq_len']}: "
            "the tokens between windows would never be scored"
        )


def _next_token_item(
    chunk: np.ndarray, ignore_id: int | None, context: int = 0, eot_id: int | None = None
) -> dict[str, torch.Tensor]:
    """``{"input_ids": chunk[:-1], "labels": chunk[1:]}`` (int64), with -100 on the first ``context``
    labels and on labels equal to ``ignore_id``; with ``eot_id``, as `document_item` makes it."""
    ids = torch.from_numpy(chunk.astype(np.int64))
    labels = ids[1:].clone()
    labels[:context] = IGNORE_INDEX
    if ignore_id is not None:
        labels[labels == ignore_id] = IGNORE_INDEX
    item = {"input_ids": ids[:-1], "labels": labels}
    return item if eot_id is None else document_item(item, eot_id)


def document_item(item: dict[str, torch.Tensor], eot_id: int) -> dict[str, torch.Tensor]:
    """Mark the documents of a next-token item whose documents each end with ``eot_id``.

    Adds ``document_ids`` (T,): the number of ``eot_id`` tokens before each position, so the end token
    belongs to the document it ends and the first document of the item is 0. The label at an end token
    (the next document's first token) becomes -100: predicting it would take the other document's context.
    """
    ends = item["input_ids"] == eot_id  # (T,)
    labels = item["labels"].masked_fill(ends, IGNORE_INDEX)
    document_ids = ends.long().cumsum(0) - ends.long()  # (T,) ends before each position
    return {**item, "labels": labels, "document_ids": document_ids}


@rank_zero_only
def _report(message: str) -> None:
    print(f"zoo: {message}", file=sys.stderr, flush=True)


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


def _read_meta(path: Path) -> dict[str, Any] | None:
    """A token file's metadata, or ``None`` when it must be (re-)encoded: missing, or written before the
    metadata counted unknown text."""
    meta_path = path.with_suffix(path.suffix + ".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    return meta if "unknown" in meta else None


def _encode_to_file(files: list[Path], tok: Tokenizer, dtype: type, path: Path) -> UnknownTally:
    """Encode ``files`` in batches, streaming ids into ``path`` (atomically: a temporary file renamed into
    place when complete), then its metadata (files, token count, unknown text); both mark it complete."""
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
