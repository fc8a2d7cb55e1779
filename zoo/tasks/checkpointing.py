"""The end of a run never loses a step: `FinalCheckpoint` leaves ``last.ckpt`` at the final step.

Lightning writes a checkpoint only where a `ModelCheckpoint` fires (at validation in every zoo recipe), so a
run whose ``max_steps`` is not a multiple of ``val_check_interval`` would end with an older ``last.ckpt``,
and a SIGTERM (preemption, ``scancel``, a job scheduler's time limit) would exit 0 with nothing saved.
`FinalCheckpoint` closes both gaps:

- **A run that ends** (``max_steps``, ``max_epochs``, early stopping) writes ``last.ckpt`` at its final step
  unless a checkpoint callback already wrote it at that step, and prints one line naming it.
- **A signal** — SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 (what SLURM sends ahead of a time limit with
  ``#SBATCH --signal=USR1@120``) — asks the run to stop at the end of the optimizer step in progress (after
  that step's validation, if one is due): ``last.ckpt`` is written with the exact mid-epoch position, one
  line names it and the command that resumes, and the process exits with ``128 + signal number`` (143
  for SIGTERM), so a scheduler sees a failure, not a success. A second Ctrl-C stops at once, saving
  nothing more. Under DDP the ranks agree on the step (one all-reduce of a flag per step), and under
  SLURM with Lightning's auto-requeue on, SIGUSR1 also requeues the job after the save, as Lightning's
  own handler does (whose mid-step ``hpc_ckpt`` this replaces).

``zoo fit`` adds it to every run; in your own scripts pass ``callbacks=[FinalCheckpoint()]`` to the
``Trainer`` beside a `ModelCheckpoint`. With checkpointing off (``enable_checkpointing=False``) it saves
nothing but still turns a signal into a non-zero exit and says so.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
"""The signals that stop a run at the next step boundary with a checkpoint."""


def _writes_last(callback: ModelCheckpoint) -> bool:
    return bool(callback.save_last) or (callback.filename == "last" and callback.monitor is None)


def _last_writer(trainer: L.Trainer) -> tuple[ModelCheckpoint | None, Path | None]:
    """The checkpoint callback that writes ``last.ckpt`` (``None`` if none does) and that file's path."""
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    for callback in callbacks:
        if _writes_last(callback):
            name = callback.CHECKPOINT_NAME_LAST if callback.save_last else "last"
            return callback, Path(callback.dirpath) / f"{name}{callback.FILE_EXTENSION}"
    if not callbacks:
        return None, None
    return None, Path(callbacks[0].dirpath) / f"last{ModelCheckpoint.FILE_EXTENSION}"


def save_last(trainer: L.Trainer) -> Path | None:
    """Write ``last.ckpt`` at the current step unless its callback already did; its path (``None``:
    checkpointing is off)."""
    writer, path = _last_writer(trainer)
    if path is None:
        return None
    done = writer is not None and getattr(writer, "_last_global_step_saved", None) == trainer.global_step
    if not (done and path.is_file()):
        trainer.save_checkpoint(path, weights_only=False)
    return path


class FinalCheckpoint(L.Callback):
    """Write ``last.ckpt`` at the final step of every ``fit``, and on SIGTERM / SIGINT / SIGUSR1 at the
    next step boundary, then exit non-zero (module docstring).

    Args:
        resume_command: The command line that resumes this run, printed after a signal (``zoo fit``
            passes its own arguments plus ``--ckpt_path last``); ``None`` prints the checkpoint to pass
            as ``ckpt_path``.
    """

    def __init__(self, resume_command: str | None = None) -> None:
        self.resume_command = resume_command
        self._signal: int | None = None  # the first stop signal received
        self._stopping = False  # the ranks agreed to stop at this step
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After Lightning registered its own SIGTERM handler (it restores every handler at teardown)."""
        self._signal, self._stopping, self._last_step = None, False, trainer.global_step
        if os.name == "nt":
            return
        for name in STOP_SIGNALS:
            signal.signal(getattr(signal, name), self._handler(trainer))

    def _handler(self, trainer: L.Trainer) -> Any:
        def handle(signum: int, frame: Any) -> None:
            if self._signal is not None and signum == signal.SIGINT:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                raise KeyboardInterrupt  # a second Ctrl-C: stop at once
            if self._signal is None:
                self._signal = signum
                launcher = trainer.strategy.launcher
                if launcher is not None:  # DDP started from this process: its ranks stop too
                    launcher.kill(signum)

        return handle

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stepped, self._last_step = trainer.global_step != self._last_step, trainer.global_step
        if not stepped:  # inside gradient accumulation: the step boundary comes later
            return
        self._stopping = trainer.strategy.reduce_boolean_decision(self._signal is not None, all=False)
        if self._stopping:  # Lightning stops after this step's validation, at the step boundary
            trainer._signal_connector.received_sigterm = True

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stopping:  # let a validation that is due at this step finish before stopping
            trainer._signal_connector.received_sigterm = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stopping:
            trainer._signal_connector.received_sigterm = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = save_last(trainer)
        if path is not None:
            _say(trainer, f"zoo: last checkpoint (step {trainer.global_step:,}): {path}")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt) and self._signal is not None:
            resume = self.resume_command or "pass the last checkpoint as ckpt_path to Trainer.fit"
            step = trainer.global_step
            _say(
                trainer,
                f"zoo: stopped at once at step {step:,} (a second Ctrl-C); nothing more saved; "
                f"resume with: {resume}",
            )
        if not isinstance(exception, SIGTERMException):
            return
        signum = self._signal or signal.SIGTERM
        exception.code = 128 + int(signum)  # a scheduler must not count the run as a success
        name = signal.Signals(signum).name
        step = trainer.global_step
        if step == 0:
            _say(trainer, f"zoo: {name} before the first training step: stopped; nothing to save")
            return
        path = save_last(trainer)
        if path is None:
            _say(trainer, f"zoo: {name} at step {step:,}: stopped; nothing saved (checkpointing is off)")
            return
        resume = self.resume_command or f"pass ckpt_path={str(path)!r} to Trainer.fit"
        _say(trainer, f"zoo: {name} at step {step:,}: saved {path}; resume with: {resume}")
        if signum == signal.SIGUSR1:
            _requeue(trainer)


def _say(trainer: L.Trainer, line: str) -> None:
    if trainer.is_global_zero:
        print(line, file=sys.stderr, flush=True)


def _requeue(trainer: L.Trainer) -> None:
    """Under SLURM with Lightning's auto-requeue on, requeue the job (rank 0), as Lightning's own SIGUSR1
    handler does; the requeued job's command should pass ``--ckpt_path last``."""
    environment = trainer._accelerator_connector.cluster_environment
    requeue = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    if not (requeue and trainer.is_global_zero):
        return
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    result = subprocess.run(["scontrol", "requeue", job], check=False)
    _say(
        trainer,
        f"zoo: requeued SLURM job {job}"
        if result.returncode == 0
        else f"zoo: requeueing SLURM job {job} failed (scontrol exit {result.returncode})",
    )


def resume_command(argv: list[str]) -> str:
    """``zoo`` + ``argv`` with ``--ckpt_path last`` in place of any ``--ckpt_path`` given."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["zoo", *kept, "--ckpt_path", "last"])
