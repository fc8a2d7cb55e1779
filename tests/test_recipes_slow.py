"""Full recipe runs that check the numbers the docs publish (`pytest -m slow`; CI runs them)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, shared_file

pytestmark = pytest.mark.slow


def _final_metric(metrics_csv: Path, name: str) -> float:
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get(name)]
    assert rows, f"{metrics_csv} has no {name}"
    return float(rows[-1][name])


def _fit(recipe: str, cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zoo.cli", "fit", "--config", str(REPO / recipe), *overrides],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=1800,
    )


def test_shakespeare_char_reaches_its_published_validation_loss(tmp_path):
    corpus = shared_file("tinyshakespeare/input.txt")
    run = _fit("recipes/gpt2/shakespeare-char.yaml", tmp_path, f"--data.init_args.files=[{corpus}]")
    assert run.returncode == 0, run.stderr[-3000:]
    val_loss = _final_metric(tmp_path / "runs/shakespeare-char/logs/version_0/metrics.csv", "val_loss")
    assert val_loss <= 1.90, f"published 1.889 (seed 1337); got {val_loss:.4f}"


def test_demo_recipe_trains_offline_and_prints_samples(tmp_path):
    run = _fit("recipes/gpt2/stdlib-char.yaml", tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "---------- sample 1 ----------\ndef " in run.stdout
    val_loss = _final_metric(tmp_path / "runs/stdlib-char/logs/version_0/metrics.csv", "val_loss")
    assert val_loss <= 1.50, f"published 1.482; got {val_loss:.4f}"
