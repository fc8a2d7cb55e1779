"""Compare variants trained with several seeds: the mean validation curve of each, and a table of the last
validation loss per seed.

    python tools/compare_runs.py runs/positions --out docs/img/positions.png --title "positions"

Runs are folders ``ROOT/<variant>-<seed>`` (each a ``--trainer.default_root_dir``) holding
``logs/version_*/metrics.csv``; of each, the highest version that logged the metric is read. A
variant's curve is the mean over its seeds at the steps they all logged. The table goes to stdout as
Markdown.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
from plot_curve import read_metrics  # tools/ is the script's folder, so it is on sys.path


def _version(metrics: Path) -> int:
    """N of ``.../version_N/metrics.csv`` (-1 for a folder not so numbered)."""
    number = metrics.parent.name.removeprefix("version_")
    return int(number) if number.isdigit() else -1


def _logs(metrics: Path, metric: str) -> bool:
    with metrics.open(encoding="utf-8") as f:
        return metric in f.readline().strip().split(",")


def collect(root: Path, metric: str) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """``{variant: {seed: (steps, values)}}`` for every ``ROOT/<variant>-<seed>`` with a metrics file.

    Raises:
        FileNotFoundError: ``root`` holds no run with a ``logs/version_*/metrics.csv`` logging ``metric``.
    """
    runs: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for run in sorted(p for p in root.iterdir() if p.is_dir() and "-" in p.name):
        # the newest version that logged the metric: a later `zoo test` of the run logs only test_*
        files = [f for f in sorted(run.glob("logs/version_*/metrics.csv"), key=_version) if _logs(f, metric)]
        if files:
            variant, seed = run.name.rsplit("-", 1)
            runs.setdefault(variant, {})[seed] = read_metrics(files[-1], [metric])[metric]
    if not runs:
        raise FileNotFoundError(f"{root}: no <variant>-<seed>/logs/version_*/metrics.csv under it")
    return runs


def mean_curve(seeds: dict[str, tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    """The mean over seeds at the steps every seed logged."""
    common = sorted(set.intersection(*(set(steps) for steps, _ in seeds.values())))
    by_step = [dict(zip(*curve, strict=True)) for curve in seeds.values()]
    return common, [statistics.fmean(curve[s] for curve in by_step) for s in common]


def table(runs: dict[str, dict[str, tuple[list[int], list[float]]]], metric: str) -> str:
    """Markdown: one row per variant, the last ``metric`` of each seed and their mean."""
    lines = [f"| variant | last {metric} per seed | mean |", "| --- | --- | --- |"]
    for variant, seeds in runs.items():
        last = {seed: values[-1] for seed, (_, values) in seeds.items()}
        cells = ", ".join(f"{v:.3f} ({seed})" for seed, v in last.items())
        lines.append(f"| {variant} | {cells} | {statistics.fmean(last.values()):.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder of <variant>-<seed> run folders")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--metric", default="val_loss")
    parser.add_argument("--title")
    args = parser.parse_args()
    runs = collect(args.root, args.metric)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for variant, seeds in runs.items():
        steps, values = mean_curve(seeds)
        ax.plot(
            steps, values, marker="o", markersize=3, linewidth=1.2, label=f"{variant} ({len(seeds)} seeds)"
        )
    ax.set(xlabel="step", ylabel=f"{args.metric}, mean over seeds", title=args.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(table(runs, args.metric))


if __name__ == "__main__":
    main()
