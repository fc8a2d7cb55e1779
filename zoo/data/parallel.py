"""Parallel text (line-aligned translation pairs) to token-budget batches for encoder-decoder models.

Pairs come from two line-aligned files (``train.de`` + ``train.en``: line i of one translates line i of
the other) or from one TSV file (``source<TAB>target`` per line). One byte-level BPE vocabulary is
trained on both sides of the training pairs (a *joint* vocabulary, so source and target may share their
embeddings); ``<pad>``, ``<s>`` and ``</s>`` are ids 0, 1 and 2.

What happens to awkward pairs:

* Training pairs with an empty side, or a side longer than ``max_seq_len - 1`` tokens, are dropped and
  counted (the counts are logged and kept in ``stats``).
* In validation and test sets an empty side is an error naming the file and line: dropping it would
  silently change the reference set. Longer sides are truncated to fit, and counted (the references
  used for BLEU stay whole). ``zoo predict`` input is truncated the same way; an empty line is
  translated like any other, so the output keeps one line per input line.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.data import DataLoader

from zoo.data.base import TokenizedDataModule
from zoo.data.cache import cache_key, cached_tokenizer, tokenizer_path
from zoo.data.corpus import files_digest, read_text, resolve_files
from zoo.data.pairs import ParallelExamples, TranslationCollator
from zoo.data.token_budget import TokenBudgetSampler
from zoo.data.tokenizers import load_tokenizer
from zoo.errors import check_non_negative, check_positive
from zoo.io import atomic_write

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}  # the splits a stage reads


# -- reading and tokenizing ------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    # split on "\n" only: str.splitlines() also splits at U+2028, U+0085 ..., which would misalign pairs
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.strip() for line in lines]


def read_pairs(files: list[Path]) -> tuple[list[str], list[str]]:
    """Source and target lines of two line-aligned files, or of one ``source<TAB>target`` file."""
    if len(files) == 2:
        source, target = _lines(files[0]), _lines(files[1])
        if len(source) != len(target):
            raise ValueError(
                f"{files[0]} has {len(source)} lines but {files[1]} has {len(target)}: parallel files must "
                "be line-aligned (line i of one translates line i of the other)"
            )
        return source, target
    if len(files) != 1:
        raise ValueError(f"expected [source, target] files or one TSV file, got {len(files)} files")
    source, target = [], []
    for i, line in enumerate(_lines(files[0]), start=1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{files[0]}:{i}: expected 'source<TAB>target', found {len(fields) - 1} tabs")
        source.append(fields[0].strip())
        target.append(fields[1].strip())
    return source, target


def train_joint_bpe(texts: Iterable[str], *, vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on ``texts`` (both languages), with ``<pad>``, ``<s>``, ``</s>`` as ids 0-2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _encode(tok: Tokenizer, lines: list[str], chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Flat token ids (int32) and the length of each line, encoded a chunk at a time (bounded memory)."""
    ids, lengths = [np.zeros(0, np.int32)], [np.zeros(0, np.int64)]
    for start in range(0, len(lines), chunk):
        rows = [e.ids for e in tok.encode_batch(lines[start : start + chunk], add_special_tokens=False)]
        lengths.append(np.array([len(r) for r in rows], dtype=np.int64))
        ids.append(
            np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths[-1].sum()))
        )
    return np.concatenate(ids), np.concatenate(lengths)


def _select(
    encoded: tuple[np.ndarray, np.ndarray], keep: np.ndarray, limit: int, dtype: type
) -> tuple[np.ndarray, np.ndarray]:
    """The lines where ``keep`` (N,) is set, each cut to ``limit`` tokens, as flat ids and offsets."""
    ids, lengths = encoded
    starts = np.cumsum(lengths) - lengths
    within = np.arange(len(ids)) - np.repeat(starts, lengths)  # each token's position in its line
    kept_lengths = np.minimum(lengths, limit)[keep]
    offsets = np.concatenate([[0], np.cumsum(kept_lengths)])
    return ids[np.repeat(keep, lengths) & (within < limit)].astype(dtype), offsets


# -- data module -----------------------------------------------------------------------------------
class ParallelTextDataModule(TokenizedDataModule):
    """Translation pairs for `zoo.tasks.translation.Translation`: joint BPE, length filtering,
    token-budget batches.

    ``prepare_data`` (once per node) trains or loads the tokenizer and encodes each split into a cache
    directory keyed on the files' contents, the tokenizer and ``max_seq_len``. ``setup`` (every rank)
    memory-maps them. Training batches come from `TokenBudgetSampler` (shuffled by length bucket, one
    share per rank under DDP, resumable mid-epoch); evaluation batches are cut the same way in length
    order. See the module docstring for what happens to empty and over-long lines.

    Args:
        train_files: ``[source, target]`` line-aligned files, or ``[pairs.tsv]``; paths or URLs.
        val_files: The same for validation.
        test_files: The same for ``zoo test`` (defaults to ``val_files``).
        predict_file: Source text that ``zoo predict`` translates line by line.
        tokenizer: ``"bpe"`` (a joint byte-level BPE trained on both sides of ``train_files`` and cached)
            or a path to a ``tokenizer.json`` that has ``<pad>``, ``<s>`` and ``</s>``.
        bpe_vocab_size: Vocabulary size when training ``"bpe"``.
        max_seq_len: Positions per side, the added ``</s>`` (source) or ``<s>`` (target) included.
        max_tokens: Training batch budget per device: ``batch size * longest pair`` (padding counted).
        eval_max_tokens: Validation/test batch budget (defaults to ``max_tokens``; beam search multiplies
            the decoder's rows by the beam size).
        predict_batch_size: Sentences per ``zoo predict`` batch (in file order).
        num_workers: DataLoader worker processes.
        seed: Seed of the training order (epoch ``e`` draws from ``(seed, e)``).
        cache_dir: Where the tokenizer and the encoded pairs are cached.
    """

    def __init__(
        self,
        train_files: list[str],
        val_files: list[str],
        *,
        test_files: list[str] | None = None,
        predict_file: str | None = None,
        tokenizer: str = "bpe",
        bpe_vocab_size: int = 8000,
        max_seq_len: int = 128,
        max_tokens: int = 4096,
        eval_max_tokens: int | None = None,
        predict_batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str = ".cache/zoo",
    ) -> None:
        super().__init__()
        check_positive(
            "ParallelTextDataModule",
            bpe_vocab_size=bpe_vocab_size,
            max_seq_len=max_seq_len,
            max_tokens=max_tokens,
            eval_max_tokens=eval_max_tokens,
            predict_batch_size=predict_batch_size,
        )
        check_non_negative("ParallelTextDataModule", num_workers=num_workers)
        if max_seq_len < 2 or max_tokens < max_seq_len:
            raise ValueError(f"need 2 <= max_seq_len <= max_tokens, got {max_seq_len} and {max_tokens}")
        self.train_files, self.val_files = list(train_files), list(val_files)
        self.test_files = list(test_files) if test_files else self.val_files
        self.predict_file = predict_file
        self.tokenizer_spec = tokenizer
        self.bpe_vocab_size = bpe_vocab_size
        self.max_seq_len = max_seq_len
        self.max_tokens = max_tokens
        self.eval_max_tokens = eval_max_tokens or max_tokens
        self.predict_batch_size = predict_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.cache_dir = Path(cache_dir).expanduser()
        self.datasets: dict[str, ParallelExamples] = {}
        self.stats: dict[str, dict[str, Any]] = {}

    # -- tokenizer ---------------------------------------------------------------------------------
    @property
    def pad_token_id(self) -> int:
        return self._special(PAD)

    @property
    def bos_token_id(self) -> int:
        return self._special(BOS)

    @property
    def eos_token_id(self) -> int:
        return self._special(EOS)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, special tokens left out."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _special(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"the tokenizer {self.tokenizer_spec!r} has no {token} token")
        return token_id

    def _build_tokenizer(self) -> Tokenizer:
        if self.tokenizer_spec != "bpe":
            return load_tokenizer(self.tokenizer_spec)
        files = self._files(self.train_files)
        key = cache_key(files_digest(files), self._text_tag(), f"bpe-{self.bpe_vocab_size}")
        return cached_tokenizer(
            tokenizer_path(self.cache_dir, f"joint-bpe-{self.bpe_vocab_size}", key),
            lambda: self._train_tokenizer(files),
        )

    def _train_tokenizer(self, files: list[Path]) -> Tokenizer:
        source, target = self._read(files)
        return train_joint_bpe(source + target, vocab_size=self.bpe_vocab_size)

    # -- Lightning hooks ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Train the tokenizer and encode every split into the cache (local rank 0 only)."""
        self._split_dir(self.train_files, train=True)
        for files in (self.val_files, self.test_files):
            self._split_dir(files, train=False)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            self.datasets["predict"] = self._predict_set()
            return
        files = {"train": self.train_files, "val": self.val_files, "test": self.test_files}
        for split in _SPLITS.get(stage, tuple(files)):
            directory = self._split_dir(files[split], train=split == "train")
            self.stats[split] = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
            rank_zero_info(f"{split} pairs ({', '.join(files[split])}): {self.stats[split]}")
            references = None if split == "train" else self._read(self._files(files[split]))[1]
            self.datasets[split] = _load(directory, references)

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        sampler = TokenBudgetSampler(dataset.lengths(), max_tokens=self.max_tokens, seed=self.seed)
        return self._loader(dataset, self._resumable(sampler))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self._dataset("predict"), batch_size=self.predict_batch_size, collate_fn=self.collator
        )

    @property
    def collator(self) -> TranslationCollator:
        return TranslationCollator(
            pad_token_id=self.pad_token_id, bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id
        )

    # -- what a subclass for another kind of pairs overrides (`zoo.data.summarization`) -------------
    def _read(self, files: list[Path]) -> tuple[list[str], list[str]]:
        """Source and target texts of one split's files."""
        return read_pairs(files)

    def _read_sources(self, path: Path) -> list[str]:
        """The texts ``zoo predict`` reads from ``predict_file``."""
        return _lines(path)

    @property
    def limits(self) -> tuple[int, int]:
        """Most tokens of a source and of a target, without the special tokens the collator adds."""
        return self.max_seq_len - 1, self.max_seq_len - 1  # room for </s> after the source, <s> before

    truncate_training: bool = False
    """Training pairs over the limits are dropped (translation); ``True``: truncated like evaluation's."""

    def _text_tag(self) -> str:
        """What besides the files decides the texts `_read` returns (and so the trained tokenizer)."""
        return ""

    def _cache_tag(self) -> str:
        """What besides the files and the tokenizer decides the encoded arrays."""
        return str(self.max_seq_len)

    # -- internals ---------------------------------------------------------------------------------
    def _files(self, specs: list[str]) -> list[Path]:
        return [path for spec in specs for path in resolve_files([spec], cache_dir=self.cache_dir)[:1]]

    def _dataset(self, split: str) -> ParallelExamples:
        if split not in self.datasets:
            raise RuntimeError(f"call setup() before asking for the {split} dataloader")
        return self.datasets[split]

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._dataset(split)
        sampler = TokenBudgetSampler(dataset.lengths(), max_tokens=self.eval_max_tokens, shuffle=False)
        # no draw from the global RNG between a checkpoint and the next step: a resumed run restores it
        return self._loader(dataset, sampler, generator=torch.Generator())

    def _loader(
        self, dataset: ParallelExamples, sampler: TokenBudgetSampler, generator: torch.Generator | None = None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,  # the sampler yields whole batches
            collate_fn=self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=generator,
        )

    def _split_dir(self, specs: list[str], *, train: bool) -> Path:
        files = self._files(specs)
        role = "train" if train else "eval"
        tokenizer = self.tokenizer.to_str()
        key = cache_key(files_digest(files), role, self._cache_tag(), tokenizer)
        directory = self.cache_dir / "parallel" / f"{role}-{key}"
        if not (directory / "meta.json").is_file():
            source, target = self._read(files)
            arrays, meta = _encode_split(
                files,
                source,
                target,
                self.tokenizer,
                self.limits,
                train=train,
                truncate_training=self.truncate_training,
            )
            _save(directory, arrays, meta)
        return directory

    def _predict_set(self) -> ParallelExamples:
        if self.predict_file is None:
            raise ValueError("set data.predict_file to the source text that `zoo predict` should translate")
        lines = self._read_sources(self._files([self.predict_file])[0])
        ids, lengths = _encode(self.tokenizer, lines)
        limit = self.limits[0]
        if long := int((lengths > limit).sum()):
            rank_zero_info(f"{long} of {len(lines)} lines of {self.predict_file} truncated to {limit} tokens")
        return ParallelExamples(_select((ids, lengths), np.ones(len(lines), dtype=bool), limit, np.int32))


def _encode_split(
    files: list[Path],
    source: list[str],
    target: list[str],
    tok: Tokenizer,
    limits: tuple[int, int],
    *,
    train: bool,
    truncate_training: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Encode pairs: training drops empty pairs and (unless ``truncate_training``) pairs over the
    ``(source, target)`` token ``limits``, evaluation refuses empty lines; what is kept is truncated to the
    limits. Returns the arrays and counts."""
    meta: dict[str, Any] = {"files": [str(f) for f in files], "pairs": len(source)}
    empty = [i for i, (s, t) in enumerate(zip(source, target)) if not s or not t]
    if empty and not train:
        i = empty[0]
        where = files[1] if len(files) == 2 and source[i] else files[0]
        side = "target" if source[i] else "source"
        raise ValueError(
            f"{where}:{i + 1}: empty {side} line ({len(empty)} in all) in an evaluation set; evaluation "
            "pairs are never dropped, so that the references stay whole: fix the file"
        )
    src, tgt = _encode(tok, source), _encode(tok, target)
    keep = np.ones(len(source), dtype=bool)
    keep[empty] = False
    src_limit, tgt_limit = limits
    too_long = (src[1] > src_limit) | (tgt[1] > tgt_limit)
    if train and not truncate_training:
        meta |= {"dropped_empty": len(empty), "dropped_too_long": int((too_long & keep).sum())}
        keep &= ~too_long
    else:
        meta |= {"dropped_empty": len(empty)} if train else {}
        meta |= {
            "truncated_sources": int(((src[1] > src_limit) & keep).sum()),
            "truncated_targets": int(((tgt[1] > tgt_limit) & keep).sum()),
        }
    dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.int32
    (src_ids, src_offsets), (tgt_ids, tgt_offsets) = (
        _select(src, keep, src_limit, dtype),
        _select(tgt, keep, tgt_limit, dtype),
    )
    meta |= {"kept": int(keep.sum()), "source_tokens": len(src_ids), "target_tokens": len(tgt_ids)}
    return dict(source=src_ids, source_offsets=src_offsets, target=tgt_ids, target_offsets=tgt_offsets), meta


def _save(directory: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write ``{name}.npy`` files, each through a temporary file and a rename, then ``meta.json``, whose
    presence marks the directory complete."""
    for name, array in arrays.items():
        atomic_write(directory / f"{name}.npy", lambda f, array=array: np.save(f, array))
    atomic_write(directory / "meta.json", json.dumps(meta, indent=1))


def _load(directory: Path, references: list[str] | None) -> ParallelExamples:
    def load(name: str) -> np.ndarray:
        return np.load(directory / f"{name}.npy", mmap_mode="r")

    return ParallelExamples(
        (load("source"), load("source_offsets")), (load("target"), load("target_offsets")), references
    )
