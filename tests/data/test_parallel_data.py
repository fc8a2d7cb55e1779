"""Parallel text: joint BPE, collated batches, token-budget batching, and what bad input does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file

from zoo.data.pairs import TranslationCollator
from zoo.data.parallel import ParallelTextDataModule, read_pairs
from zoo.data.resumable import TrainPosition
from zoo.data.token_budget import TokenBudgetSampler


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def _multi30k_subset(tmp_path: Path, n: int = 2000) -> tuple[list[str], list[str]]:
    de = shared_file("multi30k/train.de").read_text(encoding="utf-8").split("\n")[:n]
    en = shared_file("multi30k/train.en").read_text(encoding="utf-8").split("\n")[:n]
    train = [_write(tmp_path / "train.de", de[200:]), _write(tmp_path / "train.en", en[200:])]
    val = [_write(tmp_path / "val.de", de[:200]), _write(tmp_path / "val.en", en[:200])]
    return train, val


def _data(train: list[str], val: list[str], tmp_path: Path, **kw) -> ParallelTextDataModule:
    args = dict(bpe_vocab_size=600, max_seq_len=64, max_tokens=512, cache_dir=str(tmp_path / "cache"))
    return ParallelTextDataModule(train, val, **{**args, **kw})


def test_multi30k_pairs_become_batches(tmp_path):
    train, val = _multi30k_subset(tmp_path)
    dm = _data(train, val, tmp_path, max_seq_len=128, max_tokens=1024)
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.pad_token_id, dm.bos_token_id, dm.eos_token_id) == (0, 1, 2) and dm.vocab_size == 600
    german = "Ein Mädchen in einem Straßencafé isst ein großes Eis."
    assert dm.decode(dm.encode(german)) == german  # byte-level BPE round-trips any text
    assert dm.stats["train"]["kept"] == 1800 and dm.stats["val"]["kept"] == 200
    batch = next(iter(dm.val_dataloader()))
    B, S = batch["input_ids"].shape
    assert B * max(S, batch["labels"].shape[1]) <= 1024
    for i in range(B):
        n = int(batch["attention_mask"][i].sum())
        src = batch["input_ids"][i, :n].tolist()
        assert (
            src[-1] == dm.eos_token_id
            and dm.eos_token_id not in src[:-1]
            and (batch["input_ids"][i, n:] == 0).all()
        )
        labels = batch["labels"][i][batch["labels"][i] != -100].tolist()
        decoder_input = batch["decoder_input_ids"][i, : len(labels)].tolist()
        assert (
            decoder_input[0] == dm.bos_token_id
            and decoder_input[1:] == labels[:-1]
            and labels[-1] == dm.eos_token_id
        )
        reference = Path(val[1]).read_text(encoding="utf-8").split("\n")[int(batch["index"][i])]
        assert batch["references"][i] == reference and dm.decode(labels) == reference
    state = dm.state_dict()  # the tokenizer travels with checkpoints
    assert state["tokenizer"] == dm.tokenizer.to_str()


def _lengths(n: int = 1000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, 60, size=n)


def _padding(batches: list[list[int]], lengths: np.ndarray) -> float:
    used = sum(len(b) * lengths[b].max() for b in batches)
    return 1 - sum(lengths[b].sum() for b in batches) / used


def test_token_budget_batches_respect_the_budget_and_cover_every_pair_once():
    lengths = _lengths()
    sampler = TokenBudgetSampler(lengths, max_tokens=512, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert all(len(b) * lengths[b].max() <= 512 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert _padding(batches, lengths) < 0.05  # length-bucketed
    shuffled = np.random.default_rng(0).permutation(len(lengths))  # what same-size random batches waste
    assert _padding([shuffled[i : i + 10] for i in range(0, len(lengths), 10)], lengths) > 0.3


def test_token_budget_order_depends_on_seed_and_epoch_only():
    lengths = _lengths()
    first = list(TokenBudgetSampler(lengths, max_tokens=512, seed=3))
    assert list(TokenBudgetSampler(lengths, max_tokens=512, seed=3)) == first
    assert list(TokenBudgetSampler(lengths, max_tokens=512, seed=4)) != first
    sampler = TokenBudgetSampler(lengths, max_tokens=512, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert [len(b) for b in sorted(first)] != [len(b) for b in first]  # batches come shuffled
    ordered = list(TokenBudgetSampler(lengths, max_tokens=512, shuffle=False))
    assert [lengths[b].max() for b in ordered] == sorted(lengths[b].max() for b in ordered)


@pytest.mark.parametrize("world", [2, 3, 7])
def test_token_budget_ranks_read_disjoint_equal_shares(world):
    lengths = _lengths(n=997)
    shares = [
        list(TokenBudgetSampler(lengths, max_tokens=512, seed=1, num_replicas=world, rank=r))
        for r in range(world)
    ]
    assert len({len(s) for s in shares}) == 1  # every rank runs the same number of steps
    seen = [i for share in shares for b in share for i in b]
    assert sorted(seen) == list(range(997))  # disjoint, and together every pair once
    assert all(len(b) * lengths[b].max() <= 512 for share in shares for b in share)


def test_token_budget_resumes_mid_epoch():
    lengths = _lengths()
    sampler = TokenBudgetSampler(lengths, max_tokens=512, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume_from(TrainPosition(epoch=2, batches=5))
    assert list(sampler) == full[5:]
    assert list(sampler) == full  # only the resumed epoch is shortened
    with pytest.raises(ValueError, match="needs 80 positions, more than max_tokens=64"):
        list(TokenBudgetSampler(np.array([3, 80]), max_tokens=64))


def test_mismatched_line_counts_name_both_files(tmp_path):
    de = _write(tmp_path / "a.de", ["eins", "zwei", "drei"])
    en = _write(tmp_path / "a.en", ["one", "two"])
    with pytest.raises(ValueError, match=r"a\.de has 3 lines but .*a\.en has 2"):
        read_pairs([Path(de), Path(en)])


def test_tsv_pairs_and_malformed_tsv(tmp_path):
    good = _write(tmp_path / "p.tsv", ["eins\tone", "zwei \t two"])
    assert read_pairs([Path(good)]) == (["eins", "zwei"], ["one", "two"])
    bad = _write(tmp_path / "bad.tsv", ["eins\tone", "zwei two"])
    with pytest.raises(ValueError, match=r"bad\.tsv:2: expected 'source<TAB>target', found 0 tabs"):
        read_pairs([Path(bad)])


def _words(n: int, k: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{j}" for j in rng.integers(0, 30, size=rng.integers(1, k))) for _ in range(n)]


def test_empty_and_long_training_pairs_are_dropped_and_counted(tmp_path):
    src, tgt = _words(300, 8, 0), _words(300, 8, 1)
    src[5], tgt[9] = "", " "  # an empty side each
    src[7] = " ".join(["w1"] * 200)  # far longer than 32 positions
    train = [_write(tmp_path / "t.de", src), _write(tmp_path / "t.en", tgt)]
    val = [_write(tmp_path / "v.de", src[10:20]), _write(tmp_path / "v.en", tgt[10:20])]
    dm = _data(train, val, tmp_path, max_seq_len=32, bpe_vocab_size=300)
    dm.prepare_data()
    dm.setup("fit")
    counts = {k: dm.stats["train"][k] for k in ("pairs", "dropped_empty", "dropped_too_long", "kept")}
    assert counts == {"pairs": 300, "dropped_empty": 2, "dropped_too_long": 1, "kept": 297}
    assert len(dm.datasets["train"]) == 297 and dm.datasets["train"].lengths().max() <= 32


def test_empty_evaluation_line_is_an_error_naming_file_and_line(tmp_path):
    src, tgt = _words(50, 8, 0), _words(50, 8, 1)
    train = [_write(tmp_path / "t.de", src), _write(tmp_path / "t.en", tgt)]
    tgt[3] = ""
    val = [_write(tmp_path / "v.de", src), _write(tmp_path / "v.en", tgt)]
    dm = _data(train, val, tmp_path, bpe_vocab_size=300)
    with pytest.raises(ValueError, match=r"v\.en:4: empty target line \(1 in all\) in an evaluation set"):
        dm.prepare_data()


def test_long_evaluation_and_predict_sources_are_truncated_and_counted(tmp_path):
    src, tgt = _words(50, 8, 0), _words(50, 8, 1)
    src[2] = " ".join(["w1"] * 100)
    train = [_write(tmp_path / "t.de", src), _write(tmp_path / "t.en", tgt)]
    val = [_write(tmp_path / "v.de", src), _write(tmp_path / "v.en", tgt)]
    dm = _data(train, val, tmp_path, bpe_vocab_size=300, max_seq_len=16, predict_file=val[0])
    dm.prepare_data()
    dm.setup("validate")
    assert dm.stats["val"]["truncated_sources"] == 1 and dm.stats["val"]["truncated_targets"] == 0
    assert dm.datasets["val"].lengths().max() <= 16 and len(dm.datasets["val"]) == 50
    assert dm.datasets["val"].references[2] == tgt[2]  # the BLEU reference stays whole
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["input_ids"].shape == (50, 16) and batch["index"].tolist() == list(range(50))  # file order
    assert set(batch) == {"input_ids", "attention_mask", "index"}


def test_collator_pads_both_sides():
    import torch

    collate = TranslationCollator(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    batch = collate(
        [
            {"index": 0, "source": torch.tensor([5, 6, 7]), "target": torch.tensor([8])},
            {"index": 1, "source": torch.tensor([9]), "target": torch.tensor([10, 11, 12])},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2], [9, 2, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["decoder_input_ids"].tolist() == [[1, 8, 0, 0], [1, 10, 11, 12]]
    assert batch["labels"].tolist() == [[8, 2, -100, -100], [10, 11, 12, 2]]


def test_data_module_resumes_its_training_order_from_a_checkpoint(tmp_path):
    src, tgt = _words(400, 8, 0), _words(400, 8, 1)
    train = [_write(tmp_path / "t.de", src), _write(tmp_path / "t.en", tgt)]
    dm = _data(train, train, tmp_path, bpe_vocab_size=300, max_tokens=256, seed=7)
    dm.prepare_data()
    dm.setup("fit")
    full = [batch["index"].tolist() for batch in dm.train_dataloader()]
    assert sorted(i for b in full for i in b) == list(range(400))
    resumed = _data(train, train, tmp_path, bpe_vocab_size=300, max_tokens=256, seed=7)
    resumed.load_state_dict(
        {"tokenizer": dm.tokenizer.to_str(), "train_position": {"epoch": 0, "batches": 3}}
    )
    resumed.setup("fit")
    assert [batch["index"].tolist() for batch in resumed.train_dataloader()] == full[3:]


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be a positive integer, got 0"),
        ({"predict_batch_size": -1}, "predict_batch_size must be a positive integer, got -1"),
        ({"num_workers": -1}, "num_workers must be >= 0, got -1"),
    ],
)
def test_bad_sizes_are_named_at_construction(argument, message):
    with pytest.raises(ValueError, match=f"ParallelTextDataModule: {message}"):
        ParallelTextDataModule(["a.de", "a.en"], ["b.de", "b.en"], **argument)
