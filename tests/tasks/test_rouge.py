"""zoo's ROUGE equals Google's ``rouge-score`` (``use_stemmer=True``), the scorer DialogSum's published
numbers come from."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import shared_file
from zoo.tasks.rouge import ROUGEScore, rouge_tokens

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer", reason="rouge-score (dev extra) not installed")


def _dev_pairs() -> list[tuple[str, str]]:
    """(prediction, reference) pairs from the DialogSum dev file. The upstream BART predictions that
    dialogsum/SOURCE.md describes are scored against the held-out test file, which is not here; instead
    each dev summary is scored against the next dev summary (related text, partial overlap) and the first
    turn of each dialogue against its own summary (speaker tags, punctuation, numbers)."""
    path = shared_file("dialogsum/dialogsum.dev.jsonl")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    summaries = [r["summary"] for r in records]
    shifted = list(zip(summaries, summaries[1:] + summaries[:1]))
    first_turns = [(r["dialogue"].split("\n")[0], r["summary"]) for r in records]
    return shifted + first_turns


def _scores(prediction: str, reference: str) -> dict[str, float]:
    metric = ROUGEScore()
    metric.update([prediction], [reference])
    return {key: value.item() for key, value in metric.compute().items()}


def test_rouge_equals_rouge_score_on_dialogsum_dev() -> None:
    """The corpus mean equals rouge-score's to float32 precision, updated in chunks as validation does."""
    pairs = _dev_pairs()
    assert len(pairs) == 1000
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    metric = ROUGEScore()
    for start in range(0, len(pairs), 100):
        chunk = pairs[start : start + 100]
        metric.update([p for p, _ in chunk], [r for _, r in chunk])
    ours = metric.compute()
    for key in ("rouge1", "rouge2", "rougeL"):
        theirs = [scorer.score(reference, prediction)[key].fmeasure for prediction, reference in pairs]
        torch.testing.assert_close(ours[key].item(), sum(theirs) / len(theirs), atol=1e-6, rtol=0)
    assert 0.1 < ours["rouge1"].item() < 0.6  # real, partly overlapping text: neither 0 nor 1
    for prediction, reference in pairs[:50]:  # every pair, not only the mean
        theirs = scorer.score(reference, prediction)
        mine = _scores(prediction, reference)
        assert mine == pytest.approx({k: theirs[k].fmeasure for k in mine}, abs=1e-6)


def test_rouge_tokens_are_rouge_scores_words() -> None:
    tokenize = pytest.importorskip("rouge_score.tokenize", reason="rouge-score (dev extra) not installed")
    from nltk.stem.porter import PorterStemmer

    text = shared_file("dialogsum/dialogsum.dev.jsonl").read_text(encoding="utf-8")[:20000]
    assert rouge_tokens(text) == tokenize.tokenize(text, PorterStemmer())


def test_rouge_of_identical_and_disjoint_text() -> None:
    # stemmed: "the cat were run" vs "the cat ran": 2 of 4 and 2 of 3 words, 1 of 3 and 1 of 2 bigrams
    assert _scores("The cats were running.", "the cat ran") == pytest.approx(
        {"rouge1": 4 / 7, "rouge2": 0.4, "rougeL": 4 / 7}
    )
    assert _scores("a b c", "a b c") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert _scores("", "a b c") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


def test_without_nltk_one_line_names_the_package(monkeypatch) -> None:
    from zoo.tasks import rouge

    rouge._porter_stemmer.cache_clear()
    monkeypatch.setitem(__import__("sys").modules, "nltk.stem.porter", None)  # as if not installed
    try:
        with pytest.raises(ImportError, match=r"^ROUGE stems words as rouge-score does.*pip install nltk"):
            ROUGEScore()
    finally:
        rouge._porter_stemmer.cache_clear()
