"""SpanF1 equals seqeval (strict IOB2 and conlleval modes), ignores -100 and sums right across processes."""

from __future__ import annotations

import json
import random
import socket
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics import classification_report
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, Tokens

from zoo.tasks.metrics import SpanF1, iob2_spans

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
TYPES = ["LOC", "MISC", "PER"]
MODES = ["strict", "conlleval"]
Sentences = list[list[str]]


def seqeval_scores(gold: Sentences, pred: Sentences, *, mode: str) -> dict[str, float]:
    """seqeval's micro and per-type scores, in SpanF1's key names (types seqeval does not report left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning on 0/0: seqeval then reports 0, as we do
        report = classification_report(
            gold, pred, output_dict=True, mode="strict" if mode == "strict" else None, scheme=IOB2
        )
    micro = report.pop("micro avg")
    out = {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1-score"]}
    for name in TYPES:
        if name in report:
            row = report[name]
            out |= {f"precision_{name}": row["precision"], f"recall_{name}": row["recall"]}
            out[f"f1_{name}"] = row["f1-score"]
    return out


def to_batch(
    gold: Sentences, pred: Sentences, *, holes: list[list[int]] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) id tensors, right-padded with -100; ``holes[b]`` adds ignored positions inside row b too."""
    rows = []
    for b, (g, p) in enumerate(zip(gold, pred)):
        g_ids, p_ids = [LABELS.index(t) for t in g], [LABELS.index(t) for t in p]
        for i in sorted(holes[b] if holes else [], reverse=True):
            i = min(i, len(g_ids))
            g_ids.insert(i, -100)
            p_ids.insert(i, 99)  # a prediction under an ignored position is never looked at
        rows.append((g_ids, p_ids))
    width = max((len(g) for g, _ in rows), default=0)
    target = torch.tensor([g + [-100] * (width - len(g)) for g, _ in rows], dtype=torch.long)
    preds = torch.tensor([p + [0] * (width - len(p)) for _, p in rows], dtype=torch.long)
    return preds.reshape(len(rows), width), target.reshape(len(rows), width)


def assert_matches_seqeval(
    result: dict[str, torch.Tensor], gold: Sentences, pred: Sentences, mode: str
) -> None:
    expected = seqeval_scores(gold, pred, mode=mode)
    assert set(result) == {
        f"{m}{s}" for m in ("precision", "recall", "f1") for s in ["", *(f"_{t}" for t in TYPES)]
    }
    for key, value in result.items():
        # a type in neither gold nor predictions is absent from seqeval's report: 0 by the 0/0 rule
        assert value.item() == pytest.approx(expected.get(key, 0.0), abs=1e-6), key


def test_known_answers():
    # seqeval's documented example: MISC 1 of 2 right each way, PER right; micro 2/3
    gold = [["O", "O", "B-MISC", "I-MISC", "B-MISC", "O", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "B-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    metric = SpanF1(LABELS)
    metric.update(*to_batch(gold, pred))
    result = {k: round(v.item(), 6) for k, v in metric.compute().items()}
    assert result["f1"] == result["precision"] == result["recall"] == round(2 / 3, 6)
    assert (result["f1_MISC"], result["f1_PER"], result["f1_LOC"], result["recall_LOC"]) == (
        0.5,
        1.0,
        0.0,
        0.0,
    )


def test_modes_differ_on_stray_inside_tags():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC", "I-MISC"]]  # stray I-PER; I-MISC cuts LOC short
    scores = {}
    for mode in MODES:
        metric = SpanF1(LABELS, mode=mode)
        metric.update(*to_batch(gold, pred))
        scores[mode] = {k: v.item() for k, v in metric.compute().items()}
    # strict: predicted {LOC 3-4}, nothing right; conlleval: {PER 0-2 (right), LOC 3-4, MISC 4-5}
    assert scores["strict"]["precision"] == 0 and scores["strict"]["f1"] == 0
    assert scores["conlleval"]["precision"] == pytest.approx(1 / 3)
    assert scores["conlleval"]["recall"] == pytest.approx(1 / 2)
    assert scores["conlleval"]["f1_PER"] == 1 and scores["conlleval"]["precision_MISC"] == 0


@pytest.mark.parametrize(
    "tags, strict, conlleval",
    [
        ([], set(), set()),
        (["O", "O"], set(), set()),
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 2), ("LOC", 3, 4)}, {("PER", 0, 2), ("LOC", 3, 4)}),
        (["B-PER", "B-PER", "I-PER"], {("PER", 0, 1), ("PER", 1, 3)}, {("PER", 0, 1), ("PER", 1, 3)}),
        (["O", "I-PER", "I-PER"], set(), {("PER", 1, 3)}),
        (["I-PER"], set(), {("PER", 0, 1)}),
        (
            ["B-PER", "I-LOC", "I-LOC", "I-PER"],
            {("PER", 0, 1)},
            {("PER", 0, 1), ("LOC", 1, 3), ("PER", 3, 4)},
        ),
        (["I-LOC", "B-LOC", "I-LOC"], {("LOC", 1, 3)}, {("LOC", 0, 1), ("LOC", 1, 3)}),
    ],
)
def test_iob2_spans(tags, strict, conlleval):
    assert iob2_spans(tags, mode="strict") == strict
    assert iob2_spans(tags, mode="conlleval") == conlleval


@pytest.mark.parametrize(
    "bad", ["E-PER", "S-PER", "U-PER", "L-PER", "B-", "B--PER", "I-PER-", "PER", "o", "B_PER"]
)
def test_non_iob2_labels_are_rejected_at_construction(bad):
    with pytest.raises(ValueError, match="not an IOB2 tag"):
        SpanF1(["O", "B-PER", "I-PER", bad])
    with pytest.raises(ValueError, match="not an IOB2 tag"):
        iob2_spans(["O", bad])


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        SpanF1(LABELS, mode="lenient")
    metric = SpanF1(LABELS)
    with pytest.raises(ValueError, match=r"must both be \(B, T\)"):
        metric.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="label id 7 out of range for 7 labels"):
        metric.update(torch.tensor([[7, 0]]), torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match="label id -1 out of range"):
        metric.update(torch.tensor([[0, 0]]), torch.tensor([[1, -1]]))


def test_ignored_positions_are_removed_not_read_as_outside():
    metric = SpanF1(LABELS, mode="conlleval")
    metric.update(torch.tensor([[1, 99, 2, 0]]), torch.tensor([[1, -100, 2, -100]]))
    assert metric.num_gold.tolist() == [0, 0, 1] and metric.compute()["f1"] == 1  # B-PER I-PER: one PER
    metric.update(torch.tensor([[1, 0, 2]]), torch.tensor([[1, 0, 2]]))  # the hole read as O: two entities
    assert metric.num_gold.tolist() == [0, 0, 3] and metric.tp.tolist() == [0, 0, 3]


def test_only_outside_gives_zero_like_seqeval():
    metric = SpanF1(LABELS)
    metric.update(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long))
    assert all(v.item() == 0 for v in metric.compute().values())
    assert seqeval_scores([["O"] * 5] * 2, [["O"] * 5] * 2, mode="strict") == {
        "precision": 0,
        "recall": 0,
        "f1": 0,
    }


tag = st.sampled_from(LABELS)


@st.composite
def tagged_pairs(draw) -> tuple[Sentences, Sentences, list[list[int]]]:
    """Random gold/predicted tag sequences (any transition, valid or not) and ignored positions per row."""
    lengths = draw(st.lists(st.integers(0, 10), min_size=1, max_size=6))
    gold = [draw(st.lists(tag, min_size=n, max_size=n)) for n in lengths]
    pred = [draw(st.lists(tag, min_size=n, max_size=n)) for n in lengths]
    holes = [draw(st.lists(st.integers(0, 10), max_size=3)) for _ in lengths]
    return gold, pred, holes


@settings(max_examples=150, deadline=None)
@given(st.lists(tag, max_size=14))
def test_iob2_spans_equal_seqeval_entities(tags):
    strict = {(e.tag, e.start, e.end) for e in Tokens(tags, IOB2).entities}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conlleval = {(t, start, end + 1) for t, start, end in get_entities(tags)}
    assert iob2_spans(tags, mode="strict") == strict
    assert iob2_spans(tags, mode="conlleval") == conlleval


@settings(max_examples=100, deadline=None)
@given(tagged_pairs(), st.sampled_from(MODES))
def test_equals_seqeval(data, mode):
    gold, pred, holes = data
    metric = SpanF1(LABELS, mode=mode)
    metric.update(*to_batch(gold, pred, holes=holes))
    assert_matches_seqeval(metric.compute(), gold, pred, mode)


def random_corpus(seed: int, n: int) -> tuple[Sentences, Sentences]:
    """Entity-rich gold tags and predictions that copy them with ~20% of tags replaced at random."""
    rng = random.Random(seed)
    gold, pred = [], []
    for _ in range(n):
        g = [
            rng.choice(["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC"])
            for _ in range(rng.randint(1, 12))
        ]
        gold.append(g)
        pred.append([rng.choice(LABELS) if rng.random() < 0.2 else t for t in g])
    return gold, pred


@pytest.mark.parametrize("mode", MODES)
def test_halves_merged_equal_the_whole(mode):
    gold, pred = random_corpus(0, 40)
    whole, first, second = (SpanF1(LABELS, mode=mode) for _ in range(3))
    whole.update(*to_batch(gold, pred))
    first.update(*to_batch(gold[:25], pred[:25]))
    second.update(*to_batch(gold[25:], pred[25:]))
    for state in ("tp", "num_pred", "num_gold"):  # what dist_reduce_fx="sum" does across ranks
        torch.testing.assert_close(getattr(first, state) + getattr(second, state), getattr(whole, state))
    assert second.compute()["f1"] != whole.compute()["f1"]  # a half alone gives another answer
    first.merge_state(second)
    assert {k: v.item() for k, v in first.compute().items()} == {
        k: v.item() for k, v in whole.compute().items()
    }
    assert_matches_seqeval(first.compute(), gold, pred, mode)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, shards: list[list[tuple[Sentences, Sentences]]], out: str) -> None:
    """One gloo rank: update with this rank's batches, compute (which all-reduces), write the result."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        result = {}
        for mode in MODES:
            metric = SpanF1(LABELS, mode=mode)
            for gold, pred in shards[rank]:
                metric.update(*to_batch(gold, pred))
            result[mode] = {k: v.item() for k, v in metric.compute().items()}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_gloo_two_processes_equal_seqeval_on_the_union(tmp_path):
    gold, pred = random_corpus(1, 30)
    # uneven shards: rank 0 has three batches, rank 1 one batch of another width
    shards = [[(gold[i : i + 6], pred[i : i + 6]) for i in (0, 6, 12)], [(gold[18:], pred[18:])]]
    for mode in MODES:
        alone = seqeval_scores(gold[18:], pred[18:], mode=mode)["f1"]
        assert alone != pytest.approx(seqeval_scores(gold, pred, mode=mode)["f1"])  # so a missing sync shows
    torch.multiprocessing.spawn(_ddp_worker, args=(_free_port(), shards, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for mode in MODES:
            assert_matches_seqeval({k: torch.tensor(v) for k, v in result[mode].items()}, gold, pred, mode)
