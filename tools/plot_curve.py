"""Plot metrics from a Lightning ``CSVLogger`` ``metrics.csv`` against the training step.

    python tools/plot_curve.py runs/shakespeare-char/logs/version_0/metrics.csv \
        --out docs/img/shakespeare-char.png --title "GPT-2 shakespeare-char"

The CSV is sparse: every ``self.log`` call site writes its own rows, so a metric's column is empty on
the rows of the others. Training metrics are drawn as thin lines, validation metrics with markers.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: Path, names: list[str]) -> dict[str, tuple[list[int], list[float]]]:
    """``{metric: (steps, values)}`` for each requested column, skipping rows where it is empty.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        KeyError: A requested metric is not a column of the file (the message lists the columns).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [n for n in ["step", *names] if n not in columns]
        if missing:
            raise KeyError(f"{path} has no column(s) {', '.join(missing)}; it has {', '.join(columns)}")
        series: dict[str, tuple[list[int], list[float]]] = {n: ([], []) for n in names}
        for row in reader:
            for name in names:
                if row[name] not in ("", None):
                    series[name][0].append(int(float(row["step"])))
                    series[name][1].append(float(row[name]))
    return series


def plot(series: dict[str, tuple[list[int], list[float]]], out: Path, title: str | None = None) -> Path:
    """Draw every series on one axis and write a PNG to ``out`` (parent folders are created)."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for name, (steps, values) in series.items():
        if name.startswith("val") or name.startswith("test"):
            ax.plot(steps, values, marker="o", markersize=4, linewidth=1.5, label=name)
        else:
            ax.plot(steps, values, linewidth=0.8, alpha=0.8, label=name)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics_csv", type=Path, help="a CSVLogger metrics.csv")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write, e.g. docs/img/NAME.png")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument(
        "--metrics", nargs="+", default=["train_loss", "val_loss"], help="columns to plot (default: losses)"
    )
    args = parser.parse_args(argv)
    try:
        series = read_metrics(args.metrics_csv, args.metrics)
    except (FileNotFoundError, KeyError) as err:
        parser.exit(2, f"error: {err.args[0]}\n")
    print(plot(series, args.out, args.title))


if __name__ == "__main__":
    main()
