"""Raw text to next-token blocks (training, validation) and sliding windows (scoring a file), through a
memory-mapped token cache.

The corpus is one token stream: each file's tokens followed by ``<|endoftext|>`` when the tokenizer has it
(``bpe``, GPT-2's vocabulary; a file may hold more of them, each ending a document). Blocks are cut from
that stream regardless of documents; with ``pack_documents`` each block also carries ``document_ids`` so the
model keeps its documents apart (see `TextDataModule`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import TokenizedDataModule
from zoo.data.blocks import ShuffledBlocks, SlidingWindows, TokenBlocks, document_item
from zoo.data.cache import cache_key, cached_tokenizer, tokenizer_path
from zoo.data.corpus import files_digest, resolve_files
from zoo.data.shards import is_shard_url
from zoo.data.storage import Shards, TokenFile, TokenStorage, prepared_tokenizer
from zoo.data.tokenizers import (
    ENCODE_CHARS,
    EOT,
    TOKENIZER_KINDS,
    eot_id,
    load_tokenizer,
    text_chunks,
    train_bpe_tokenizer,
    train_char_tokenizer,
    unk_id,
)
from zoo.errors import check_non_negative, check_positive

__all__ = ["ShuffledBlocks", "SlidingWindows", "TextDataModule", "TokenBlocks", "document_item"]


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
        sharded = shard_tokens is not None or any(
            is_shard_url(s) for s in self.files + (self.val_files or [])
        )
        self.storage: TokenStorage = (
            Shards(
                cache_dir=self.cache_dir,
                shard_tokens=shard_tokens,
                num_proc=num_proc,
                chunk_bytes=chunk_bytes,
                max_cached_shards=max_cached_shards,
            )
            if sharded
            else TokenFile(cache_dir=self.cache_dir)
        )
        self.train_set: TokenBlocks | None = None
        self.val_set: TokenBlocks | None = None
        self.test_set: SlidingWindows | None = None

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
            return prepared_tokenizer(self.files[0], spec, cache_dir=self.cache_dir)
        if spec not in TOKENIZER_KINDS:
            return load_tokenizer(spec)
        files = resolve_files(self.files, cache_dir=self.cache_dir)
        name = f"bpe-{self.bpe_vocab_size}" if spec == "bpe" else spec
        path = tokenizer_path(self.cache_dir, name, cache_key(files_digest(files), name))
        return cached_tokenizer(path, lambda: self._train_tokenizer(files))

    def _train_tokenizer(self, files: list[Path]) -> Tokenizer:
        texts = self.storage.training_texts(files)
        try:
            if self.tokenizer_spec == "char":
                return train_char_tokenizer(texts)
            chunks = (chunk for text in texts for chunk in text_chunks(text, ENCODE_CHARS))
            return train_bpe_tokenizer(chunks, vocab_size=self.bpe_vocab_size)
        except ValueError as err:  # an empty corpus: say which files (reading errors already do)
            if any(str(err).startswith(str(f)) for f in files):
                raise
            raise ValueError(f"{', '.join(str(f) for f in files)}: {err}") from err

    # -- Lightning hooks ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Tokenize the corpora the run needs once into the cache (local rank 0 only)."""
        testing = self.trainer is not None and self.trainer.testing
        for specs in self._corpora("test" if testing else "fit"):
            self.storage.prepare(specs, self.tokenizer)

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
        self.train_set = self.storage.blocks(
            train_tokens, self.max_seq_len, self.train_stride, ignore_id=ignore, eot_id=eot
        )
        self.val_set = TokenBlocks(val_tokens, self.max_seq_len, ignore_id=ignore, eot_id=eot)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        seed = self._seed()
        sampler = self._resumable(
            self.storage.train_sampler(self.train_set, batch_size=self.batch_size, seed=seed)
        )
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

    def _corpora(self, stage: str) -> list[list[str]]:
        """The corpus specs ``stage`` reads: each list is one token file."""
        if stage == "test" and self.test_file:
            return [[self.test_file]]
        if stage == "test" and self.val_files:
            return [self.val_files]
        return [self.files] + ([self.val_files] if self.val_files else [])

    def _train_and_val_tokens(self) -> tuple[Any, Any]:
        return self.storage.splits(
            self.files, self.val_files, self.val_fraction, self.tokenizer, self._seed()
        )

    def _tokens(self, *specs: str) -> Any:
        """The token ids of the corpus ``specs``, from the cache (tokenized first if needed)."""
        return self.storage.tokens(list(specs), self.tokenizer)

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


def _preview(text: str, width: int = 40) -> str:
    return repr(text if len(text) <= width else text[:width] + "...")


def _collate_prompts(prompts: list[list[int]]) -> dict[str, list[list[int]]]:
    return {"prompts": prompts}
