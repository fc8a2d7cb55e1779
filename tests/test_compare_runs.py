"""tools/compare_runs.py: seeds of a variant are averaged step by step, and the table shows each seed's last
validation loss and their mean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "compare_runs.py"


def _run(root: Path, name: str, val: list[float], version: int = 0) -> None:
    logs = root / name / "logs" / f"version_{version}"
    logs.mkdir(parents=True)
    rows = ["epoch,step,train_loss,val_loss"]
    for i, v in enumerate(val):
        rows += [f"0,{10 * i + 9},3.0,", f"0,{10 * i + 9},,{v}"]
    (logs / "metrics.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def _compare(root: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(root), "--out", str(out)], capture_output=True, text=True
    )


def test_means_over_seeds_and_a_table(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "rope-1", [3.0, 2.0])
    _run(runs, "rope-2", [2.0, 1.5])
    _run(runs, "alibi-1", [9.0, 9.0])  # a stale first version is ignored
    (runs / "alibi-1" / "logs" / "version_0").rename(runs / "alibi-1" / "logs" / "version_x")
    _run(runs, "alibi-1", [9.0, 9.0], version=1)
    _run(runs, "alibi-1", [2.5, 1.25], version=10)
    test_logs = runs / "alibi-1" / "logs" / "version_11"  # a later `zoo test`: no val_loss column
    test_logs.mkdir()
    (test_logs / "metrics.csv").write_text("epoch,step,test_loss\n0,0,1.0\n", encoding="utf-8")
    proc = _compare(runs, tmp_path / "img" / "cmp.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "img" / "cmp.png").stat().st_size > 1000
    assert "| rope | 2.000 (1), 1.500 (2) | 1.750 |" in proc.stdout
    # version_10 is newer than version_1; version_11 has no val_loss
    assert "| alibi | 1.250 (1) | 1.250 |" in proc.stdout


def test_a_folder_without_runs_is_a_clear_error(tmp_path):
    proc = _compare(tmp_path, tmp_path / "cmp.png")
    assert proc.returncode != 0
    assert f"{tmp_path}: no <variant>-<seed>/logs/version_*/metrics.csv under it" in proc.stderr
