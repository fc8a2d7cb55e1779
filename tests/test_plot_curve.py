"""tools/plot_curve.py: a sparse CSVLogger file becomes a PNG; a missing column is a clear error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "plot_curve", Path(__file__).resolve().parents[1] / "tools" / "plot_curve.py"
)
plot_curve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot_curve)

# Lightning's layout: each metric in its own rows, other columns empty
CSV = """epoch,step,train_loss,val_loss
0,9,3.5,
0,19,3.0,
0,19,,3.2
0,29,2.5,
0,39,2.2,
0,39,,2.4
"""


@pytest.fixture
def metrics_csv(tmp_path: Path) -> Path:
    path = tmp_path / "metrics.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


def test_sparse_rows_are_read_per_metric(metrics_csv):
    series = plot_curve.read_metrics(metrics_csv, ["train_loss", "val_loss"])
    assert series["train_loss"] == ([9, 19, 29, 39], [3.5, 3.0, 2.5, 2.2])
    assert series["val_loss"] == ([19, 39], [3.2, 2.4])


def test_cli_writes_png(metrics_csv, tmp_path):
    out = tmp_path / "img" / "curve.png"
    plot_curve.main([str(metrics_csv), "--out", str(out), "--title", "t"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_metric_names_the_columns(metrics_csv, tmp_path, capsys):
    with pytest.raises(KeyError, match="val_ppl.*train_loss"):
        plot_curve.read_metrics(metrics_csv, ["val_ppl"])
    with pytest.raises(SystemExit) as exit_info:
        plot_curve.main([str(metrics_csv), "--out", str(tmp_path / "x.png"), "--metrics", "val_ppl"])
    assert exit_info.value.code == 2
    assert "no column(s) val_ppl" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plot_curve.main([str(tmp_path / "absent.csv"), "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    assert "absent.csv: no such metrics file" in capsys.readouterr().err


def test_several_runs_share_one_axis(metrics_csv, tmp_path, capsys, monkeypatch):
    other = tmp_path / "scratch" / "logs" / "version_0" / "metrics.csv"
    other.parent.mkdir(parents=True)
    other.write_text(CSV.replace("2.4", "2.9"), encoding="utf-8")
    drawn = {}
    monkeypatch.setattr(plot_curve, "plot", lambda series, out, title=None: drawn.update(series) or out)
    plot_curve.main(
        [str(metrics_csv), str(other), "--out", str(tmp_path / "x.png"), "--labels", "warm", "cold"]
    )
    assert drawn["warm"]["val_loss"] == ([19, 39], [3.2, 2.4])
    assert drawn["cold"]["val_loss"] == ([19, 39], [3.2, 2.9])
    drawn.clear()
    plot_curve.main([str(other), str(metrics_csv), "--out", str(tmp_path / "x.png")])
    assert list(drawn) == ["scratch", tmp_path.name]  # the run folder above logs/, else the file's folder
    with pytest.raises(SystemExit) as exit_info:
        plot_curve.main([str(metrics_csv), str(other), "--out", str(tmp_path / "y.png"), "--labels", "one"])
    assert exit_info.value.code == 2
    assert "--labels: 1 names for 2 metrics files" in capsys.readouterr().err


def test_several_runs_write_a_png(metrics_csv, tmp_path):
    out = tmp_path / "two.png"
    plot_curve.main([str(metrics_csv), str(metrics_csv), "--labels", "a", "b", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
