"""Soak test of crash-safe training (not part of the test suite).

Trains the default CPU recipe once without interruption, then again and again with a SIGKILL roughly
every ``--kill-every`` seconds (at random moments: mid-step, mid-validation, mid-checkpoint-write),
each time resuming with ``zoo fit --ckpt_path last``, until ``--minutes`` have passed. Every completed
interrupted run must end with weights bit-identical to the uninterrupted run, and its per-step training
losses must equal the uninterrupted ones.

    python bench/soak.py --minutes 15 --kill-every 60

Prints one line per kill, then a summary: kills survived, runs completed, and whether every run matched.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

LOSS_LOGGER = '''
import lightning as L


class LossFile(L.Callback):
    """Append "step loss" lines (exact float repr) to a file, flushed after each step."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {outputs['loss'].item()!r}\\n")
'''


def make_config(work: Path, name: str, *, steps: int, every: int) -> Path:
    """The demo recipe, shortened, with step-interval checkpoints and an exact loss log."""
    config = yaml.safe_load((REPO / "recipes" / "gpt2" / "stdlib-char.yaml").read_text())
    run = work / name
    trainer = config["trainer"]
    trainer.update(max_steps=steps, val_check_interval=every * 2, default_root_dir=str(run), logger=False)
    trainer["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(run / "ckpt"), "every_n_train_steps": every, "save_last": True},
        },
        {"class_path": "soak_losses.LossFile", "init_args": {"path": str(run / "losses.txt")}},
    ]
    config["data"]["init_args"]["cache_dir"] = str(work / "cache")
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def zoo(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(config).parent)}
    return subprocess.Popen(
        [sys.executable, "-m", "zoo.cli", "fit", "--config", str(config), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def losses(path: Path) -> dict[int, str]:
    """Last logged loss for each step (steps redone after a kill overwrite the earlier record)."""
    out: dict[int, str] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:  # a half-written line from a kill is skipped
            out[int(parts[0])] = parts[1]
    return out


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=15.0, help="keep killing and resuming this long")
    parser.add_argument("--kill-every", type=float, default=60.0, help="mean seconds between kills")
    parser.add_argument("--steps", type=int, default=600, help="training steps per run")
    parser.add_argument("--every", type=int, default=25, help="checkpoint every N steps")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "soak")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = parser.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    (args.work / "soak_losses.py").write_text(LOSS_LOGGER)
    rng = random.Random(args.seed)

    t0 = time.monotonic()
    ref = zoo(make_config(args.work, "reference", steps=args.steps, every=args.every))
    if ref.wait() != 0:
        sys.exit(f"uninterrupted run failed:\n{ref.stderr.read()[-3000:]}")
    print(f"uninterrupted run: {args.steps} steps in {time.monotonic() - t0:.0f} s", flush=True)
    ref_losses = losses(args.work / "reference" / "losses.txt")
    ref_weights = weights(args.work / "reference" / "ckpt" / "last.ckpt")

    start, kills, runs, mismatches = time.monotonic(), 0, 0, 0
    while time.monotonic() - start < args.minutes * 60:
        name = f"killed{runs}"
        config = make_config(args.work, name, steps=args.steps, every=args.every)
        extra: tuple[str, ...] = ()
        while True:
            proc = zoo(config, *extra)
            try:
                code = proc.wait(timeout=rng.uniform(0.5, 1.5) * args.kill_every)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                last = args.work / name / "ckpt" / "last.ckpt"
                at = torch.load(last, weights_only=True)["global_step"] if last.is_file() else 0
                print(
                    f"kill {kills}: {name} at {time.monotonic() - start:.0f} s, last.ckpt at step {at}",
                    flush=True,
                )
                extra = ("--ckpt_path", "last") if last.is_file() else ()
                continue
            if code != 0:
                sys.exit(f"{name} failed (exit {code}):\n{proc.stderr.read()[-3000:]}")
            break
        runs += 1
        got_losses = losses(args.work / name / "losses.txt")
        got = weights(args.work / name / "ckpt" / "last.ckpt")
        same_weights = all(torch.equal(ref_weights[k], got[k]) for k in ref_weights)
        same_curve = got_losses == ref_losses
        mismatches += not (same_weights and same_curve)
        print(
            f"{name} finished: weights identical={same_weights}, loss curve identical={same_curve}",
            flush=True,
        )

    print(
        f"soak: {kills} kills survived over {(time.monotonic() - start) / 60:.1f} min, "
        f"{runs} interrupted runs completed, {runs - mismatches}/{runs} bit-identical to the "
        "uninterrupted run (weights and losses)"
    )
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
