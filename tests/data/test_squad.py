"""SQuAD windows: labels that map back to the gold text through the offsets, windows that cover every
context token with the stride, article splits of one file, and errors that name the file and question."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_file

from zoo.data import QuestionAnsweringDataModule
from zoo.data.squad import read_squad

DEV = "squad/dev-v1.1.json"


def _module(tokenizer: str, **kwargs) -> QuestionAnsweringDataModule:
    return QuestionAnsweringDataModule(tokenizer=tokenizer, **kwargs)


def _labelled_windows(dm: QuestionAnsweringDataModule, split: str) -> list[list[dict]]:
    """Per question of ``split``, its windows."""
    items = dm._datasets[split].items
    if split != "fit":
        return [item["windows"] for item in items]
    grouped: dict[int, list[dict]] = {}
    for window in items:
        grouped.setdefault(window["index"], []).append(window)
    return [grouped[i] for i in range(len(dm.questions[split]))]


def test_every_gold_answer_that_fits_a_window_is_recovered_from_its_labels(minilm_dir):
    """Three real articles (1,169 questions) cut into short windows: each question's first answer is
    labelled in a window whenever its tokens fit one (at most room - stride + 1 tokens: the stride
    guarantees it), and the labels map back through the offsets to exactly the gold text whenever the
    answer starts and ends at token boundaries; otherwise to the whole tokens around it (a few cases)."""
    path = shared_file(DEV)
    dm = _module(
        str(minilm_dir),
        train_file=str(path),
        train_articles="0:3",
        max_seq_len=96,
        doc_stride=32,
        max_question_len=32,
    )
    dm.setup("fit")
    questions = dm.questions["fit"]
    assert len(questions) == 810 + 247 + 112
    exact = inexact = 0
    for question, windows in zip(questions, _labelled_windows(dm, "fit")):
        gold = question.answers[0].strip()
        start = question.context.index(gold, question.answer_starts[0])
        offsets = dm.tokenizer.encode(question.context, add_special_tokens=False).offsets
        tokens = [i for i, (a, b) in enumerate(offsets) if a < start + len(gold) and b > start]
        asked = dm.tokenizer.encode(question.question, add_special_tokens=False).ids
        room = 96 - min(len(asked), 32) - 3
        labelled = [w for w in windows if w["labels"] != [0, 0]]
        if len(tokens) <= room - 32 + 1:
            assert labelled, f"{question.id}: answer of {len(tokens)} tokens in no window"
        for window in labelled:
            first, last = window["labels"]
            assert window["token_type_ids"][first] == 1 and window["offset_start"][first] >= 0
            text = question.context[window["offset_start"][first] : window["offset_end"][last]]
            aligned = offsets[tokens[0]][0] == start and offsets[tokens[-1]][1] == start + len(gold)
            if aligned:
                assert text == gold, question.id
                exact += 1
            else:
                assert gold in text, question.id
                inexact += 1
    assert exact > 1000 and inexact < 0.02 * exact


def test_windows_cover_every_context_token_with_the_stride(minilm_dir):
    """Long real contexts in windows of 64 tokens: question first (segment 0) after [CLS], context second
    (segment 1), consecutive windows starting doc_stride tokens apart, and every context token in a
    window, the last one included."""
    path = shared_file(DEV)
    dm = _module(
        str(minilm_dir),
        val_file=str(path),
        val_articles=["Warsaw"],
        max_seq_len=64,
        doc_stride=20,
        max_question_len=32,
    )
    dm.setup("validate")
    cls, sep = dm.tokenizer.token_to_id("[CLS]"), dm.tokenizer.token_to_id("[SEP]")
    several = 0
    for question, windows in zip(dm.questions["validate"], _labelled_windows(dm, "validate")):
        offsets = dm.tokenizer.encode(question.context, add_special_tokens=False).offsets
        covered: list[tuple[int, int]] = []
        firsts = []
        for window in windows:
            ids, segments = window["input_ids"], window["token_type_ids"]
            assert len(ids) <= 64 and ids[0] == cls and ids[-1] == sep
            context = [i for i, a in enumerate(window["offset_start"]) if a >= 0]
            assert all(segments[i] == 1 for i in context) and segments[: context[0]] == [0] * context[0]
            spans = list(zip(window["offset_start"], window["offset_end"]))
            firsts.append(offsets.index(spans[context[0]]))
            covered += [spans[i] for i in context]
        assert sorted(set(covered)) == sorted(set(offsets)), question.id
        assert all(b - a == 20 for a, b in zip(firsts, firsts[1:]))
        several += len(windows) > 1
    assert several > 100  # the check ran on many multi-window questions


def test_an_article_split_of_one_file_selects_disjoint_questions(minilm_dir):
    path = shared_file(DEV)
    dm = _module(
        str(minilm_dir),
        train_file=str(path),
        val_file=str(path),
        train_articles="0:38",
        val_articles="38:",
        max_seq_len=128,
        doc_stride=48,
    )
    dm.setup("fit")
    train, val = dm.questions["fit"], dm.questions["validate"]
    assert (len(train), len(val)) == (8582, 1988)
    assert {q.id for q in train}.isdisjoint(q.id for q in val)
    assert "'Force'" in val[-1].where and "'Intergovernmental_Panel_on_Climate_Change'" in val[0].where


@pytest.mark.parametrize(
    "train, val, message",
    [
        ("0:5", "3:48", "val_articles and train_articles share .* questions of"),
        ("0:2", ["Kenya", "Nope"], "val_articles: no article titled 'Nope' in"),
        ("0:2", "60:70", "val_articles='60:70' selects no article of .* \\(48 articles\\)"),
    ],
)
def test_bad_article_selections_name_the_key(minilm_dir, train, val, message):
    path = shared_file(DEV)
    dm = _module(
        str(minilm_dir), train_file=str(path), val_file=str(path), train_articles=train, val_articles=val
    )
    with pytest.raises(ValueError, match=message):
        dm.setup("fit")


def test_an_unquoted_yaml_slice_is_refused_naming_the_key():
    """YAML reads ``0:38`` unquoted as the base-60 number 38: refused, not taken as article 38."""
    with pytest.raises(ValueError, match="train_articles='38' is not an article slice .* quote the slice"):
        _module("unused", train_articles="38")
    with pytest.raises(ValueError, match="doc_stride must be a positive integer, got 0"):
        _module("unused", doc_stride=0)
    with pytest.raises(ValueError, match="batching 'packed' is not supported"):
        _module("unused", batching="packed")


def test_a_stride_longer_than_a_window_is_refused(minilm_dir, tmp_path):
    path = _squad_file(tmp_path, [_article("A", "Some context here.", [("q1", "What?", "context", 5)])])
    dm = _module(str(minilm_dir), train_file=str(path), max_seq_len=64, max_question_len=32, doc_stride=40)
    with pytest.raises(ValueError, match=r"doc_stride=40 is more than a window's room .* = 29\)"):
        dm.setup("fit")


def _article(title: str, context: str, qas: list[tuple[str, str, str, int]]) -> dict:
    return {
        "title": title,
        "paragraphs": [
            {
                "context": context,
                "qas": [
                    {"id": qid, "question": q, "answers": [{"text": text, "answer_start": start}]}
                    for qid, q, text, start in qas
                ],
            }
        ],
    }


def _squad_file(tmp_path: Path, articles: list[dict]) -> Path:
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": articles, "version": "1.1"}), encoding="utf-8")
    return path


def test_bad_squad_files_name_the_file_the_article_and_the_question(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [\n{"title": "A",\n "paragraphs": [}]}', encoding="utf-8")
    with pytest.raises(ValueError, match=f"{broken}:3: invalid JSON"):
        read_squad(broken)
    good = _article("Rivers", "The Rhine flows north.", [("q1", "Which river?", "Rhine", 4)])
    path = _squad_file(tmp_path, [good])
    assert read_squad(path)[0].answers == ["Rhine"]
    no_question = json.loads(path.read_text())
    del no_question["data"][0]["paragraphs"][0]["qas"][0]["question"]
    path.write_text(json.dumps(no_question))
    with pytest.raises(
        ValueError, match=r"data.json: article 0 \('Rivers'\), question 'q1': no key 'question'"
    ):
        read_squad(path)
    misplaced = _article("Rivers", "The Rhine flows north.", [("q7", "Which river?", "Rhine", 3)])
    path = _squad_file(tmp_path, [misplaced])
    with pytest.raises(ValueError, match="question 'q7': answer 'Rhine' is not at answer_start=3"):
        read_squad(path)
    with pytest.raises(ValueError, match=r"data.json: the top level .*: no key 'data'"):
        path.write_text("[]")
        read_squad(path)


def test_a_jsonl_predict_file_names_its_bad_line(minilm_dir, tmp_path):
    path = tmp_path / "ask.jsonl"
    path.write_text(
        '{"context": "Paris is in France.", "question": "Where is Paris?"}\n\n{"question": "?"}\n'
    )
    dm = _module(str(minilm_dir), predict_file=str(path))
    with pytest.raises(ValueError, match=f"{path}:3: no key 'context'"):
        dm.setup("predict")
