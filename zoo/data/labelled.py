"""What the fine-tuning data modules share: a pretrained model's tokenizer, a label vocabulary built from
the training file and saved with checkpoints, resumable training batches (length-bucketed, random or
packed), and dynamic padding."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import TokenizedDataModule
from zoo.data.collate import pack_batch, pad_batch
from zoo.data.corpus import read_text
from zoo.data.resumable import ResumableSampler
from zoo.data.tokenizers import load_tokenizer
from zoo.data.wordpiece import load_wordpiece
from zoo.errors import check_non_negative, check_positive
from zoo.models.hf_io import resolve_model_dir
from zoo.models.pretrained import is_gguf

__all__ = ["Batching", "Examples", "LabelledDataModule", "LengthBucketSampler", "pack_batch", "pad_batch"]

Batching = Literal["bucketed", "padded", "packed"]
"""How training examples become batches (see `LabelledDataModule`)."""

_PAD_TOKENS = ("[PAD]", "<pad>", "<|endoftext|>")


def load_pretrained_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a pretrained model: a BERT ``vocab.txt`` (or a model directory with one), any
    ``tokenizer.json``, GPT-2's ``vocab.json`` + ``merges.txt``, or a model named as for
    `zoo.models.hf_io.resolve_model_dir` (``python:<package>``, a Hub name). Padding and truncation
    stored in the file are switched off. A GGUF model file as `zoo.data.tokenizers.load_tokenizer`."""
    p = Path(path).expanduser()
    if not p.exists() and not is_gguf(path):  # python:<package> or a Hub name
        p = resolve_model_dir(path)
    if is_gguf(path):
        return load_tokenizer(path)
    if p.name == "vocab.txt" or (p.is_dir() and (p / "vocab.txt").is_file()):
        return load_wordpiece(p)
    return load_tokenizer(p)


def pad_token_id(tokenizer: Tokenizer) -> int:
    """Id used to pad batches: ``[PAD]``, ``<pad>`` or ``<|endoftext|>`` (masked out anyway), else 0."""
    for token in _PAD_TOKENS:
        index = tokenizer.token_to_id(token)
        if index is not None:
            return index
    return 0


def read_lines(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a plain ``.txt`` file (one example per line), as ``(line_number, text)``
    pairs; blank lines are skipped.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not UTF-8 (the message gives the byte offset).
    """
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    lines = read_text(path).split("\n")
    return [(number, line.rstrip("\r")) for number, line in enumerate(lines, start=1) if line.strip()]


class Examples(Dataset):
    """A list of encoded examples (dicts of lists / numbers)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


class LengthBucketSampler(ResumableSampler):
    """A `ResumableSampler` whose consecutive ``batch_size`` indices have similar lengths, so dynamic
    padding wastes little: each epoch's shuffled share is cut into pools of ``pool_batches`` batches,
    each pool sorted by length and cut into batches, and the batches are shuffled (a short last batch
    stays last). Deterministic per (seed, epoch); resumes mid-epoch like its base.

    Args:
        dataset: The map-style dataset.
        lengths: Length of every example, in dataset order.
        pool_batches: Batches per sorting pool (larger: less padding, less randomness).
        **kwargs: Other arguments: `ResumableSampler` (forwarded): ``batch_size`` (required), ``seed``
            (epoch ``e`` uses ``seed + e``), ``num_replicas``, ``rank``.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        lengths: Sequence[int],
        pool_batches: int = 50,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, shuffle=True, **kwargs)
        self.lengths = lengths
        self.pool_batches = pool_batches

    def epoch_indices(self) -> list[int]:
        indices = super().epoch_indices()
        bs, pool = self.batch_size, self.batch_size * self.pool_batches
        batches: list[list[int]] = []
        for start in range(0, len(indices), pool):
            part = sorted(indices[start : start + pool], key=lambda i: self.lengths[i])
            batches += [part[j : j + bs] for j in range(0, len(part), bs)]
        tail = [batches.pop()] if batches and len(batches[-1]) < bs else []
        generator = torch.Generator().manual_seed(self.seed + self.epoch + 1)
        order = torch.randperm(len(batches), generator=generator).tolist()
        return [i for b in order for i in batches[b]] + [i for batch in tail for i in batch]


class LabelledDataModule(TokenizedDataModule):
    """Base class of the fine-tuning data modules.

    Subclasses implement ``_read_labels(path)`` (the label strings of the training file), ``_encode(path,
    stage)`` (a list of encoded examples) and ``format_prediction(index, prediction)``.

    Args:
        tokenizer: The pretrained model's tokenizer (see `load_pretrained_tokenizer`).
        train_file: Labelled training file; its labels make the label set.
        val_file: Labelled validation file; a label absent from ``train_file`` is an error (``path:line``).
        test_file: Labelled test file, checked like ``val_file``.
        predict_file: File to predict; it may lack labels.
        max_seq_len: Longest encoded example (special tokens included); longer ones are truncated and
            counted in the log.
        batch_size: Training batch size (examples per step, whatever the ``batching``).
        batching: How training batches are cut and laid out. ``bucketed``: examples of similar length
            batched together (`LengthBucketSampler`), each padded to the longest of its batch.
            ``padded``: random batches, each padded to its longest example (what Hugging Face's
            ``DataCollatorWithPadding`` does). ``packed``: random batches whose examples share rows
            (`zoo.data.collate.pack_batch`: no padding between them; the backbone keeps them apart, so
            every example gets the loss it gets alone). Evaluation batches are always padded, in file
            order.
        eval_batch_size: Batch size for validation, test and prediction (default: ``2 * batch_size``).
        seed: Shuffling seed.
        num_workers: DataLoader workers.

    Raises:
        ValueError: A size that is not a positive integer, or negative ``num_workers`` (the message
            names the argument).
    """

    def __init__(
        self,
        *,
        tokenizer: str,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        max_seq_len: int = 128,
        batch_size: int = 32,
        batching: Batching = "bucketed",
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        owner = type(self).__name__
        check_positive(owner, max_seq_len=max_seq_len, batch_size=batch_size, eval_batch_size=eval_batch_size)
        check_non_negative(owner, num_workers=num_workers)
        super().__init__()
        self.tokenizer_spec = tokenizer
        self.files = {"fit": train_file, "validate": val_file, "test": test_file, "predict": predict_file}
        self.max_seq_len = max_seq_len
        self.batch_size = batch_size
        self.batching = batching
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.seed = seed
        self.num_workers = num_workers
        self._labels: list[str] | None = None
        self._label_index: dict[str, int] | None = None
        self._datasets: dict[str, Examples] = {}

    # -- labels -------------------------------------------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        """The label vocabulary (index = label id), built from ``train_file`` or restored from a
        checkpoint; linked to the model's ``label_names`` by the CLI."""
        if self._labels is None:
            train = self.files["fit"]
            if train is None:
                raise ValueError("train_file is needed to build the label set (or restore a checkpoint)")
            self._labels = self._read_labels(Path(train))
            if not self._labels:
                raise ValueError(f"{train}: no labels found")
        return self._labels

    @property
    def num_labels(self) -> int:
        """Number of labels; linked to the model's ``num_labels`` by the CLI."""
        return len(self.label_names)

    def label_id(self, label: str, where: str) -> int:
        """Id of ``label``; an unknown one names the place it came from and the known set."""
        index = self._label_index
        if index is None:
            index = self._label_index = {name: i for i, name in enumerate(self.label_names)}
        if label not in index:
            more = " ..." if len(self.label_names) > 20 else ""
            raise ValueError(
                f"{where}: label {label!r} is not in the training label set {self.label_names[:20]}{more}"
            )
        return index[label]

    def _read_labels(self, path: Path) -> list[str]:
        raise NotImplementedError

    # -- tokenizer, stages --------------------------------------------------------------------------
    def _build_tokenizer(self) -> Tokenizer:
        return load_pretrained_tokenizer(self.tokenizer_spec)

    @property
    def pad_token_id(self) -> int:
        return pad_token_id(self.tokenizer)

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ["fit", "validate"],
            "validate": ["validate"],
            "test": ["test"],
            "predict": ["predict"],
        }
        for split in wanted.get(stage or "fit", ["fit", "validate"]):
            path = self.files[split]
            if path is not None and split not in self._datasets:
                examples = self._encode(Path(path), split)
                if not examples:
                    raise ValueError(f"{path}: no examples")
                self._datasets[split] = Examples(examples)
                truncated = sum(bool(e.get("truncated")) for e in examples)
                rank_zero_info(
                    f"{path}: {len(examples)} examples, {truncated} truncated to "
                    f"max_seq_len={self.max_seq_len}"
                )

    def _encode(self, path: Path, split: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def format_prediction(self, index: int, prediction: Any) -> str:
        """The text ``zoo predict`` writes for example ``index`` of the predict file."""
        raise NotImplementedError

    # -- loaders ------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        dataset = self._require("fit")
        if self.batching == "bucketed":
            lengths = [len(item["input_ids"]) for item in dataset.items]
            sampler = LengthBucketSampler(
                dataset, lengths=lengths, batch_size=self.batch_size, seed=self.seed
            )
        else:
            sampler = ResumableSampler(dataset, batch_size=self.batch_size, seed=self.seed)
        collate = pack_batch if self.batching == "packed" else pad_batch
        return self._loader(dataset, self.batch_size, self._resumable(sampler), collate=collate)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require("validate"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._require("test"), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._require("predict"), self.eval_batch_size)

    def _require(self, split: str) -> Examples:
        if split not in self._datasets:
            name = {"fit": "train_file", "validate": "val_file", "test": "test_file"}.get(
                split, "predict_file"
            )
            raise ValueError(f"no {name} given for this stage")
        return self._datasets[split]

    sequence_keys: dict[str, int] = {}
    """Per-token keys of the encoded examples and their padding values (set by subclasses)."""

    def _loader(
        self, dataset: Examples, batch_size: int, sampler: Any = None, collate: Any = pad_batch
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=functools.partial(
                collate, pad_token_id=self.pad_token_id, sequence_keys=self.sequence_keys
            ),
        )

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "labels": list(self.label_names)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = state_dict.get("labels")
        if saved is None:
            return
        if self.files["fit"] is not None and list(saved) != self.label_names:
            raise ValueError(
                f"the checkpoint's labels {saved[:10]} differ from those of {self.files['fit']} "
                f"{self.label_names[:10]}; use the training file the checkpoint was trained on"
            )
        self._labels = list(saved)
        self._label_index = None
