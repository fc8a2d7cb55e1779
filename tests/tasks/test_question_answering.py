"""Extractive QA: the official SQuAD v1.1 scores on hand-checked cases, n-best span decoding on hand-made
logits, and the shipped CPU recipe through `zoo fit` and `zoo predict`."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import shared_file

from zoo.cli import main
from zoo.tasks.question_answering import (
    QuestionAnswering,
    SquadScores,
    best_spans,
    exact_match,
    normalize_answer,
    squad_scores,
    token_f1,
)

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes" / "qa" / "squad-minilm.yaml")


# -- SQuAD v1.1 normalisation, EM and F1 -------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, normal",
    [
        ("The Denver Broncos", "denver broncos"),  # article and case
        ("a dog and an apple, the end", "dog and apple end"),  # every article, commas
        ("another theme", "another theme"),  # articles only as whole words
        ("  Denver\n\tBroncos  ", "denver broncos"),  # whitespace collapsed
        ("U.S. (1,000!)", "us 1000"),  # ASCII punctuation dropped, not replaced by a space
        ("24–10", "24–10"),  # a non-ASCII dash is no ASCII punctuation: kept, as the official script does
        ("the-the", "thethe"),  # punctuation goes before the articles: no article left to drop
        ("", ""),
    ],
)
def test_normalisation_is_the_official_one(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match_and_f1_on_hand_checked_cases():
    assert exact_match("the Denver Broncos!", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0
    # precision 2/3, recall 1: F1 = 2 * (2/3) / (5/3) = 0.8
    assert token_f1("Denver Broncos team", "Denver Broncos") == pytest.approx(0.8)
    # repeated words count as often as both sides have them: common {broncos: 1}; p = 1/2, r = 1/1
    assert token_f1("Broncos Broncos", "Broncos") == pytest.approx(2 / 3)
    assert token_f1("the", "a") == 0.0  # both normalise to nothing: no common word
    assert token_f1("", "Denver Broncos") == 0.0 and exact_match("", "Denver Broncos") == 0.0
    # several gold answers: each score is its own maximum (EM from the 3rd, F1 from the 3rd too)
    golds = ["Carolina Panthers", "Denver Broncos", "Broncos"]
    assert squad_scores("the Broncos", golds) == (1.0, 1.0)
    em, f1 = squad_scores("Broncos of Denver", ["Denver Broncos", "Broncos"])
    assert em == 0.0 and f1 == pytest.approx(
        max(2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * (1 / 3) * 1 / (1 / 3 + 1))
    )


def test_squad_scores_average_in_percent_and_skip_questions_without_answers():
    scores = SquadScores()
    scores.update(["Denver Broncos", "Broncos", "x"], [["Denver Broncos"], ["Denver Broncos"], []])
    values = scores.compute()
    assert values["em"].item() == pytest.approx(50.0)
    assert values["f1"].item() == pytest.approx(100 * (1.0 + 2 / 3) / 2)


# -- n-best span decoding --------------------------------------------------------------------------------
def _logits(length: int, high: dict[int, float]) -> torch.Tensor:
    row = torch.zeros(length)
    for position, value in high.items():
        row[position] = value
    return row


def test_best_span_respects_max_answer_length_and_the_context():
    """One window of 8 tokens, context at 3..6. The best pair overall (1..1, question tokens) is no
    answer, nor is 3..6 (11) with max_answer_length 3: the answer is 5..6 (8), then 3..4 (7)."""
    start = _logits(8, {1: 9.0, 3: 6.0, 5: 3.0})[None]
    end = _logits(8, {1: 9.0, 4: 1.0, 6: 5.0})[None]
    offsets = torch.tensor([[-1, -1, -1, 0, 10, 20, 30, -1]])  # context tokens 3..6
    one = torch.zeros(1, dtype=torch.long)
    (spans,) = best_spans(
        start, end, offsets, offsets + 5, one, num_questions=1, n_best=2, max_answer_length=3
    )
    assert [(s, e, score) for score, _, s, e in spans] == [(5, 6, 8.0), (3, 4, 7.0)]
    (longer,) = best_spans(
        start, end, offsets, offsets + 5, one, num_questions=1, n_best=1, max_answer_length=4
    )
    assert [(s, e) for _, _, s, e in longer] == [(3, 6)]


def test_best_spans_equal_a_brute_force_search():
    """Random logits, context masks and lengths: the n-best list is exactly the best valid pairs (end >=
    start, both context tokens, at most max_answer_length tokens) found by trying them all."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        n, t = 3, 12
        start, end = torch.randn(n, t, generator=generator), torch.randn(n, t, generator=generator)
        context = torch.rand(n, t, generator=generator) > 0.3
        offsets = torch.where(context, 100 * torch.arange(n)[:, None] + torch.arange(t), -1)  # all distinct
        owner = torch.tensor([0, 1, 0])
        length = int(torch.randint(1, 6, (1,), generator=generator))
        found = best_spans(
            start, end, offsets, offsets + 1, owner, num_questions=2, n_best=5, max_answer_length=length
        )
        for question, spans in enumerate(found):
            every = sorted(
                (
                    (float(start[w, s] + end[w, e]), w, s, e)
                    for w in range(n)
                    if owner[w] == question
                    for s in range(t)
                    for e in range(s, min(s + length, t))
                    if context[w, s] and context[w, e]
                ),
                reverse=True,
            )[:5]
            assert [span[1:] for span in spans] == [span[1:] for span in every]
            assert [span[0] for span in spans] == pytest.approx([span[0] for span in every])


def test_the_best_span_over_all_windows_of_a_question_wins():
    """Two questions: question 0 has windows 0 and 2, question 1 window 1. Question 0's answer comes from
    window 2, whose span scores higher; the same characters seen with a lower score in window 0 are not
    listed again; question 1 keeps its own window's span."""
    start, end = torch.zeros(3, 6), torch.zeros(3, 6)
    start[0, 0], end[0, 1] = 4.0, 4.0  # q0, window 0: 0..1 scores 8
    start[0, 2], end[0, 3] = 4.5, 4.5  # q0, window 0: 2..3 scores 9, 0..3 scores 8.5
    start[1, 4], end[1, 4] = 20.0, 20.0  # q1: 40
    start[2, 1], end[2, 2] = 5.0, 5.0  # q0, window 2: 1..2 scores 10, the characters of window 0's 2..3
    # windows 0 and 2 overlap: token i of window 2 is token i + 1 of window 0 (the same characters)
    offsets = torch.stack([torch.arange(6), torch.arange(6), torch.arange(1, 7)]) * 10
    owner = torch.tensor([0, 1, 0])
    q0, q1 = best_spans(
        start, end, offsets, offsets + 5, owner, num_questions=2, n_best=3, max_answer_length=5
    )
    assert q0 == [(10.0, 2, 1, 2), (8.5, 0, 0, 3), (8.0, 0, 0, 1)]
    assert q1[0] == (40.0, 1, 4, 4)


def test_decode_maps_spans_back_to_the_context_text():
    """A hand-made batch whose offsets follow 'Paris is the capital of France.': the text is cut from
    the context's own characters, the probabilities are a softmax over the n-best scores."""
    task = QuestionAnswering(_tiny_bert(), n_best=2, max_answer_length=4)
    context = "Paris is the capital of France."
    words = [(0, 5), (6, 8), (9, 12), (13, 20), (21, 23), (24, 30), (30, 31)]
    starts = torch.tensor([[-1, -1, -1] + [a for a, _ in words] + [-1]])
    ends = torch.tensor([[-1, -1, -1] + [b for _, b in words] + [-1]])
    batch = {
        "offset_start": starts,
        "offset_end": ends,
        "window_question": torch.tensor([0]),
        "contexts": [context],
    }
    logits = torch.zeros(1, 11, 2)
    logits[0, 6, 0], logits[0, 8, 1] = 6.0, 6.0  # "capital of France"
    logits[0, 1, 0], logits[0, 1, 1] = 50.0, 50.0  # a question token: never an answer
    (spans,) = task.decode(batch, logits)
    assert spans[0].text == "capital of France" and spans[0].start == 13
    assert spans[0].probability + spans[1].probability == pytest.approx(1.0)
    assert spans[0].probability == pytest.approx(1 / (1 + math.exp(-6.0)))


def _tiny_bert():
    from zoo.models.bert import Bert

    return Bert(vocab_size=50, max_seq_len=32, embed_dim=16, num_heads=2, num_layers=1, hidden_dim=32)


def test_the_loss_of_a_window_does_not_depend_on_padding():
    torch.manual_seed(0)
    task = QuestionAnswering(_tiny_bert()).eval()
    ids = torch.randint(5, 50, (1, 10))
    labels = torch.tensor([[4, 6]])
    alone = {"input_ids": ids, "attention_mask": torch.ones(1, 10, dtype=torch.long)}
    padded = {
        "input_ids": torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1),
        "attention_mask": torch.cat([torch.ones(1, 10), torch.zeros(1, 5)], 1).long(),
    }
    with torch.no_grad():
        torch.testing.assert_close(task.loss(task(padded), labels), task.loss(task(alone), labels))


@pytest.mark.parametrize("argument", ["n_best", "max_answer_length"])
def test_bad_sizes_are_named(argument):
    with pytest.raises(ValueError, match=f"^QuestionAnswering: {argument} must be a positive integer, got 0"):
        QuestionAnswering(_tiny_bert(), **{argument: 0})


# -- the shipped recipe, through the zoo command --------------------------------------------------------
def _shortened(root: Path) -> list[str]:
    """Overrides that shorten the shipped recipe: 2 steps on one article, one evaluation batch."""
    return [
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={root}",
        "--data.init_args.train_articles=2:3",
        "--data.init_args.batch_size=4",
        "--data.init_args.eval_batch_size=8",
    ]


def test_squad_recipe_fit_logs_em_f1_then_zoo_predict_answers_a_jsonl_file(tmp_path, monkeypatch, minilm_dir):
    """recipes/qa/squad-minilm.yaml shortened on the command line only (2 steps on one article, one
    evaluation batch): metrics.csv holds val_em and val_f1; `zoo predict` on a JSON-lines file writes one
    JSON answer per question, in input order, cut from that question's context."""
    shared_file("squad/dev-v1.1.json")
    monkeypatch.chdir(REPO)  # the recipe's data paths are relative to the repository
    small = _shortened(tmp_path)
    main(["fit", "--config", RECIPE, *small])
    (version,) = (tmp_path / "logs").iterdir()
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    (scored,) = [row for row in rows if row.get("val_f1")]
    assert 0 <= float(scored["val_em"]) <= float(scored["val_f1"]) <= 100 and float(scored["val_loss"]) > 0
    asked = [
        {"context": "The Rhine rises in the Swiss Alps and flows into the North Sea.", "question": "Where?"},
        {"id": "x2", "context": "Warsaw is the capital of Poland.", "question": "Which city is the capital?"},
    ]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in asked), encoding="utf-8")
    main(
        [
            "predict",
            "--config",
            RECIPE,
            *small,
            f"--data.init_args.predict_file={questions}",
            "--ckpt_path",
            str(version / "checkpoints" / "last.ckpt"),
        ]
    )
    predictions = tmp_path / "logs" / "version_1" / "predictions.txt"  # the predict run's own folder
    written = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [w["id"] for w in written] == ["line 1", "x2"]
    for answer, question in zip(written, asked):
        assert (
            answer["answer"]
            and answer["answer"] == question["context"][answer["start"] :][: len(answer["answer"])]
        )
        assert len(answer["n_best"]) == 20 and answer["n_best"][0]["text"] == answer["answer"]
        assert sum(s["probability"] for s in answer["n_best"]) == pytest.approx(1.0, abs=1e-3)


def test_squad_recipe_trains_and_scores_under_an_embedding_attack(tmp_path, monkeypatch, minilm_dir):
    """The adversarial option reaches question answering through FinetuneTask: FGM adds its term to the
    training loss (train_adv_loss logged) and attack_eval scores the same questions under attack
    (val_adv_em / val_adv_f1 / val_adv_loss, the attacked loss above the clean one)."""
    shared_file("squad/dev-v1.1.json")
    monkeypatch.chdir(REPO)
    main(
        [
            "fit",
            "--config",
            RECIPE,
            *_shortened(tmp_path),
            "--model.init_args.adversarial.method=fgm",
            "--model.init_args.adversarial.epsilon=1.0",
            "--model.init_args.adversarial.attack_eval=true",
        ]
    )
    (version,) = (tmp_path / "logs").iterdir()
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    assert any(row.get("train_adv_loss") for row in rows)
    (scored,) = [row for row in rows if row.get("val_adv_f1")]
    assert 0 <= float(scored["val_adv_em"]) <= float(scored["val_adv_f1"]) <= 100
    assert float(scored["val_adv_loss"]) > float(scored["val_loss"])
