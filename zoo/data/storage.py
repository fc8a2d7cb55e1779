"""Where the token ids of a text corpus live: one interface, two back-ends.

`TokenFile` keeps a corpus as one memory-mapped token file (it fits on disk at once and is read in any
order); `Shards` prepares it by streaming into shards of whole documents, read lazily with the documents
shuffled each epoch (a corpus larger than memory, or a prepared corpus at an ``fsspec`` URL).
`zoo.data.text.TextDataModule` picks one in its constructor and asks it, without knowing which, for the
text to train a tokenizer on, the tokens of a corpus, the train/validation split, the training dataset
and its sampler.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from tokenizers import Tokenizer

from zoo.data.blocks import ShuffledBlocks, TokenBlocks
from zoo.data.cache import cache_key, encode_to_file, read_token_meta
from zoo.data.corpus import files_digest, read_text, read_text_blocks, resolve_files
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
    TOKENIZER_KINDS,
    UnknownTally,
    load_tokenizer,
    stream_chunks,
    unk_id,
)

DEFAULT_SHARD_TOKENS = 1 << 24


def token_dtype(tok: Tokenizer) -> type:
    """The narrowest unsigned integer type that holds every id of ``tok``."""
    return np.uint16 if tok.get_vocab_size() <= np.iinfo(np.uint16).max + 1 else np.uint32


class TokenStorage:
    """The interface of a corpus's token storage (and the behaviour both back-ends share).

    Args:
        cache_dir: Where downloads and prepared tokens are cached.
    """

    blocks: type[TokenBlocks] = TokenBlocks
    """The training dataset class cut from this storage's tokens."""

    def __init__(self, *, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._reported: set[str] = set()

    def training_texts(self, files: list[Path]) -> Iterator[str]:
        """The text of ``files`` that a tokenizer is trained on."""
        return (read_text(f) for f in files)

    def prepare(self, specs: list[str], tok: Tokenizer) -> None:
        """Tokenize the corpus ``specs`` into the cache once (``prepare_data``)."""
        raise NotImplementedError

    def tokens(self, specs: list[str], tok: Tokenizer) -> Any:
        """The token ids of the corpus ``specs`` (prepared first if needed), a 1-D sliceable array."""
        raise NotImplementedError

    def splits(
        self, files: list[str], val_files: list[str] | None, val_fraction: float, tok: Tokenizer, seed: int
    ) -> tuple[Any, Any]:
        """Training and validation tokens: ``val_files``, or the last ``val_fraction`` of ``files``."""
        raise NotImplementedError

    def train_sampler(self, dataset: TokenBlocks, *, batch_size: int, seed: int) -> ResumableSampler:
        """The training sampler of ``dataset`` (seeded by ``seed + epoch``, resumable)."""
        return ResumableSampler(dataset, batch_size=batch_size, seed=seed)

    def _report_unknown(self, specs: list[str], tally: UnknownTally) -> None:
        corpus = ", ".join(specs)
        if tally.count and corpus not in self._reported:
            self._reported.add(corpus)
            _report(tally.message(corpus))


class TokenFile(TokenStorage):
    """Each corpus as one token file ``cache_dir/tokens/<key>.<dtype>``, memory-mapped; the file's name is
    keyed on the files' contents and the tokenizer, so a stale file is never reused."""

    def prepare(self, specs: list[str], tok: Tokenizer) -> None:
        self._token_file(specs, tok)

    def tokens(self, specs: list[str], tok: Tokenizer) -> np.ndarray:
        path = self._token_file(specs, tok)
        if path.stat().st_size == 0:  # np.memmap refuses empty files
            return np.zeros(0, dtype=token_dtype(tok))
        return np.memmap(path, dtype=token_dtype(tok), mode="r")

    def splits(
        self, files: list[str], val_files: list[str] | None, val_fraction: float, tok: Tokenizer, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        train_tokens = self.tokens(files, tok)
        if val_files:
            return train_tokens, self.tokens(val_files, tok)
        split = int(len(train_tokens) * (1.0 - val_fraction))
        return train_tokens[:split], train_tokens[split:]

    def _token_file(self, specs: list[str], tok: Tokenizer) -> Path:
        """Path of the cached token file of ``specs``; the first call per corpus reports unknown text."""
        files = resolve_files(specs, cache_dir=self.cache_dir)
        dtype = token_dtype(tok)
        key = cache_key(files_digest(files), tok.to_str(), np.dtype(dtype).name)
        path = self.cache_dir / "tokens" / f"{key}.{np.dtype(dtype).name}"
        meta = read_token_meta(path)
        if meta is None:
            tally = encode_to_file(files, tok, dtype, path)
        else:
            tally = UnknownTally.from_dict(unk_id(tok), meta["unknown"])
        self._report_unknown(specs, tally)
        return path


class Shards(TokenStorage):
    """Each corpus as shards of whole documents in ``cache_dir/shards/<key>`` (prepared by streaming,
    ``chunk_bytes`` at a time, by ``num_proc`` workers), or a prepared corpus opened where it is; training
    reads them lazily, its documents shuffled each epoch (`zoo.data.shards.DocumentStream`).

    Args:
        cache_dir: As `TokenStorage`.
        shard_tokens: Tokens per shard (``None``: `DEFAULT_SHARD_TOKENS`).
        num_proc: Worker processes that tokenize.
        chunk_bytes: Text per unit of work.
        max_cached_shards: Shards of a remote corpus kept on local disk (and shards mapped) at once.
    """

    blocks = ShuffledBlocks

    def __init__(
        self,
        *,
        cache_dir: Path,
        shard_tokens: int | None,
        num_proc: int,
        chunk_bytes: int,
        max_cached_shards: int,
    ) -> None:
        super().__init__(cache_dir=cache_dir)
        self.shard_tokens = shard_tokens or DEFAULT_SHARD_TOKENS
        self.num_proc = num_proc
        self.chunk_bytes = chunk_bytes
        self.max_cached_shards = max_cached_shards

    def training_texts(self, files: list[Path]) -> Iterator[str]:
        """The same text, never a whole file at once; the same chunks for BPE."""
        return (c for f in files for c in stream_chunks(read_text_blocks(f, self.chunk_bytes), ENCODE_CHARS))

    def prepare(self, specs: list[str], tok: Tokenizer) -> None:
        self.tokens(specs, tok)

    def tokens(self, specs: list[str], tok: Tokenizer) -> ShardedTokens:
        """The sharded corpus of ``specs``: opened if it is one prepared corpus, else prepared (once, by
        streaming) into ``cache_dir/shards/<key>``; the first call per corpus reports unknown text."""
        if len(specs) == 1 and is_shard_url(specs[0]):
            tokens, saved = open_shards(specs[0], cache_dir=self.cache_dir, max_cached=self.max_cached_shards)
            if saved.to_str() != tok.to_str():
                raise ValueError(
                    f"{specs[0]}: prepared with another tokenizer (vocab {saved.get_vocab_size()}) than the "
                    f"one of files (vocab {tok.get_vocab_size()}); prepare it with the same tokenizer"
                )
            return tokens
        if any(is_shard_url(s) for s in specs):
            raise ValueError(
                f"{', '.join(specs)}: a prepared corpus (URL) must be the only entry of its list"
            )
        files = resolve_files(specs, cache_dir=self.cache_dir)
        dtype = token_dtype(tok)
        key = cache_key(
            files_digest(files), tok.to_str(), np.dtype(dtype).name, f"shards-{self.shard_tokens}"
        )
        out = self.cache_dir / "shards" / key
        if (out / INDEX).is_file():
            tally = UnknownTally.from_dict(unk_id(tok), json.loads((out / INDEX).read_text())["unknown"])
        else:
            tally = prepare_shards(
                files,
                tok,
                out,
                dtype=dtype,
                shard_tokens=self.shard_tokens,
                num_proc=self.num_proc,
                chunk_bytes=self.chunk_bytes,
            )
        self._report_unknown(specs, tally)
        remedy = f"delete the folder {out} and run again: prepare_data prepares it anew"
        return open_shards(
            str(out), cache_dir=self.cache_dir, max_cached=self.max_cached_shards, remedy=remedy
        )[0]

    def splits(
        self, files: list[str], val_files: list[str] | None, val_fraction: float, tok: Tokenizer, seed: int
    ) -> tuple[DocumentStream, DocumentStream]:
        """Training stream (its documents shuffled each epoch) and validation stream (in order)."""
        train = self.tokens(files, tok)
        if val_files:
            val = self.tokens(val_files, tok)
            return DocumentStream(train, 0, len(train), seed=seed), DocumentStream(val, 0, len(val))
        split = int(len(train) * (1.0 - val_fraction))
        return DocumentStream(train, 0, split, seed=seed), DocumentStream(train, split, len(train))

    def train_sampler(self, dataset: TokenBlocks, *, batch_size: int, seed: int) -> ResumableSampler:
        """The documents are shuffled; the blocks are read in order, one shard at a time."""
        return EpochSampler(dataset, batch_size=batch_size, seed=seed, shuffle=False)


def prepared_tokenizer(url: str, spec: str, *, cache_dir: Path) -> Tokenizer:
    """The tokenizer saved with the prepared corpus at ``url``; a ``tokenizer`` path ``spec`` must be the
    same one (a kind such as ``"bpe"`` takes the saved one)."""
    saved = Tokenizer.from_str(ShardStore(url, cache_dir=cache_dir).read_text(TOKENIZER))
    if spec not in TOKENIZER_KINDS:
        given = load_tokenizer(spec)
        if given.to_str() != saved.to_str():
            raise ValueError(
                f"TextDataModule: tokenizer {spec!r} (vocab {given.get_vocab_size()}) is "
                f"not the one {url} was prepared with (vocab {saved.get_vocab_size()})"
            )
    return saved


@rank_zero_only
def _report(message: str) -> None:
    print(f"zoo: {message}", file=sys.stderr, flush=True)
