"""BERT pretraining data: documents to ``[CLS] A [SEP] B [SEP]`` pairs for masked-LM and next-sentence loss.

The pieces live in their own modules: `zoo.data.documents` reads the documents, `zoo.data.nsp` builds the
instances (Google's way, with its one deviation), `zoo.data.fill_mask` reads and writes ``zoo predict``'s
fill-mask files, `zoo.data.cache` keys the cached tokenizer and instances. This module holds what joins
them: the validation hold-out, the dataset of cached instances and `BertPretrainingDataModule`. Every
random choice comes from a generator seeded by ``(seed, split, pass, document)``, so the same settings
always give the same instances.

Masking is not done here but per batch, by `zoo.data.masking.MLMCollator`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import TokenizedDataModule
from zoo.data.cache import cache_key, cached_tokenizer, tokenizer_path
from zoo.data.collate import pad_batch
from zoo.data.corpus import files_digest, resolve_files
from zoo.data.documents import DocumentFormat, read_documents, split_sentences
from zoo.data.fill_mask import FILL_MASK_COLUMNS, FillMaskLine, format_fill_mask, read_fill_mask_file
from zoo.data.labelled import Examples
from zoo.data.masking import MLMCollator, PackedMLMCollator, check_mlm_probability
from zoo.data.nsp import NSP_OFF, create_instances
from zoo.data.resumable import EpochSampler
from zoo.data.wordpiece import load_wordpiece, special_token_ids, train_wordpiece
from zoo.errors import check_non_negative, check_positive, check_probability
from zoo.io import atomic_directory

__all__ = [
    "BertPretrainingDataModule",
    "EpochSampler",
    "PretrainingExamples",
    "create_instances",
    "format_fill_mask",
    "read_documents",
    "read_fill_mask_file",
    "split_sentences",
]

_SPLIT, _TRAIN, _VAL = 0, 1, 2  # seed streams


# -- datasets --------------------------------------------------------------------------------------
class PretrainingExamples(Dataset):
    """Instances from `create_instances`, as examples for `zoo.data.masking.MLMCollator`.

    A key is an index or an ``(epoch, index)`` pair (what `EpochSampler` yields); the epoch travels
    with the example so the collator can draw that epoch's mask.
    """

    def __init__(
        self,
        input_ids: np.ndarray,
        offsets: np.ndarray,
        segment_a_lengths: np.ndarray,
        next_sentence_labels: np.ndarray | None = None,
    ) -> None:
        self.input_ids = input_ids
        self.offsets = offsets
        self.segment_a_lengths = segment_a_lengths
        self.next_sentence_labels = next_sentence_labels

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} out of range for {len(self)} examples")
        ids = torch.from_numpy(self.input_ids[self.offsets[index] : self.offsets[index + 1]].astype(np.int64))
        token_type_ids = torch.zeros_like(ids)
        token_type_ids[int(self.segment_a_lengths[index]) :] = 1
        example = {"input_ids": ids, "token_type_ids": token_type_ids, "index": index, "epoch": epoch}
        if self.next_sentence_labels is not None:
            example["next_sentence_label"] = int(self.next_sentence_labels[index])
        return example


# -- data module -----------------------------------------------------------------------------------
class BertPretrainingDataModule(TokenizedDataModule):
    """Masked-LM (+ next-sentence) pretraining data from text files.

    ``prepare_data`` (once per node) builds or loads the WordPiece tokenizer, reads and tokenizes the
    documents, holds out a share of them for validation and writes the instances of both splits to a
    cache directory keyed on the files' contents, the tokenizer and every setting that shapes them.
    ``setup`` (every rank) memory-maps them. Training batches are shuffled by `EpochSampler`
    (one share per rank under DDP) and masked afresh every epoch by `MLMCollator`; validation
    masks are the same at every evaluation.

    ``zoo predict`` fills the ``[MASK]`` tokens of ``predict_file`` (one sentence per line, blank lines
    skipped) and, through `zoo.tasks.callbacks.PredictionWriter`, writes tab-separated rows ``line, mask,
    token, word, probability`` (`format_prediction`), the model's ``top_k`` fillers per mask, most likely
    first. It needs only the tokenizer, not the pretraining instances.

    Args:
        files: Training corpus: paths, globs, ``stdlib:GLOB`` or URLs (see
            `zoo.data.corpus.resolve_files`).
        val_files: Separate validation files; when ``None`` a ``val_fraction`` of the documents is held out.
        val_fraction: Share of documents held out for validation when ``val_files`` is not given.
        document_format: How files split into documents and lines; see `zoo.data.documents.read_documents`.
        split_lines: Cut every line into sentences (for paragraph-per-line text such as WikiText), so
            segments A and B can end mid-paragraph.
        tokenizer: ``"wordpiece"`` (trained on ``files`` and cached) or a path to a ``vocab.txt``, a
            ``tokenizer.json`` or their directory.
        wordpiece_vocab_size: Vocabulary size when training the tokenizer.
        lowercase: Lowercase (and strip accents) when training the tokenizer.
        max_seq_len: Longest instance, special tokens included (128 in BERT's first phase).
        nsp: Build sentence pairs with next-sentence labels; ``False`` gives single segments (RoBERTa).
        short_seq_prob: Probability that a document's instances aim at a random shorter length.
        dupe_factor: Passes over the training documents, each cutting them differently.
        mlm_probability: Share of non-special tokens chosen as masked-LM targets.
        whole_word_masking: Choose whole words (a piece and its ``##`` continuations) together.
        pad_to_multiple_of: Pad batches to a multiple of this length (``None``: the longest example).
        batch_size: Training batch size per device (instances per step, whatever the ``batching``).
        batching: ``padded``: one instance per row, padded to the longest of the batch. ``packed``: the
            training instances of a batch share rows (`zoo.data.masking.PackedMLMCollator`): the short
            ones (``short_seq_prob``, a document's last pair) fill each other's padding; the model keeps
            them apart, so the losses are those of the padded batch. Evaluation batches are padded.
        eval_batch_size: Validation/test/predict batch size (defaults to ``batch_size``).
        num_workers: DataLoader worker processes.
        seed: Seeds the validation split, the instances, the shuffling and the masks.
        cache_dir: Where tokenizers and instances are cached.
        predict_file: Sentences for ``zoo predict`` to fill, one per line, each with one or more
            ``[MASK]`` tokens; a line without one is an error naming ``file:line``.
    """

    def __init__(
        self,
        files: list[str],
        *,
        val_files: list[str] | None = None,
        val_fraction: float = 0.05,
        document_format: DocumentFormat = "auto",
        split_lines: bool = False,
        tokenizer: str = "wordpiece",
        wordpiece_vocab_size: int = 8192,
        lowercase: bool = True,
        max_seq_len: int = 128,
        nsp: bool = True,
        short_seq_prob: float = 0.1,
        dupe_factor: int = 5,
        mlm_probability: float = 0.15,
        whole_word_masking: bool = False,
        pad_to_multiple_of: int | None = 8,
        batch_size: int = 32,
        batching: Literal["padded", "packed"] = "padded",
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str = ".cache/zoo",
        predict_file: str | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_positive(
            owner,
            wordpiece_vocab_size=wordpiece_vocab_size,
            max_seq_len=max_seq_len,
            dupe_factor=dupe_factor,
            pad_to_multiple_of=pad_to_multiple_of,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
        )
        check_non_negative(owner, num_workers=num_workers)
        check_probability(owner, short_seq_prob=short_seq_prob)
        check_mlm_probability(owner, mlm_probability)
        if val_files is None and not 0.0 < val_fraction < 1.0:
            raise ValueError(f"{owner}: val_fraction must be in (0, 1), got {val_fraction!r}")
        if document_format not in get_args(DocumentFormat):
            raise ValueError(
                f"{owner}: document_format must be one of {get_args(DocumentFormat)}, got {document_format!r}"
            )
        if max_seq_len < 5:
            raise ValueError(f"{owner}: max_seq_len={max_seq_len} leaves no room for [CLS] A [SEP] B [SEP]")
        self.files = list(files)
        self.val_files = list(val_files) if val_files else None
        self.val_fraction = val_fraction
        self.document_format = document_format
        self.split_lines = split_lines
        self.tokenizer_spec = tokenizer
        self.wordpiece_vocab_size = wordpiece_vocab_size
        self.lowercase = lowercase
        self.max_seq_len = max_seq_len
        self.nsp = nsp
        self.short_seq_prob = short_seq_prob
        self.dupe_factor = dupe_factor
        self.mlm_probability = mlm_probability
        self.whole_word_masking = whole_word_masking
        self.pad_to_multiple_of = pad_to_multiple_of
        self.batch_size = batch_size
        self.batching = batching
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.cache_dir = Path(cache_dir).expanduser()
        self.predict_file = predict_file
        self.train_set: PretrainingExamples | None = None
        self.val_set: PretrainingExamples | None = None
        self.predict_lines: list[FillMaskLine] | None = None

    @property
    def collator(self) -> MLMCollator:
        """The collator of evaluation batches (padded rows; training batches follow ``batching``)."""
        return self._collator(MLMCollator)

    def _collator(self, kind: type[MLMCollator]) -> MLMCollator:
        return kind.from_tokenizer(
            self.tokenizer,
            mlm_probability=self.mlm_probability,
            whole_word=self.whole_word_masking,
            pad_to_multiple_of=self.pad_to_multiple_of if kind is MLMCollator else None,
            max_length=self.max_seq_len,
            seed=self.seed,
        )

    def prepare_data(self) -> None:
        """Build the tokenizer and both splits' instances into the cache (local rank 0 only); only the
        tokenizer for ``zoo predict``."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.state.fn == "predict":
            _ = self.tokenizer
            return
        self._instance_dir()

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            if self.predict_file is None:
                raise ValueError(
                    "zoo predict needs data.init_args.predict_file: sentences with [MASK] to fill"
                )
            self.predict_lines = read_fill_mask_file(
                Path(self.predict_file).expanduser(), self.tokenizer, max_seq_len=self.max_seq_len
            )
            return
        directory = self._instance_dir()
        self.train_set, self.val_set = (_load_examples(directory, split) for split in ("train", "val"))

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_set)
        sampler = self._resumable(EpochSampler(dataset, batch_size=self.batch_size, seed=self.seed))
        collator = self._collator(PackedMLMCollator if self.batching == "packed" else MLMCollator)
        return self._loader(dataset, self.batch_size, sampler=sampler, drop_last=True, collator=collator)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_set), self.eval_batch_size, sampler=None, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Batches of ``predict_file`` sentences in file order: ``input_ids``, ``attention_mask``,
        ``token_type_ids``, ``fill_positions`` (all (B, T); 1 at the masks) and ``index`` (B,)."""
        if self.predict_lines is None:
            raise RuntimeError("call setup('predict') before asking for the predict dataloader")
        ids = special_token_ids(self.tokenizer)
        items = []
        for n, line in enumerate(self.predict_lines):
            fill = [int(i == ids["mask"]) for i in line.input_ids]
            items.append({"input_ids": line.input_ids, "fill_positions": fill, "index": n})
        collate = functools.partial(pad_batch, pad_token_id=ids["pad"], sequence_keys={"fill_positions": 0})
        return DataLoader(
            Examples(items),
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=collate,
            num_workers=self.num_workers,
        )

    def format_prediction(self, index: int, prediction: Sequence[Sequence[tuple[int, float]]]) -> str:
        """Rows for sentence ``index`` of ``predict_file`` (see `zoo.data.fill_mask.format_fill_mask`):
        per mask, the ``(token id, probability)`` pairs of ``MaskedLM.predict_step``. Sentence 0 starts
        with the header row ``line mask token word probability``."""
        if self.predict_lines is None:
            raise RuntimeError("call setup('predict') before formatting predictions")
        rows = format_fill_mask(self.predict_lines[index], prediction, self.tokenizer)
        return ("\t".join(FILL_MASK_COLUMNS) + "\n" if index == 0 else "") + rows

    # -- internals ---------------------------------------------------------------------------------
    def _documents(self, specs: list[str]) -> list[list[str]]:
        documents = []
        for path in resolve_files(specs, cache_dir=self.cache_dir):
            for document in read_documents(path, self.document_format):
                lines = (
                    [s for line in document for s in split_sentences(line)] if self.split_lines else document
                )
                documents.append(lines)
        if not documents:
            raise ValueError(f"no text found in {specs}: every line is blank")
        return documents

    def _build_tokenizer(self) -> Tokenizer:
        if self.tokenizer_spec != "wordpiece":
            return load_wordpiece(self.tokenizer_spec)
        files = resolve_files(self.files, cache_dir=self.cache_dir)
        settings = (self.document_format, self.split_lines, self.wordpiece_vocab_size, self.lowercase)
        path = tokenizer_path(
            self.cache_dir,
            f"wordpiece-{self.wordpiece_vocab_size}",
            cache_key(files_digest(files), repr(settings)),
        )
        return cached_tokenizer(path, self._train_tokenizer)

    def _train_tokenizer(self) -> Tokenizer:
        sentences = (s for d in self._documents(self.files) for s in d)
        return train_wordpiece(sentences, vocab_size=self.wordpiece_vocab_size, lowercase=self.lowercase)

    def _instance_dir(self) -> Path:
        files = resolve_files(self.files, cache_dir=self.cache_dir)
        val = files_digest(resolve_files(self.val_files, cache_dir=self.cache_dir)) if self.val_files else ""
        settings = (
            self.document_format, self.split_lines, self.val_fraction, self.max_seq_len, self.nsp,
            self.short_seq_prob, self.dupe_factor, self.seed,
        )  # fmt: skip
        key = cache_key(files_digest(files), val, repr(settings), self.tokenizer.to_str())
        directory = self.cache_dir / "bert-pretraining" / key
        if not (directory / "meta.json").is_file():
            self._write_instances(directory)
        return directory

    def _write_instances(self, directory: Path) -> None:
        train_docs = _tokenize(self._documents(self.files), self.tokenizer)
        if self.val_files:
            val_docs = _tokenize(self._documents(self.val_files), self.tokenizer)
        else:
            min_docs = 2 if self.nsp else 1
            try:
                train_docs, val_docs = _hold_out(
                    train_docs, self.val_fraction, min_docs=min_docs, seed=self.seed
                )
            except ValueError as err:
                raise ValueError(f"{', '.join(self.files)}: {err}") from err
        splits = {
            "train": self._split_instances("train", train_docs, _TRAIN, self.dupe_factor),
            "val": self._split_instances("val", val_docs, _VAL, 1),
        }
        meta = {"files": self.files, "val_files": self.val_files}
        meta |= {
            split: _summary(docs, splits[split]) for split, docs in (("train", train_docs), ("val", val_docs))
        }
        _save_atomically(directory, splits, meta)
        rank_zero_info(f"BERT pretraining instances in {directory}: {json.dumps(meta)}")

    def _split_instances(
        self, split: str, documents: list[list[np.ndarray]], stream: int, dupe_factor: int
    ) -> dict[str, np.ndarray]:
        ids = special_token_ids(self.tokenizer)
        try:
            arrays = create_instances(
                documents,
                max_seq_len=self.max_seq_len,
                cls_id=ids["cls"],
                sep_id=ids["sep"],
                nsp=self.nsp,
                short_seq_prob=self.short_seq_prob,
                dupe_factor=dupe_factor,
                seed=(self.seed, stream),
            )
        except ValueError as err:
            files = self.val_files if split == "val" and self.val_files else self.files
            raise ValueError(f"{', '.join(files)} ({split} split): {err}") from err
        dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.int32
        return {**arrays, "input_ids": arrays["input_ids"].astype(dtype)}

    def _loader(
        self, dataset: Dataset, batch_size: int, *, sampler: Any, drop_last: bool, collator: Any = None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=collator or self.collator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),  # worker seeds never draw from the global RNG
        )

    @staticmethod
    def _require(dataset: PretrainingExamples | None) -> PretrainingExamples:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        return dataset


def _tokenize(documents: list[list[str]], tokenizer: Tokenizer) -> list[list[np.ndarray]]:
    """Encode every line; lines that encode to nothing and documents left empty are dropped."""
    lines = [line for document in documents for line in document]
    encoded: list[np.ndarray] = []
    for start in range(0, len(lines), 10_000):
        batch = tokenizer.encode_batch(lines[start : start + 10_000], add_special_tokens=False)
        encoded.extend(np.asarray(e.ids, dtype=np.int64) for e in batch)
    out, position = [], 0
    for document in documents:
        sentences = [s for s in encoded[position : position + len(document)] if len(s)]
        position += len(document)
        if sentences:
            out.append(sentences)
    return out


def _hold_out(
    documents: list[list[np.ndarray]], fraction: float, *, min_docs: int, seed: int
) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """(train, validation): a seeded random ``fraction`` of the documents (at least ``min_docs``)."""
    n_val = max(min_docs, round(len(documents) * fraction))
    if len(documents) - n_val < min_docs:
        raise ValueError(
            f"{len(documents)} documents cannot give {min_docs}+ training and {n_val} validation documents; "
            "add documents, lower val_fraction or pass val_files"
            + ("" if min_docs == 1 else f" (or {NSP_OFF})")
        )
    held_out = set(np.random.default_rng((seed, _SPLIT)).permutation(len(documents))[:n_val].tolist())
    train = [d for i, d in enumerate(documents) if i not in held_out]
    return train, [d for i, d in enumerate(documents) if i in held_out]


def _summary(documents: list[list[np.ndarray]], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    labels = arrays.get("next_sentence_labels")
    return {
        "documents": len(documents),
        "sentences": sum(len(d) for d in documents),
        "instances": len(arrays["offsets"]) - 1,
        "tokens": int(arrays["offsets"][-1]),
        "random_next_share": round(float(labels.mean()), 4) if labels is not None and len(labels) else None,
    }


def _save_atomically(directory: Path, splits: dict[str, dict[str, np.ndarray]], meta: dict[str, Any]) -> None:
    """Write ``{split}-{name}.npy`` files and ``meta.json`` into a temporary directory, then rename it; a
    directory that another process completed first is kept (`zoo.io.atomic_directory`)."""
    with atomic_directory(directory, replace=False) as tmp:
        for split, arrays in splits.items():
            for name, array in arrays.items():
                np.save(tmp / f"{split}-{name}.npy", array)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")


def _load_examples(directory: Path, split: str) -> PretrainingExamples:
    def load(name: str) -> np.ndarray:
        return np.load(directory / f"{split}-{name}.npy", mmap_mode="r")

    labels = directory / f"{split}-next_sentence_labels.npy"
    return PretrainingExamples(
        load("input_ids"),
        load("offsets"),
        load("segment_a_lengths"),
        np.load(labels, mmap_mode="r") if labels.is_file() else None,
    )
