"""ProgressMonitor: plain progress lines instead of a bar, tokens/s counted from the batch, MFU from the
model's FLOPs per token; the datasheet table's lookup by GPU name."""

from __future__ import annotations

import csv
import re
import textwrap

import pytest
import torch
from conftest import cpu_trainer
from torch.utils.data import DataLoader

from zoo.cli import main
from zoo.models.gpt2 import GPT2
from zoo.nn import LoRA
from zoo.tasks import CausalLM
from zoo.tasks.monitor import PEAK_FLOPS, ProgressMonitor, count_tokens, frozen_linear_weights, gpu_chip

PROGRESS = re.compile(
    r"step (\d+)/(\d+) \((\d+)%\) \| [\d,]+ tok/s \| MFU \d+\.\d% \| loss \d+\.\d{3} \| elapsed \d+:\d\d"
    r"( \| ETA \d+:\d\d)?"
)


def test_zoo_fit_prints_progress_lines_and_logs_throughput_and_mfu(
    stdlib_text_file, tmp_path, capsys, caplog
):
    config = tmp_path / "run.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            seed_everything: 0
            trainer:
              accelerator: cpu
              max_steps: 10
              val_check_interval: 10
              check_val_every_n_epoch: null
              limit_val_batches: 2
              log_every_n_steps: 5
              enable_checkpointing: false
              enable_progress_bar: true
              default_root_dir: {tmp_path / "run"}
              logger:
                class_path: lightning.pytorch.loggers.CSVLogger
                init_args: {{save_dir: {tmp_path / "logs"}, name: run}}
              callbacks:
                - class_path: zoo.tasks.monitor.ProgressMonitor
            model:
              class_path: zoo.tasks.CausalLM
              init_args:
                backbone:
                  class_path: zoo.models.gpt2.GPT2
                  init_args: {{max_seq_len: 32, embed_dim: 32, num_heads: 2, num_layers: 1}}
            data:
              class_path: zoo.data.TextDataModule
              init_args:
                files: [{stdlib_text_file}]
                max_seq_len: 32
                batch_size: 8
                cache_dir: {tmp_path / "cache"}
            """
        )
    )
    main(["fit", "--config", str(config)])
    # the model summary gives the training FLOPs per token MFU uses, not Lightning's "0 Total Flops"
    assert "Total Flops" not in caplog.text
    per_token = re.search(r"^(\S+(?: \w)?) +Training FLOPs per token$", caplog.text, re.MULTILINE)
    assert per_token, caplog.text
    assert float(per_token.group(1).split()[0]) > 0
    out = capsys.readouterr().out
    assert "\r" not in out  # lines a log file keeps, no redrawn bar
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert len(lines) == 2, out
    first, last = (PROGRESS.fullmatch(line) for line in lines)
    assert first and first.groups()[:3] == ("5", "10", "50") and first.group(4), lines[0]  # with an ETA
    assert last and last.groups()[:3] == ("10", "10", "100"), lines[1]
    assert re.search(r"^validation at step 10 \| val_loss \d", out, re.MULTILINE), out
    assert re.search(r"^done: 10 steps in \d+:\d\d", out, re.MULTILINE), out
    (metrics_file,) = (tmp_path / "logs").rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics_file.open()) if r.get("throughput/tokens_per_sec")]
    assert [int(r["step"]) for r in rows] == [4, 9]  # Lightning's 0-based logging steps 5 and 10
    for row in rows:
        tokens, samples = float(row["throughput/tokens_per_sec"]), float(row["throughput/samples_per_sec"])
        assert tokens == pytest.approx(32 * samples, rel=1e-4)  # packed text: every position is a token
        assert 0 < float(row["throughput/mfu"]) < 1  # against this CPU's measured matmul rate


class _PaddedBatches(torch.utils.data.Dataset):
    """Rows of 16 positions, the last 4 padding."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1, 50, (17,), generator=torch.Generator().manual_seed(i))
        mask = (torch.arange(16) < 12).long()
        return {
            "input_ids": ids[:-1] * mask,
            "attention_mask": mask,
            "labels": torch.where(mask.bool(), ids[1:], -100),
        }


def test_throughput_counts_non_padding_tokens_and_mfu_uses_the_model_flops(tmp_path, capsys):
    model = GPT2(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=2)
    monitor = ProgressMonitor(every_n_steps=5, peak_flops=2e11)
    trainer = cpu_trainer(tmp_path, max_epochs=1, enable_progress_bar=True, callbacks=[monitor])
    assert trainer.progress_bar_callback is monitor  # it replaces Lightning's bar
    trainer.fit(CausalLM(model), DataLoader(_PaddedBatches(), batch_size=4))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("throughput/")}
    assert metrics["throughput/tokens_per_sec"] == pytest.approx(12 * metrics["throughput/samples_per_sec"])
    flops_per_sec = metrics["throughput/tflops_per_device"] * 1e12
    assert flops_per_sec / metrics["throughput/tokens_per_sec"] == pytest.approx(
        model.flops_per_token(16), rel=1e-4
    )
    assert metrics["throughput/mfu"] == pytest.approx(flops_per_sec / 2e11, rel=1e-4)
    # no max_steps: the total is the number of optimizer steps in the epochs
    steps = re.findall(r"^step (\d+/\d+) \(\d+%\)", capsys.readouterr().out, re.MULTILINE)
    assert steps == ["5/10", "10/10"]


def test_frozen_weights_count_four_flops_per_token_not_six(tmp_path):
    """LoRA freezes every base weight: no weight gradients, so 2 FLOPs per token and weight fewer (an MFU
    above 100% otherwise)."""
    model = GPT2(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=2)
    task = CausalLM(model, lora=LoRA(rank=2))
    frozen = frozen_linear_weights(task)
    linear = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    assert frozen == sum(linear.values())  # the tied output layer counted once
    trainer = cpu_trainer(
        tmp_path,
        max_steps=5,
        enable_progress_bar=True,
        callbacks=[ProgressMonitor(every_n_steps=5, peak_flops=2e11)],
    )
    trainer.fit(task, DataLoader(_PaddedBatches(), batch_size=4))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("throughput/")}
    per_token = metrics["throughput/tflops_per_device"] * 1e12 / metrics["throughput/tokens_per_sec"]
    assert per_token == pytest.approx(model.flops_per_token(16) - 2 * frozen, rel=1e-4)


class _SummaryBatches(torch.utils.data.Dataset):
    """Encoder-decoder examples of 12 source tokens (padded to 16) and 4 scored target tokens (of 8)."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(3, 40, (16,), generator=torch.Generator().manual_seed(i))
        mask = (torch.arange(16) < 12).long()
        target = torch.randint(3, 40, (8,), generator=torch.Generator().manual_seed(100 + i))
        scored = torch.arange(8) < 4
        return {
            "input_ids": ids * mask,
            "attention_mask": mask,
            "decoder_input_ids": target * scored,
            "labels": torch.where(scored, target, -100),
        }


@pytest.mark.parametrize("lora", [False, True])
def test_encoder_decoders_count_source_and_target_tokens_apart(tmp_path, lora):
    """A summary is far shorter than its document: FLOPs counted per source token for both sides gave an
    MFU above 100% on the DialogSum recipe."""
    from zoo.models.bert import BertEncoderDecoder
    from zoo.tasks.summarization import Summarization

    torch.manual_seed(0)
    model = BertEncoderDecoder(vocab_size=40, max_seq_len=16, embed_dim=32, num_heads=4, num_layers=2)
    task = Summarization(model, lora=LoRA(rank=2, targets=["*.cross_attn.*"]) if lora else None)
    assert model.flops_per_token(16) == model.source_flops_per_token(16) + model.target_flops_per_token(16)
    encoder = {
        id(m.weight): m.weight.numel() for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)
    }
    assert model.source_flops_per_token(16) == 6 * sum(encoder.values()) + 2 * 12 * 32 * 16  # 2 layers
    trainer = cpu_trainer(
        tmp_path,
        max_steps=5,
        enable_progress_bar=True,
        callbacks=[ProgressMonitor(every_n_steps=5, peak_flops=2e11)],
    )
    trainer.fit(task, DataLoader(_SummaryBatches(), batch_size=4))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("throughput/")}
    assert metrics["throughput/tokens_per_sec"] == pytest.approx(12 * metrics["throughput/samples_per_sec"])
    frozen = frozen_linear_weights(task)
    frozen_source = frozen_linear_weights(model.encoder)
    assert (frozen > frozen_source > 0) == lora
    per_source_token = metrics["throughput/tflops_per_device"] * 1e12 / metrics["throughput/tokens_per_sec"]
    expected = (model.source_flops_per_token(16) - 2 * frozen_source) + 4 / 12 * (
        model.target_flops_per_token(8) - 2 * (frozen - frozen_source)
    )
    assert per_source_token == pytest.approx(expected, rel=1e-4)
    assert per_source_token < 0.65 * model.flops_per_token(16)  # what it counted before


def test_without_a_flops_estimate_the_line_and_logs_leave_mfu_out(tmp_path, capsys):
    class NoEstimate(CausalLM):
        def flops_per_token(self, seq_len: int) -> None:
            return None

    model = NoEstimate(GPT2(vocab_size=50, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=1))
    trainer = cpu_trainer(
        tmp_path, max_steps=5, enable_progress_bar=True, callbacks=[ProgressMonitor(every_n_steps=5)]
    )
    trainer.fit(model, DataLoader(_PaddedBatches(), batch_size=4))
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("step 5/5"))
    assert re.fullmatch(r"step 5/5 \(100%\) \| [\d,]+ tok/s \| loss \d+\.\d{3} \| elapsed \d+:\d\d", line), (
        line
    )
    assert "throughput/tokens_per_sec" in trainer.callback_metrics
    assert "throughput/mfu" not in trainer.callback_metrics


def test_count_tokens_reads_nothing_back_and_falls_back_to_samples():
    ids = torch.ones(3, 8, dtype=torch.long)
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6])
    tokens, samples, seq_len = count_tokens({"input_ids": ids, "attention_mask": mask})
    assert isinstance(tokens, torch.Tensor) and int(tokens) == 15 and (samples, seq_len) == (3, 8)
    assert count_tokens({"input_ids": ids}) == (24, 3, 8)
    assert count_tokens({"pixels": torch.zeros(5, 3, 2, 2), "labels": torch.zeros(5)}) == (None, 5, 0)
    assert count_tokens([torch.zeros(7, 2), torch.zeros(7)]) == (None, 7, 0)
    packed = {"input_ids": ids, "attention_mask": mask, "sequence_spans": torch.zeros(5, 3, dtype=torch.long)}
    assert count_tokens(packed)[1:] == (5, 8)  # packed rows: the examples are the samples


@pytest.mark.parametrize(
    ("name", "chip"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", None),  # left to Lightning's table
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40S", None),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ],
)
def test_gpu_names_find_their_datasheet_row(name, chip):
    assert gpu_chip(name) == chip
    if chip is not None:
        peaks = PEAK_FLOPS[chip]
        assert peaks["bf16"] >= peaks["tf32"] >= peaks["fp32"] > 1e13


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="every_n_steps must be a positive integer, got 0"):
        ProgressMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="peak_flops must be > 0"):
        ProgressMonitor(peak_flops=-1.0)


def test_measuring_the_peak_leaves_the_global_rng_alone():
    """Dropout draws from the global RNG: the monitor's timed matmul must not shift it, or a recipe with
    dropout would train differently with the monitor than without it."""
    from zoo.tasks.monitor import measure_matmul_flops

    measure_matmul_flops.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    measure_matmul_flops("cpu", size=64, seconds=0.01)
    assert torch.equal(torch.rand(3), expected)
