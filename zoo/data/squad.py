"""Extractive question answering data in SQuAD v1.1 format, cut into windows over long contexts.

A question and its context become one or more windows of at most ``max_seq_len`` tokens: the question
first, the context second (segment ids 0 and 1, with the tokenizer's own special tokens, e.g.
``[CLS] question [SEP] context [SEP]``). A context too long for one window is read in overlapping pieces
whose starts are ``doc_stride`` tokens apart. Every context token keeps its character span in the original
context (``offset_start``, ``offset_end``), so a predicted span of tokens maps back to the exact text.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Encoding, Tokenizer
from torch.utils.data import DataLoader

from zoo.data.base import TokenizedDataModule
from zoo.data.collate import pad_batch
from zoo.data.corpus import read_text
from zoo.data.labelled import LabelledDataModule
from zoo.data.records import read_records
from zoo.errors import check_positive

__all__ = ["PairTemplate", "Question", "QuestionAnsweringDataModule", "collate_questions", "read_squad"]

ArticleSelection = str | list[str] | None
"""Articles of a SQuAD file: ``"start:end"`` (0-based, end excluded, either end optional) or titles."""

_SLICE = re.compile(r"^\s*(-?\d*)\s*:\s*(-?\d*)\s*$")


@dataclasses.dataclass(frozen=True)
class Question:
    """One question about one context.

    Args:
        id: The question's id (SQuAD's ``id``; for JSON lines its ``id`` or ``line N``).
        question: The question text.
        context: The paragraph the answer is taken from.
        answers: Gold answer texts (several in SQuAD's dev set; empty for prediction input).
        answer_starts: Character offset of each answer in ``context``.
        where: The place in the file, for messages: ``path: article 3 ('Warsaw'), question 'id'``.
    """

    id: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int]
    where: str


def parse_articles(owner: str, key: str, spec: ArticleSelection) -> slice | list[str] | None:
    """Check an article selection at construction: a ``"start:end"`` slice or a list of titles.

    Raises:
        ValueError: Names ``key``: not a slice (a bare number included: unquoted YAML reads ``0:38`` as
            the sexagesimal number 38) nor a non-empty list of titles.
    """
    if spec is None:
        return None
    if isinstance(spec, list):
        if not spec or not all(isinstance(title, str) and title for title in spec):
            raise ValueError(f"{owner}: {key} must be a 'start:end' slice or a non-empty list of titles")
        return list(spec)
    match = _SLICE.match(str(spec))
    if match is None:
        raise ValueError(
            f"{owner}: {key}={spec!r} is not an article slice 'start:end' (0-based, end excluded) nor a list "
            'of titles; in YAML quote the slice ("0:38"): unquoted, 0:38 reads as the number 38'
        )
    start, end = (int(part) if part else None for part in match.groups())
    return slice(start, end)


def select_articles(
    articles: list[Any], selection: slice | list[str] | None, key: str, path: Path
) -> list[int]:
    """Indices of the selected articles of a SQuAD file, in file order.

    Raises:
        ValueError: An empty slice, or a title absent from the file (both name ``key`` and ``path``).
    """
    if selection is None:
        return list(range(len(articles)))
    if isinstance(selection, slice):
        chosen = list(range(len(articles)))[selection]
        if not chosen:
            bounds = f"{selection.start or ''}:{selection.stop or ''}"
            raise ValueError(f"{key}={bounds!r} selects no article of {path} ({len(articles)} articles)")
        return chosen
    titles = [article.get("title") if isinstance(article, dict) else None for article in articles]
    missing = [title for title in selection if title not in titles]
    if missing:
        raise ValueError(f"{key}: no article titled {missing[0]!r} in {path} (titles: {titles[:5]} ...)")
    return [i for i, title in enumerate(titles) if title in set(selection)]


def _field(record: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise ValueError(f"{where}: no key {key!r}")
    if not isinstance(record[key], kind):
        raise ValueError(f"{where}: {key!r} must be a {kind.__name__}, got {type(record[key]).__name__}")
    return record[key]


def read_squad(
    path: Path, *, articles: slice | list[str] | None = None, key: str = "articles", answers: bool = True
) -> list[Question]:
    """The questions of a SQuAD v1.1 JSON file (``{"data": [{"title", "paragraphs": [{"context", "qas":
    [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}``), of the selected articles.

    Args:
        path: The file.
        articles: Which articles (see `parse_articles`); ``None``: all.
        key: The argument that gave ``articles``, for messages.
        answers: Every question needs at least one answer whose ``answer_start`` points at its text
            (training and evaluation); ``False``: answers are optional and not checked (prediction).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Invalid JSON (``path:LINE``), a missing or mistyped key, an empty context or question,
            an answer that is not where ``answer_start`` says, a duplicate id (the message names the file,
            the article and the question id).
    """
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno})") from err
    found = _field(data, "data", list, f'{path}: the top level (SQuAD format: {{"data": [...]}})')
    questions: list[Question] = []
    for a in select_articles(found, articles, key, path):
        title = found[a].get("title", "") if isinstance(found[a], dict) else ""
        here = f"{path}: article {a} ({title!r})"
        for p, paragraph in enumerate(_field(found[a], "paragraphs", list, here)):
            context = _field(paragraph, "context", str, f"{here}, paragraph {p}")
            for qa in _field(paragraph, "qas", list, f"{here}, paragraph {p}"):
                qid = _field(qa, "id", str, f"{here}, paragraph {p}, a question")
                questions.append(_question(qa, qid, context, f"{here}, question {qid!r}", answers))
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise ValueError(f"{q.where}: duplicate question id {q.id!r}")
        seen.add(q.id)
    return questions


def _question(qa: dict, qid: str, context: str, where: str, answers: bool) -> Question:
    text = _field(qa, "question", str, where)
    if not text.strip() or not context.strip():
        raise ValueError(f"{where}: empty {'question' if context.strip() else 'context'}")
    if not answers and "answers" not in qa:
        return Question(qid, text, context, [], [], where)
    golds, starts = [], []
    for answer in _field(qa, "answers", list, where):
        gold = _field(answer, "text", str, f"{where}, an answer")
        start = _field(answer, "answer_start", int, f"{where}, answer {gold!r}")
        if answers and context[start : start + len(gold)] != gold:
            raise ValueError(
                f"{where}: answer {gold!r} is not at answer_start={start} (the context has "
                f"{context[start : start + len(gold)]!r} there)"
            )
        golds.append(gold)
        starts.append(start)
    if answers and not golds:
        raise ValueError(f"{where}: no answers (every training and evaluation question needs one)")
    return Question(qid, text, context, golds, starts, where)


def read_question_lines(path: Path) -> list[Question]:
    """Questions to answer from a JSON-lines file: ``{"context": ..., "question": ...}`` per line, with an
    optional ``id`` (default ``line N``), read by `zoo.data.records.read_records` (blank lines skipped).

    Raises:
        FileNotFoundError: No such file.
        ValueError: Invalid JSON, a missing key, an empty context or question (``path:LINE``).
    """
    questions = []
    for line, record in read_records(path):
        where = f"{path}:{line}"
        context = _field(record, "context", str, where)
        qid = str(record.get("id", f"line {line}"))
        questions.append(_question(record, qid, context, where, answers=False))
    return questions


@dataclasses.dataclass(frozen=True)
class PairTemplate:
    """Where a tokenizer puts its special tokens around a pair (BERT: ``[CLS] A [SEP] B [SEP]``), learnt by
    encoding a sample pair, so windows are assembled from separately tokenized questions and contexts.

    Args:
        prefix: ``(id, segment)`` of the special tokens before the question.
        middle: Those between question and context.
        suffix: Those after the context.
        question_segment: Segment id (``token_type_ids``) of question tokens.
        context_segment: Segment id of context tokens.
    """

    prefix: list[tuple[int, int]]
    middle: list[tuple[int, int]]
    suffix: list[tuple[int, int]]
    question_segment: int
    context_segment: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> PairTemplate:
        enc = tokenizer.encode("a", "b")
        parts: list[list[tuple[int, int]]] = [[], [], []]
        segments = {}
        part = 0
        for token, segment, sequence in zip(enc.ids, enc.type_ids, enc.sequence_ids):
            if sequence is None:
                parts[part].append((token, segment))
            else:
                segments[sequence] = segment
                part = sequence + 1
        return cls(*parts, question_segment=segments.get(0, 0), context_segment=segments.get(1, 1))

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def window(self, question: Encoding, context: Encoding, start: int, end: int) -> dict[str, list[int]]:
        """``input_ids``, ``token_type_ids``, ``offset_start``, ``offset_end`` of the window holding
        context tokens ``start:end``; offsets are -1 outside the context."""
        before = self.prefix + [(t, self.question_segment) for t in question.ids] + self.middle
        pieces = before + [(t, self.context_segment) for t in context.ids[start:end]] + self.suffix
        spans = context.offsets[start:end]
        return {
            "input_ids": [token for token, _ in pieces],
            "token_type_ids": [segment for _, segment in pieces],
            "offset_start": [-1] * len(before) + [a for a, _ in spans] + [-1] * len(self.suffix),
            "offset_end": [-1] * len(before) + [b for _, b in spans] + [-1] * len(self.suffix),
        }


def window_starts(num_tokens: int, room: int, stride: int) -> list[int]:
    """First context token of each window: ``0, stride, 2 * stride, ...`` until a window of ``room``
    tokens reaches the end, so every token is in at least one window."""
    starts = [0]
    while starts[-1] + room < num_tokens:
        starts.append(starts[-1] + stride)
    return starts


def answer_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """First and last token (indices into ``offsets``) of the characters ``start:end`` of the text that
    ``offsets`` tokenized: the tokens that hold its first and its last character. ``None`` if no token
    does (the answer is only whitespace or characters the tokenizer dropped)."""
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    return (inside[0], inside[-1]) if inside else None


def collate_questions(
    items: list[dict[str, Any]], *, pad_token_id: int, sequence_keys: dict[str, int] | None = None
) -> dict[str, Any]:
    """Collate whole questions (every window of each) for evaluation and prediction: the windows padded as
    `zoo.data.collate.pad_batch` does (N rows), and per question (Q): ``index`` (its place in the file),
    ``contexts`` and gold ``answers`` (lists of strings); ``window_question`` (N,) is each row's question
    (0..Q-1)."""
    windows = [window for item in items for window in item["windows"]]
    batch: dict[str, Any] = pad_batch(windows, pad_token_id=pad_token_id, sequence_keys=sequence_keys)
    batch["index"] = torch.tensor([item["index"] for item in items])
    batch["window_question"] = torch.tensor([q for q, item in enumerate(items) for _ in item["windows"]])
    batch["contexts"] = [item["context"] for item in items]
    batch["answers"] = [item["answers"] for item in items]
    return batch


class QuestionAnsweringDataModule(LabelledDataModule):
    """SQuAD v1.1 question answering: question-context windows with answer spans, for
    `zoo.tasks.QuestionAnswering`.

    Training reads windows (shuffled, length-bucketed like the other fine-tuning data): ``labels`` (N, 2)
    holds the first and last token of the question's first gold answer, or ``[0, 0]`` (the [CLS] token, as
    BERT does) in a window that does not hold all of it. Evaluation and prediction read whole questions,
    every window of a question in one batch (`collate_questions`), so the task can pick the best span over
    all of them. ``eval_batch_size`` counts questions.

    One file can give both training and evaluation data through disjoint article selections, e.g.
    ``train_articles: "0:38"`` and ``val_articles: "38:48"``; overlapping selections of the same file are
    an error.

    Args:
        train_articles: Articles of ``train_file`` to use: ``"start:end"`` (0-based, end excluded, quoted in
            YAML) or a list of titles; ``None``: all.
        val_articles: Likewise for ``val_file``.
        test_articles: Likewise for ``test_file``.
        predict_articles: Likewise for a SQuAD ``predict_file``.
        max_seq_len: Tokens per window, question and special tokens included.
        doc_stride: Tokens between the starts of consecutive windows of one context (Google's
            ``run_squad.py`` meaning; Hugging Face's ``run_qa.py`` passes its ``doc_stride`` as the overlap
            instead). At most ``max_seq_len - max_question_len -`` the special tokens, so no token is skipped.
        max_question_len: Questions are cut to this many tokens (counted in the log).
        **kwargs: Other arguments: `zoo.data.labelled.LabelledDataModule` (forwarded): ``tokenizer``
            (``vocab.txt``, ``tokenizer.json``, their directory, or ``python:<package>``), ``train_file``
            (SQuAD v1.1 JSON, e.g. ``train-v1.1.json``), ``val_file`` (SQuAD JSON, scored with EM and F1
            against all its gold answers), ``test_file``, ``predict_file`` (JSON lines, one ``{"context":
            ..., "question": ...}`` object per line with an optional ``id``, or a SQuAD ``.json`` file,
            answers optional), ``batch_size`` (training windows per step), ``batching`` (``bucketed`` or
            ``padded``; ``packed`` is refused: span positions are per window), ``eval_batch_size``
            (questions per evaluation batch, default ``2 * batch_size``), ``seed``, ``num_workers``.

    Raises:
        ValueError: A size that is not a positive integer, ``max_question_len`` not below ``max_seq_len``,
            ``batching: packed``, or a malformed article selection (the message names the argument).
    """

    sequence_keys = {"offset_start": -1, "offset_end": -1}

    def __init__(
        self,
        *,
        train_articles: ArticleSelection = None,
        val_articles: ArticleSelection = None,
        test_articles: ArticleSelection = None,
        predict_articles: ArticleSelection = None,
        max_seq_len: int = 384,
        doc_stride: int = 128,
        max_question_len: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(max_seq_len=max_seq_len, **kwargs)
        owner = type(self).__name__
        check_positive(owner, doc_stride=doc_stride, max_question_len=max_question_len)
        if max_question_len >= max_seq_len:
            raise ValueError(
                f"{owner}: max_question_len={max_question_len} leaves no room for the context in "
                f"max_seq_len={max_seq_len}"
            )
        if self.batching == "packed":
            raise ValueError(
                f"{owner}: batching 'packed' is not supported (answer spans are positions in one window); "
                "use 'bucketed' or 'padded'"
            )
        self.articles = {
            split: (key, parse_articles(owner, key, spec))
            for split, key, spec in (
                ("fit", "train_articles", train_articles),
                ("validate", "val_articles", val_articles),
                ("test", "test_articles", test_articles),
                ("predict", "predict_articles", predict_articles),
            )
        }
        self.doc_stride = doc_stride
        self.max_question_len = max_question_len
        self.questions: dict[str, list[Question]] = {}
        self._chosen: dict[str, tuple[Path, set[str]]] = {}

    @property
    def label_names(self) -> list[str]:
        """Absent (``AttributeError``): a span label is a pair of token positions, there is no label
        vocabulary, and the CLI's links to a model's ``num_labels`` / ``label_names`` are skipped."""
        raise AttributeError(f"{type(self).__name__} has no label vocabulary")

    def state_dict(self) -> dict[str, Any]:
        return TokenizedDataModule.state_dict(self)  # the tokenizer and the training position; no labels

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        TokenizedDataModule.load_state_dict(self, state_dict)

    def read(self, path: Path, split: str) -> list[Question]:
        """The questions of ``path`` for ``split`` (``fit``, ``validate``, ``test``, ``predict``), of its
        selected articles; a ``.jsonl`` predict file is read with `read_question_lines`."""
        key, selection = self.articles[split]
        if split == "predict" and path.suffix.lower() == ".jsonl":
            return read_question_lines(path)
        if path.suffix.lower() not in (".json",):
            kind = "a SQuAD .json or a .jsonl file" if split == "predict" else "a SQuAD .json file"
            raise ValueError(f"{path}: expected {kind}, got {path.suffix or 'no suffix'!r}")
        questions = read_squad(path, articles=selection, key=key, answers=split != "predict")
        self._check_disjoint(path, split, questions)
        return questions

    def _check_disjoint(self, path: Path, split: str, questions: list[Question]) -> None:
        """Evaluation questions must not be training questions (one file split by articles)."""
        ids = {q.id for q in questions}
        self._chosen[split] = (path.resolve(), ids)
        train = self._chosen.get("fit")
        if split in ("validate", "test") and train is not None and train[0] == path.resolve():
            shared = ids & train[1]
            if shared:
                key = self.articles[split][0]
                raise ValueError(
                    f"{key} and train_articles share {len(shared)} questions of {path}: the evaluation would "
                    "score training data; choose disjoint article selections"
                )

    def _encode(self, path: Path, split: str) -> list[dict[str, Any]]:
        questions = self.read(path, split)
        self.questions[split] = questions
        template = self.template()
        asked = self.tokenizer.encode_batch([q.question for q in questions], add_special_tokens=False)
        contexts = list(dict.fromkeys(q.context for q in questions))  # a paragraph has several questions
        tokenized = self.tokenizer.encode_batch(contexts, add_special_tokens=False)
        context_of = dict(zip(contexts, tokenized))
        encoded, cut, lost = [], 0, 0
        for index, (question, q) in enumerate(zip(questions, asked)):
            if len(q.ids) > self.max_question_len:
                q.truncate(self.max_question_len)
                cut += 1
            windows = self._windows(question, q, context_of[question.context], template, index)
            lost += bool(question.answers) and all(w["labels"] == [0, 0] for w in windows)
            encoded.append(
                {"windows": windows, "index": index, "context": question.context, "answers": question.answers}
            )
        num_windows = sum(len(e["windows"]) for e in encoded)
        rank_zero_info(
            f"{path}: {len(questions)} questions in {num_windows} windows (max_seq_len={self.max_seq_len}, "
            f"doc_stride={self.doc_stride}); {cut} questions cut to max_question_len={self.max_question_len}"
            + (f"; {lost} first answers in no single window (trained towards [CLS])" if lost else "")
        )
        if split == "fit":  # training reads windows; evaluation whole questions
            return [window for e in encoded for window in e["windows"]]
        return encoded

    def _windows(
        self, question: Question, q: Encoding, context: Encoding, template: PairTemplate, index: int
    ) -> list[dict[str, Any]]:
        """The windows of one question, labelled with its first answer's tokens (when it has answers)."""
        room = self.max_seq_len - len(q.ids) - template.num_special
        span = None
        if question.answers:  # surrounding whitespace is no part of the span
            gold = question.answers[0]
            start = question.answer_starts[0] + len(gold) - len(gold.lstrip())
            span = answer_tokens(context.offsets, start, start + len(gold.strip()))
        before = len(template.prefix) + len(q.ids) + len(template.middle)  # window position of its context
        windows = []
        for first in window_starts(len(context.ids), room, self.doc_stride):
            last = min(first + room, len(context.ids))
            labels = None
            if question.answers:
                inside = span is not None and first <= span[0] and span[1] < last
                labels = [span[0] - first + before, span[1] - first + before] if inside else [0, 0]
            windows.append(template.window(q, context, first, last) | {"labels": labels, "index": index})
        return windows

    def template(self) -> PairTemplate:
        """The tokenizer's `PairTemplate`.

        Raises:
            ValueError: ``doc_stride`` larger than the context room of the shortest window (names it).
        """
        template = PairTemplate.of(self.tokenizer)
        room = self.max_seq_len - self.max_question_len - template.num_special
        if self.doc_stride > room:
            raise ValueError(
                f"doc_stride={self.doc_stride} is more than a window's room for context (max_seq_len "
                f"{self.max_seq_len} - max_question_len {self.max_question_len} - {template.num_special} "
                f"special tokens = {room}): tokens would be skipped; lower doc_stride or max_question_len"
            )
        return template

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require("validate"), self.eval_batch_size, collate=collate_questions)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._require("test"), self.eval_batch_size, collate=collate_questions)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._require("predict"), self.eval_batch_size, collate=collate_questions)

    def format_prediction(self, index: int, prediction: Sequence[Any]) -> str:
        """The line ``zoo predict`` writes for question ``index`` of ``predict_file``: a JSON object with
        the question's ``id``, its ``question``, the ``answer`` text, its character ``start`` in the
        context and its ``probability`` (softmax over the n-best), and ``n_best``: every candidate kept
        (`zoo.tasks.QuestionAnswering` ``n_best``), best first, as ``{"text", "start", "score",
        "probability"}`` (``score``: start + end logit).

        Args:
            index: The question's position in ``predict_file`` (0-based).
            prediction: What `zoo.tasks.QuestionAnswering.predict_step` returns for it: spans with
                ``text``, ``start``, ``score``, ``probability``, best first (empty: no answer found).
        """
        question = self.questions["predict"][index]
        best = [
            {
                "text": s.text,
                "start": s.start,
                "score": round(s.score, 4),
                "probability": round(s.probability, 4),
            }
            for s in prediction
        ]
        top = best[0] if best else {"text": "", "start": -1, "probability": 0.0}
        record = {
            "id": question.id,
            "question": question.question,
            "answer": top["text"],
            "start": top["start"],
            "probability": top["probability"],
            "n_best": best,
        }
        return json.dumps(record, ensure_ascii=False) + "\n"
