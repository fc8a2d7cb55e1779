"""zoo's ROUGE equals Google's ``rouge-score`` (``use_stemmer=True``), the scorer DialogSum's published
numbers come from."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import shared_file
from zoo.tasks.rouge import ROUGEScore, porter_stem, rouge_scores

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


def test_rouge_equals_rouge_score_on_dialogsum_dev() -> None:
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
        mine = [rouge_scores(prediction, reference)[key] for prediction, reference in pairs]
        assert mine == pytest.approx(theirs, abs=1e-12), key  # every pair, not only the mean
        torch.testing.assert_close(ours[key].item(), sum(theirs) / len(theirs), atol=1e-12, rtol=0)
    assert 0.1 < ours["rouge1"].item() < 0.6  # real, partly overlapping text: neither 0 nor 1


def test_porter_stem_equals_nltk_on_every_dev_word() -> None:
    porter = pytest.importorskip("nltk.stem.porter", reason="nltk (via rouge-score) not installed")
    text = shared_file("dialogsum/dialogsum.dev.jsonl").read_text(encoding="utf-8").lower()
    words = set(__import__("re").findall(r"[a-z0-9]+", text))
    assert len(words) > 4000
    stemmer = porter.PorterStemmer()
    differ = {w: (porter_stem(w), stemmer.stem(w)) for w in words if porter_stem(w) != stemmer.stem(w)}
    assert not differ


def test_rouge_of_identical_and_disjoint_text() -> None:
    # stemmed: "the cat were run" vs "the cat ran": 2 of 4 and 2 of 3 words, 1 of 3 and 1 of 2 bigrams
    assert rouge_scores("The cats were running.", "the cat ran") == pytest.approx(
        {"rouge1": 4 / 7, "rouge2": 0.4, "rougeL": 4 / 7}
    )
    assert rouge_scores("a b c", "a b c") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge_scores("", "a b c") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
