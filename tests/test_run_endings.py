"""The edges of a run, as a user meets them through the installed ``zoo`` on the shipped shakespeare-char
recipe (shortened by command-line overrides only): a run that ends off a validation step leaves
``last.ckpt`` at its final step; SIGTERM, Ctrl-C and SIGUSR1 save at the next step boundary, exit non-zero
and print the command that resumes, which ends bit-identical to an uninterrupted run; Lightning's own
flags (no progress bar, no logger, no checkpointing, extra callbacks) work on a recipe."""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared_file

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ZOO = Path(sys.executable).with_name("zoo")  # the console script `pip install` put beside this Python
RECIPE = "recipes/gpt2/shakespeare-char.yaml"
SHORT = [
    "--trainer.max_steps=12",
    "--trainer.val_check_interval=4",
    "--trainer.limit_val_batches=1",
    "--trainer.log_every_n_steps=2",
    "--model.init_args.max_new_tokens=5",
]


def signal_at(step: int, name: str, times: int = 1, rank: str = "null") -> str:
    init = f'{{"step": {step}, "signal": "{name}", "times": {times}, "rank": {rank}}}'
    return f'--trainer.callbacks+={{"class_path": "kill_at.SignalAt", "init_args": {init}}}'


def zoo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed ``zoo ARGS`` from the repository root, with the test callbacks importable."""
    full_env = {**os.environ, "PYTHONPATH": str(FIXTURES), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [str(ZOO), *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def fit_args() -> list[str]:
    data = shared_file("tinyshakespeare/input.txt")
    if not ZOO.is_file():
        pytest.skip(f"{ZOO} not found: install zoo (pip install -e .) to test the `zoo` command")
    return ["fit", "--config", RECIPE, f"--data.init_args.files=[{data}]", *SHORT]


def _checkpoint(root: Path) -> dict:
    (last,) = root.glob("**/last.ckpt")
    return torch.load(last, weights_only=True, map_location="cpu")


def _same_weights(a: dict, b: dict) -> bool:
    return a["state_dict"].keys() == b["state_dict"].keys() and all(
        torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]
    )


@pytest.fixture(scope="module")
def straight(fit_args, tmp_path_factory) -> Path:
    """The uninterrupted 12-step run."""
    root = tmp_path_factory.mktemp("straight")
    proc = zoo(*fit_args, f"--trainer.default_root_dir={root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_a_run_that_ends_off_a_validation_step_saves_its_final_step(fit_args, tmp_path):
    """10 steps with validation every 4: last.ckpt is the model of step 10 (the one samples came from),
    equal to a run that validates, and so saves, at step 10; the closing line names the file."""
    ten = [*fit_args, "--trainer.max_steps=10"]
    off = zoo(*ten, f"--trainer.default_root_dir={tmp_path / 'off'}")
    assert off.returncode == 0, off.stderr[-3000:]
    last = tmp_path / "off" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert off.stderr.strip().splitlines()[-1] == f"zoo: last checkpoint (step 10): {last}"
    on = zoo(*ten, "--trainer.val_check_interval=5", f"--trainer.default_root_dir={tmp_path / 'on'}")
    assert on.returncode == 0, on.stderr[-3000:]
    a, b = _checkpoint(tmp_path / "off"), _checkpoint(tmp_path / "on")
    assert a["global_step"] == b["global_step"] == 10
    assert _same_weights(a, b)


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_saves_the_next_step_and_the_printed_command_resumes_exactly(
    name, code, fit_args, straight, tmp_path
):
    """The signal lands while step 7 runs: the run finishes that step, saves it, names the checkpoint and
    the command, and exits 128 + the signal's number; that command ends bit-identical to `straight`."""
    run = tmp_path / "run"
    proc = zoo(*fit_args, f"--trainer.default_root_dir={run}", signal_at(6, name))
    assert proc.returncode == code, proc.stderr[-3000:]
    last = run / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 7
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith(f"zoo: {name}")]
    prefix = f"zoo: {name} at step 7: saved {last}; resume with: "
    assert line.startswith(prefix), line
    command = shlex.split(line[len(prefix) :])
    assert command[0] == "zoo" and command[-2:] == ["--ckpt_path", "last"]
    assert not list(run.rglob("samples.txt")), "a stopped run does not sample as if it had finished"

    resumed = zoo(*command[1:])  # the printed command, as a user pastes it
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last}" in resumed.stderr
    assert _same_weights(_checkpoint(run), _checkpoint(straight))
    assert _metric_rows(run) == _metric_rows(straight)


def _metric_rows(root: Path) -> list[tuple[str, ...]]:
    (metrics,) = root.glob("logs/version_*/metrics.csv")
    rows = csv.DictReader(metrics.open())
    return [(row["step"], *sorted(k for k, v in row.items() if v and k != "step")) for row in rows]


def test_a_second_ctrl_c_stops_at_once(fit_args, tmp_path):
    proc = zoo(*fit_args, f"--trainer.default_root_dir={tmp_path}", signal_at(6, "SIGINT", times=2))
    assert proc.returncode not in (0, 130), proc.stderr[-3000:]
    last = _checkpoint(tmp_path)  # the one written at validation, step 4: nothing more was saved
    assert last["global_step"] == 4
    assert " saved " not in proc.stderr
    assert "zoo: stopped at once at step 6 (a second Ctrl-C); nothing more saved; resume with: zoo fit" in (
        proc.stderr
    )


def test_sigusr1_under_slurm_saves_then_requeues(fit_args, tmp_path):
    """SLURM's warning signal (``--signal=USR1@120``): saved like SIGTERM, then ``scontrol requeue JOB``
    as Lightning's auto-requeue does (a stand-in ``scontrol`` records its arguments)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol.args"}\n')
    scontrol.chmod(0o755)
    slurm = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "train",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }
    run = tmp_path / "run"
    proc = zoo(*fit_args, f"--trainer.default_root_dir={run}", signal_at(6, "SIGUSR1"), env=slurm)
    assert proc.returncode == 138, proc.stderr[-3000:]
    assert _checkpoint(run)["global_step"] == 7
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    assert "zoo: requeued SLURM job 4242" in proc.stderr


def test_lightnings_own_flags_work_on_a_recipe(fit_args, tmp_path):
    """No progress bar: quiet, throughput still logged. No logger: last.ckpt under
    default_root_dir/checkpoints, found by --ckpt_path last. No checkpointing: said, nothing saved, and a
    signal still exits non-zero. An added callback runs beside the recipe's."""
    quiet = zoo(
        *fit_args,
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor",
        f"--trainer.default_root_dir={tmp_path / 'quiet'}",
    )
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "step 2/12" not in quiet.stdout and "validation at step" not in quiet.stdout
    (metrics,) = (tmp_path / "quiet").glob("logs/version_*/metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert "throughput/tokens_per_sec" in header and "lr-AdamW/pg1" in header

    no_logger = [*fit_args, "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path / 'bare'}"]
    first = zoo(*no_logger, "--trainer.max_steps=6")
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "bare" / "checkpoints" / "last.ckpt"
    assert first.stderr.strip().splitlines()[-1] == f"zoo: last checkpoint (step 6): {last}"
    again = zoo(*no_logger, "--ckpt_path", "last")
    assert again.returncode == 0 and f"resuming from {last}" in again.stderr, again.stderr[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == 12

    off = zoo(
        *fit_args,
        "--trainer.enable_checkpointing=false",
        f"--trainer.default_root_dir={tmp_path / 'off'}",
        signal_at(6, "SIGTERM"),
    )
    assert off.returncode == 143, off.stderr[-3000:]
    assert "this run saves no checkpoint" in off.stderr
    assert "zoo: SIGTERM at step 7: stopped; nothing saved (checkpointing is off)" in off.stderr
    assert not list((tmp_path / "off").rglob("*.ckpt"))


def test_under_ddp_the_ranks_agree_on_the_step(fit_args, tmp_path):
    """Only rank 1 gets SIGTERM: both ranks stop after the same step, rank 0 saves it, both exit 143."""
    ddp = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"]
    proc = zoo(*fit_args, *ddp, f"--trainer.default_root_dir={tmp_path}", signal_at(6, "SIGTERM", rank="1"))
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert _checkpoint(tmp_path)["global_step"] == 7
    assert proc.stderr.count("zoo: SIGTERM at step 7: saved") == 1
