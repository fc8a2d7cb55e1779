"""BERT pretraining data: documents to ``[CLS] A [SEP] B [SEP]`` pairs for masked-LM and next-sentence loss.

Instances are built the way Google's ``create_pretraining_data.py`` builds them: consecutive sentences of
one document fill a target length (shorter with probability ``short_seq_prob``), are cut into segment A
and B, and half the time B is replaced by a span of a different document (``next_sentence_label`` 1,
Hugging Face's convention; 0 means B really follows A). ``dupe_factor`` passes over the corpus give
differently cut instances. Every random choice comes from a generator seeded by
``(seed, split, pass, document)``, so the same settings always give the same instances.

One deviation keeps the labels balanced: in Google's script a chunk of one sentence can only get a
random B, which tilts the labels towards "random" (54-57% on UD EWT + WikiText at 128-64 tokens). Here a
chunk is not cut while it holds one sentence, nor when that would leave a document's last sentence alone,
and a lone sentence that remains (a one-sentence document, or the last sentence put back after a random
B) is left out of that pass. The random share is in the cache's ``meta.json``.

Masking is not done here but per batch, by `zoo.data.masking.MLMCollator`.

``zoo predict`` fills masks in the sentences of ``predict_file`` (see `read_fill_mask_file` and
`BertPretrainingDataModule.format_prediction`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from zoo.data.base import TokenizedDataModule
from zoo.data.cache import cache_key, cached_tokenizer, tokenizer_path
from zoo.data.collate import pad_batch
from zoo.data.corpus import files_digest, read_text, resolve_files
from zoo.data.labelled import Examples
from zoo.data.masking import MLMCollator, PackedMLMCollator, check_mlm_probability
from zoo.data.resumable import ResumableSampler
from zoo.data.wordpiece import CONTINUING_SUBWORD_PREFIX, load_wordpiece, special_token_ids, train_wordpiece
from zoo.errors import check_non_negative, check_positive, check_probability
from zoo.io import atomic_directory

DocumentFormat = Literal["auto", "blank_lines", "wikitext", "conllu"]
_SPLIT, _TRAIN, _VAL = 0, 1, 2  # seed streams
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z])")
_WIKITEXT_MARKUP = {" @-@ ": "-", " @,@ ": ",", " @.@ ": ".", "<unk>": "[UNK]"}


# -- documents -------------------------------------------------------------------------------------
def read_documents(path: Path, document_format: DocumentFormat = "auto") -> list[list[str]]:
    """The documents of one file, each a list of lines (sentences or paragraphs).

    Formats: ``blank_lines`` (a blank line ends a document); ``wikitext`` (WikiText's `` = Title = ``
    lines start documents, `` = = Section = = `` lines are dropped, blank lines ignored, ``@-@`` markup
    undone and ``<unk>`` read as ``[UNK]``); ``conllu`` (``# newdoc`` starts a document, ``# text = ...``
    gives a sentence). ``auto`` picks ``conllu`` for ``*.conllu``, ``wikitext`` for ``*.tokens``, else
    ``blank_lines``.
    """
    if document_format == "auto":
        document_format = {".conllu": "conllu", ".tokens": "wikitext"}.get(path.suffix, "blank_lines")
    text = read_text(path)
    if document_format == "conllu":
        return _conllu_documents(text)
    if document_format == "wikitext":
        return _wikitext_documents(text)
    if document_format == "blank_lines":
        return _split_documents((line.strip() for line in text.splitlines()), lambda line: not line)
    raise ValueError(
        f"unknown document_format {document_format!r}; choose auto, blank_lines, wikitext, conllu"
    )


def _split_documents(lines: Iterator[str], starts_document: Callable[[str], bool]) -> list[list[str]]:
    documents: list[list[str]] = [[]]
    for line in lines:
        if starts_document(line):
            documents.append([])
        elif line:
            documents[-1].append(line)
    return [d for d in documents if d]


def _wikitext_documents(text: str) -> list[list[str]]:
    def clean(line: str) -> str:
        if line.startswith("= ="):  # section heading
            return ""
        for markup, plain in _WIKITEXT_MARKUP.items():
            line = line.replace(markup, plain)
        return line

    lines = (clean(line.strip()) for line in text.splitlines())
    return _split_documents(lines, lambda line: line.startswith("= ") and line.endswith(" ="))


def _conllu_documents(text: str) -> list[list[str]]:
    lines = (
        line.split("=", 1)[1].strip() if line.startswith("# text =") else line
        for line in text.splitlines()
        if line.startswith(("# text =", "# newdoc"))
    )
    return _split_documents(lines, lambda line: line.startswith("# newdoc"))


def split_sentences(line: str) -> list[str]:
    """Cut a paragraph after ``.``, ``!`` or ``?`` followed by a capitalised word (a cheap heuristic)."""
    return [s for s in _SENTENCE_END.split(line) if s.strip()]


# -- instances -------------------------------------------------------------------------------------
_NSP_OFF = "turn next-sentence prediction off (nsp: false on both data.init_args and model.init_args)"


def create_instances(
    documents: Sequence[Sequence[np.ndarray]],
    *,
    max_seq_len: int,
    cls_id: int,
    sep_id: int,
    nsp: bool = True,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    seed: int | Sequence[int] = 0,
) -> dict[str, np.ndarray]:
    """Pretraining instances from tokenized documents (lists of sentences of token ids).

    Returns flat arrays: ``input_ids`` (all instances concatenated), ``offsets`` (N+1 boundaries),
    ``segment_a_lengths`` (positions of ``[CLS] A [SEP]``; the rest is segment B) and, with ``nsp``,
    ``next_sentence_labels`` (N,). Without ``nsp`` an instance is ``[CLS] A [SEP]`` with A filling the
    target length (RoBERTa's doc-sentences input).
    """
    if nsp and len(documents) < 2:
        raise ValueError(
            f"next-sentence prediction needs at least 2 documents (a random B must come from another "
            f"document) but got {len(documents)}; add documents or {_NSP_OFF}"
        )
    seed = (seed,) if isinstance(seed, int) else tuple(seed)
    max_tokens = max_seq_len - 3 if nsp else max_seq_len - 2
    pieces: list[np.ndarray] = []
    lengths, a_lengths, labels = [], [], []
    cls, sep = np.array([cls_id]), np.array([sep_id])
    for dupe in range(dupe_factor):
        for index in range(len(documents)):
            rng = np.random.default_rng((*seed, dupe, index))
            for a, b, is_random in _document_instances(
                documents, index, rng, max_tokens, short_seq_prob, nsp
            ):
                parts = [cls, a, sep] if b is None else [cls, a, sep, b, sep]
                pieces.extend(parts)
                lengths.append(sum(len(p) for p in parts))
                a_lengths.append(len(a) + 2)
                labels.append(int(is_random))
    if not lengths:
        raise ValueError(
            f"no instances: each of the {len(documents)} documents has a single sentence, and a sentence "
            "pair needs two; put several sentences per document (a blank line ends a document), or "
            + _NSP_OFF
        )
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    out = {
        "input_ids": np.concatenate(pieces),
        "offsets": offsets,
        "segment_a_lengths": np.asarray(a_lengths, dtype=np.int32),
    }
    if nsp:
        out["next_sentence_labels"] = np.asarray(labels, dtype=np.int8)
    return out


def _document_instances(
    documents: Sequence[Sequence[np.ndarray]],
    index: int,
    rng: np.random.Generator,
    max_tokens: int,
    short_seq_prob: float,
    nsp: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray | None, bool]]:
    """Google's ``create_instances_from_document``: yields ``(A, B or None, B is random)``."""
    document = documents[index]
    last = len(document) - 1
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_tokens + 1))
    chunk: list[np.ndarray] = []
    length, i = 0, 0
    while i <= last:
        chunk.append(document[i])
        length += len(document[i])
        full = length >= target and (not nsp or (len(chunk) >= 2 and i != last - 1))
        if i == last or full:
            if not nsp:
                yield _truncate(np.concatenate(chunk), max_tokens, rng), None, False
            elif len(chunk) >= 2:  # a lone sentence could only get a random B; it is left out
                a_end = int(rng.integers(1, len(chunk)))
                a = np.concatenate(chunk[:a_end])
                is_random = rng.random() < 0.5
                if is_random:
                    b = _random_span(documents, index, rng, target - len(a))
                    i -= len(chunk) - a_end  # the unused sentences start the next chunk
                else:
                    b = np.concatenate(chunk[a_end:])
                yield *_truncate_pair(a, b, max_tokens, rng), is_random
            chunk, length = [], 0
        i += 1


def _random_span(
    documents: Sequence[Sequence[np.ndarray]], index: int, rng: np.random.Generator, target: int
) -> np.ndarray:
    other = int(rng.integers(len(documents) - 1))
    other += other >= index  # uniform over the other documents
    document = documents[other]
    span: list[np.ndarray] = []
    n = 0
    for sentence in document[int(rng.integers(len(document))) :]:
        span.append(sentence)
        n += len(sentence)
        if n >= target:
            break
    return np.concatenate(span)


def _truncate_pair(
    a: np.ndarray, b: np.ndarray, max_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Drop tokens from the longer segment (from its front or back at random) until both fit."""
    bounds = [[0, len(a)], [0, len(b)]]
    excess = len(a) + len(b) - max_tokens
    for coin in rng.random(max(0, excess)):
        longer = bounds[0] if bounds[0][1] - bounds[0][0] > bounds[1][1] - bounds[1][0] else bounds[1]
        if coin < 0.5:
            longer[0] += 1
        else:
            longer[1] -= 1
    return a[bounds[0][0] : bounds[0][1]], b[bounds[1][0] : bounds[1][1]]


def _truncate(a: np.ndarray, max_tokens: int, rng: np.random.Generator) -> np.ndarray:
    drop_front = int((rng.random(max(0, len(a) - max_tokens)) < 0.5).sum())
    return a[drop_front : drop_front + max_tokens]


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


class EpochSampler(ResumableSampler):
    """`zoo.data.resumable.ResumableSampler` (seeded by ``seed + epoch``, one share per rank under DDP,
    resumable mid-epoch) yielding ``(epoch, index)`` pairs: the epoch reaches the collator with each
    example, even in worker processes."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return ((epoch, index) for index in super().__iter__())


# -- fill-mask input and output --------------------------------------------------------------------
FILL_MASK_COLUMNS = ("line", "mask", "token", "word", "probability")
"""The tab-separated columns `BertPretrainingDataModule.format_prediction` writes (its first row)."""


class FillMaskLine(NamedTuple):
    """One sentence of a fill-mask file: its line number (from 1) and its ids, ``[CLS] ... [SEP]``."""

    line: int
    input_ids: list[int]


def read_fill_mask_file(path: Path, tokenizer: Tokenizer, *, max_seq_len: int) -> list[FillMaskLine]:
    """The sentences of a fill-mask file: one per line, each with one or more ``[MASK]`` tokens (written
    exactly so: the tokenizer's mask token). Blank lines are skipped.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: ``path:LINE: ...`` for a line without a mask or longer than ``max_seq_len`` tokens
            ([CLS] and [SEP] included); a file without a sentence.
    """
    if not path.is_file():
        raise FileNotFoundError(f"predict_file {path} not found")
    mask_id = special_token_ids(tokenizer)["mask"]
    out = []
    for number, text in enumerate(read_text(path).split("\n"), start=1):
        if not text.strip():
            continue
        ids = tokenizer.encode(text.rstrip("\r")).ids
        if mask_id not in ids:
            raise ValueError(f"{path}:{number}: no [MASK] to fill (write each mask as [MASK], upper case)")
        if len(ids) > max_seq_len:
            raise ValueError(
                f"{path}:{number}: {len(ids)} tokens with [CLS] and [SEP], more than max_seq_len="
                f"{max_seq_len}; shorten the line"
            )
        out.append(FillMaskLine(number, ids))
    if not out:
        raise ValueError(f"{path}: no sentence to fill, every line is blank")
    return out


def format_fill_mask(
    line: FillMaskLine, fillers: Sequence[Sequence[tuple[int, float]]], tokenizer: Tokenizer
) -> str:
    """Rows ``line, mask, token, word, probability`` (tab-separated) for each filler of each mask.

    ``mask`` counts the line's masks from 1; ``token`` is the vocabulary piece; ``word`` is the word it
    makes: the token itself, or for a ``##`` continuation piece the input's word before the mask joined
    with it (``walk [MASK]`` filled with ``##ed`` gives ``walked``).
    """
    tokens = [tokenizer.id_to_token(i) for i in line.input_ids]
    mask_id = special_token_ids(tokenizer)["mask"]
    positions = [p for p, i in enumerate(line.input_ids) if i == mask_id]
    if len(positions) != len(fillers):
        raise RuntimeError(f"line {line.line}: {len(positions)} masks but fillers for {len(fillers)}")
    rows = []
    for mask, (position, candidates) in enumerate(zip(positions, fillers), start=1):
        for token_id, probability in candidates:
            token = tokenizer.id_to_token(token_id)
            word = _completed_word(tokens, position, token)
            rows.append(f"{line.line}\t{mask}\t{token}\t{word}\t{probability:.6g}\n")
    return "".join(rows)


def _completed_word(tokens: list[str], position: int, filler: str) -> str:
    if not filler.startswith(CONTINUING_SUBWORD_PREFIX):
        return filler
    start = position - 1  # back to the start of the word the filler continues
    while start > 0 and tokens[start].startswith(CONTINUING_SUBWORD_PREFIX):
        start -= 1
    if start < 0 or tokens[start] in ("[CLS]", "[SEP]", "[PAD]"):
        start += 1
    pieces = [*tokens[start:position], filler]
    return "".join(t.removeprefix(CONTINUING_SUBWORD_PREFIX) for t in pieces)


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
        document_format: How files split into documents and lines; see `read_documents`.
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
        """Rows for sentence ``index`` of ``predict_file`` (see `format_fill_mask`): per mask, the
        ``(token id, probability)`` pairs of ``MaskedLM.predict_step``. Sentence 0 starts with the
        header row ``line mask token word probability``."""
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
            + ("" if min_docs == 1 else f" (or {_NSP_OFF})")
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
