"""Perplexity on a file: strided sliding-window scoring equals a direct per-token computation, unknown
characters are counted and never scored, and `zoo test --data.init_args.test_file` reports it all."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import cpu_trainer
from torchmetrics import Metric

from zoo.cli import main
from zoo.data import TextDataModule
from zoo.models.gpt2 import GPT2
from zoo.tasks import CausalLM

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "gpt2" / "shakespeare-char.yaml"
TRAIN_TEXT = "".join(
    f"{i}: The quick brown fox jumps over the lazy dog, 'Whether', quoth he.\n" for i in range(30)
)
HELD_OUT = "Whether 'tis nobler in the mind to suffer\nThe slings and arrows of outrageous fortune,\n"


def _data(tmp_path: Path, test_text: str, **kw) -> TextDataModule:
    corpus, held_out = tmp_path / "train.txt", tmp_path / "held_out.txt"
    corpus.write_text(TRAIN_TEXT, encoding="utf-8")
    held_out.write_text(test_text, encoding="utf-8")
    kw.setdefault("max_seq_len", 16)
    return TextDataModule(
        [str(corpus)], test_file=str(held_out), eval_batch_size=3, cache_dir=str(tmp_path / "cache"), **kw
    )


def _tiny_lm(vocab_size: int, max_seq_len: int = 16) -> CausalLM:
    torch.manual_seed(0)
    gpt2 = GPT2(vocab_size=vocab_size, max_seq_len=max_seq_len, embed_dim=32, num_heads=4, num_layers=2)
    return CausalLM(gpt2).double()  # float64: the sums below agree to 1e-5 without rounding noise


def _zoo_test_sums(model: CausalLM, dm: TextDataModule, tmp_path: Path) -> tuple[float, int]:
    """Total NLL and scored-token count from `Trainer.test`, as a user runs it."""
    for metric in model.modules():
        if isinstance(metric, Metric):
            metric.set_dtype(torch.float64)
    result = cpu_trainer(tmp_path).test(model, datamodule=dm, verbose=False)[0]
    assert result["test_ppl"] == pytest.approx(math.exp(result["test_loss"]), rel=1e-6)
    return result["test_loss"] * result["test_tokens"], round(result["test_tokens"])


def _direct_sums(model: CausalLM, tokens: list[int], T: int, stride: int, skip: int | None = None):
    """The definition, one token at a time: token ``i`` (1 <= i < N) is predicted from ``tokens[s:i]``,
    where ``s = 0`` while ``i <= T``, else the start of the first window of ``T`` tokens, starting at a
    multiple of ``stride`` (or at ``N - 1 - T`` for the last one), whose targets reach ``i``."""
    n, total, count = len(tokens), 0.0, 0
    with torch.no_grad():
        for i in range(1, n):
            if tokens[i] == skip:
                continue
            s = 0 if i <= T else min(math.ceil((i - T) / stride) * stride, n - 1 - T)
            assert min(i, T - stride + 1) <= i - s <= T  # the promised context, within the positions
            logits = model.backbone(torch.tensor([tokens[s:i]]))[0, -1]  # (V,)
            total -= logits.log_softmax(-1)[tokens[i]].item()
            count += 1
    return total, count


@pytest.mark.parametrize("stride", [5, 16], ids=["overlapping", "stride == max_seq_len"])
def test_sliding_window_scores_equal_the_direct_per_token_computation(tmp_path, stride):
    dm = _data(tmp_path, HELD_OUT * 2, test_stride=stride)  # 171 tokens: 1 full window + ...
    model = _tiny_lm(dm.vocab_size)
    nll, count = _zoo_test_sums(model, dm, tmp_path)
    tokens = dm.encode(HELD_OUT * 2)
    direct_nll, direct_count = _direct_sums(model, tokens, 16, stride)
    assert count == direct_count == len(tokens) - 1  # every token but the first, exactly once
    assert nll == pytest.approx(direct_nll, abs=1e-5)


def test_a_file_shorter_than_one_window_is_one_short_window(tmp_path):
    dm = _data(tmp_path, "To be\n", test_stride=4)  # 6 tokens < max_seq_len 16
    model = _tiny_lm(dm.vocab_size)
    nll, count = _zoo_test_sums(model, dm, tmp_path)
    direct_nll, direct_count = _direct_sums(model, dm.encode("To be\n"), 16, 4)
    assert count == direct_count == 5
    assert nll == pytest.approx(direct_nll, abs=1e-5)
    assert len(dm.test_set) == 1 and dm.test_set[0]["input_ids"].shape == (5,)


def test_windows_mark_context_only_labels_with_minus_100(tmp_path):
    from zoo.data.text import SlidingWindows

    tokens = torch.arange(23).numpy()  # 22 targets, T = 8, stride 5: windows at 0, 5, 10, 14
    windows = SlidingWindows(tokens, block_size=8, stride=5)
    assert [windows.start(i) for i in range(len(windows))] == [0, 5, 10, 14]
    labels = [windows[i]["labels"].tolist() for i in range(len(windows))]
    assert labels[0] == list(range(1, 9))
    assert labels[1] == [-100, -100, -100] + list(range(9, 14))
    assert labels[2] == [-100, -100, -100] + list(range(14, 19))
    assert labels[3] == [-100] * 4 + list(range(19, 23))  # the last window ends at the last token
    assert windows[3]["input_ids"].tolist() == list(range(14, 22))
    scored = sorted(t for item in labels for t in item if t != -100)
    assert scored == list(range(1, 23))  # each target exactly once


def test_unknown_characters_are_counted_reported_and_not_scored(tmp_path, capsys):
    text = HELD_OUT.replace("nobler", "n€bler").replace("arrows", "arr€ws ж")  # € x2 and ж: not in vocab
    dm = _data(tmp_path, text)
    model = _tiny_lm(dm.vocab_size)
    nll, count = _zoo_test_sums(model, dm, tmp_path)
    report = [line for line in capsys.readouterr().err.splitlines() if "cannot represent" in line]
    held_out = tmp_path / "held_out.txt"
    assert report == [
        f"zoo: {held_out}: the tokenizer cannot represent 3 character(s) ('€' x2, 'ж' x1), first at "
        f"{held_out}:1; they are read as <unk> and never scored or trained on (their labels are -100)"
    ]
    tokens = dm.encode(text)
    unk = dm.tokenizer.token_to_id("<unk>")
    assert tokens.count(unk) == 3  # the context keeps its length: <unk> stands in the input
    direct_nll, direct_count = _direct_sums(model, tokens, 16, 16, skip=unk)
    assert count == direct_count == len(tokens) - 1 - 3
    assert nll == pytest.approx(direct_nll, abs=1e-5)
    # the second run reads the cache and still reports, once
    dm2 = _data(tmp_path, text)
    dm2.prepare_data()
    dm2.setup("test")
    assert capsys.readouterr().err.count("cannot represent 3 character(s)") == 1


def test_zoo_test_scores_a_held_out_file_with_the_checkpoints_tokenizer(tmp_path, capsys, monkeypatch):
    """The documented workflow: `zoo fit` the shakespeare recipe, then `zoo test --ckpt_path ...
    --data.init_args.test_file FILE`; the logged numbers are those of the checkpoint on that file."""
    monkeypatch.chdir(tmp_path)  # the recipe's relative output paths land in tmp_path
    dm = _data(tmp_path, HELD_OUT, max_seq_len=64)
    data = [
        f"--data.init_args.files=[{tmp_path / 'train.txt'}]",
        f"--data.init_args.cache_dir={dm.cache_dir}",
    ]
    small = ["--trainer.accelerator=cpu", "--trainer.max_steps=2", "--trainer.val_check_interval=2"]
    small += ["--data.init_args.batch_size=4", "--model.init_args.backbone.init_args.num_layers=1"]
    main(["fit", "--config", str(RECIPE), *data, *small])
    (last,) = tmp_path.rglob("last.ckpt")
    test_file = ["--data.init_args.test_file", str(tmp_path / "held_out.txt")]
    main(["test", "--config", str(RECIPE), "--ckpt_path", str(last), *data, *test_file, *small])
    (metrics_csv,) = [p for p in tmp_path.rglob("metrics.csv") if "test_loss" in p.read_text()]
    with open(metrics_csv, newline="") as f:
        logged = next(row for row in csv.DictReader(f) if row["test_loss"])
    model = CausalLM.load_from_checkpoint(last, weights_only=True)
    expected = cpu_trainer(tmp_path).test(model, datamodule=dm, verbose=False)[0]
    assert int(float(logged["test_tokens"])) == len(HELD_OUT) - 1 == expected["test_tokens"]
    assert float(logged["test_loss"]) == pytest.approx(expected["test_loss"], abs=1e-5)
    assert float(logged["test_ppl"]) == pytest.approx(math.exp(expected["test_loss"]), rel=1e-5)
    # another corpus builds another tokenizer: refused, not scored with the wrong ids
    (tmp_path / "other.txt").write_text("xyz!\n" * 100, encoding="utf-8")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["test", "--config", str(RECIPE), "--ckpt_path", str(last), *test_file, *small]
            + [f"--data.init_args.files=[{tmp_path / 'other.txt'}]", data[1]]
        )
    assert exit_info.value.code == 1
    assert "different tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "T"])
def test_a_file_with_fewer_than_two_tokens_is_named(tmp_path, text):
    dm = _data(tmp_path, text)
    dm.prepare_data()
    with pytest.raises(ValueError, match=f"{tmp_path / 'held_out.txt'}: {len(text)} token\\(s\\), too few"):
        dm.setup("test")
