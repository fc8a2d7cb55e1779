"""Plot metrics from a Lightning ``CSVLogger`` ``metrics.csv`` against the training step.

    python tools/plot_curve.py runs/shakespeare-char/logs/version_0/metrics.csv \
        --out docs/img/shakespeare-char.png --title "GPT-2 shakespeare-char"

Several files draw several runs on one axis, each metric in one colour and each run in its own line
style, named by ``--labels`` (default: each run's folder, the ``default_root_dir`` above ``logs/``):

    python tools/plot_curve.py runs/dialogsum-minilm/logs/version_0/metrics.csv \
        runs/dialogsum-scratch/logs/version_0/metrics.csv --labels warm-start scratch \
        --metrics val_rouge1 val_rougeL --out docs/img/dialogsum-minilm.png

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


LINE_STYLES = ("-", "--", ":", "-.")


def plot(
    series: dict[str, tuple[list[int], list[float]]] | dict[str, dict[str, tuple[list[int], list[float]]]],
    out: Path,
    title: str | None = None,
) -> Path:
    """Draw every series on one axis and write a PNG to ``out`` (parent folders are created).

    ``series`` is ``{metric: (steps, values)}`` for one run, or ``{run label: {metric: (steps,
    values)}}`` for several: a metric keeps its colour across runs, a run its line style."""
    runs = series if all(isinstance(v, dict) for v in series.values()) else {"": series}
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    metrics = list(dict.fromkeys(name for run in runs.values() for name in run))
    for index, (label, run) in enumerate(runs.items()):
        style = LINE_STYLES[index % len(LINE_STYLES)]
        for name, (steps, values) in run.items():
            colour = colours[metrics.index(name) % len(colours)]
            shown = f"{label}: {name}" if label else name
            if name.startswith("val") or name.startswith("test"):
                ax.plot(
                    steps, values, style, color=colour, marker="o", markersize=4, linewidth=1.5, label=shown
                )
            else:
                ax.plot(steps, values, style, color=colour, linewidth=0.8, alpha=0.8, label=shown)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if len(ax.get_lines()) > 4:  # beside the axis, where it hides no line
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        fig.set_size_inches(10, 4)
    else:
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
    parser.add_argument("metrics_csv", type=Path, nargs="+", help="CSVLogger metrics.csv files (one per run)")
    parser.add_argument("--labels", nargs="+", default=None, help="a name per file (default: its run folder)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write, e.g. docs/img/NAME.png")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument(
        "--metrics", nargs="+", default=["train_loss", "val_loss"], help="columns to plot (default: losses)"
    )
    args = parser.parse_args(argv)
    files = args.metrics_csv
    if args.labels is not None and len(args.labels) != len(files):
        parser.exit(2, f"error: --labels: {len(args.labels)} names for {len(files)} metrics files\n")
    try:
        runs = [read_metrics(path, args.metrics) for path in files]
    except (FileNotFoundError, KeyError) as err:
        parser.exit(2, f"error: {err.args[0]}\n")
    if len(files) == 1:
        print(plot(runs[0], args.out, args.title))
        return
    labels = args.labels or [_run_name(path) for path in files]
    if len(set(labels)) < len(labels):
        parser.exit(2, f"error: two runs are both named {labels}; name them with --labels\n")
    print(plot(dict(zip(labels, runs, strict=True)), args.out, args.title))


def _run_name(metrics: Path) -> str:
    """The run folder of ``RUN/logs/version_N/metrics.csv`` (else the file's folder)."""
    parts = metrics.resolve().parts
    return parts[-4] if len(parts) >= 4 and parts[-3] == "logs" else metrics.parent.name


if __name__ == "__main__":
    main()
