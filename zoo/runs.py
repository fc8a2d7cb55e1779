"""Where a ``zoo`` run writes, and how ``--ckpt_path last`` finds the run to continue.

Everything a run writes lives under ``trainer.default_root_dir``: the logger's ``save_dir`` (when the
recipe leaves it out, as every recipe does), hence ``logs/version_N/`` with ``metrics.csv``,
``config.yaml`` and ``checkpoints/``; predictions and samples (`zoo.tasks.callbacks`). These functions
work on the parsed LightningCLI config, before anything is built.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

LAST = "last.ckpt"


def place_run_outputs(trainer_config: Any) -> None:
    """Fill each logger's unset ``save_dir`` with ``trainer.default_root_dir`` (the current directory
    when unset), so ``--trainer.default_root_dir DIR`` moves the logs and the checkpoints with them."""
    root = trainer_config.get("default_root_dir") or "."
    for logger in _logger_configs(trainer_config):
        init_args = logger.get("init_args")
        if init_args is not None and "save_dir" in init_args and init_args.save_dir is None:
            init_args.save_dir = str(root)


def resolve_last(trainer_config: Any, subcommand: str) -> str | None:
    """The newest ``last.ckpt`` of the runs this config would log to; for ``fit``, ``None`` (said in one
    line) when there is none yet, so preemption scripts can always pass ``--ckpt_path last``.

    Lightning's own ``ckpt_path="last"`` looks only in the *new* run's folder (a logger opens
    ``version_N+1``), so it never finds the previous run's checkpoint. This looks in every version folder
    of the first logger (or the callbacks' explicit ``dirpath``, or ``default_root_dir/checkpoints``
    without a logger). With ``continue_logs`` (``fit``), the logger is pinned to the version the
    checkpoint came from, so the resumed run appends to the same logs and keeps writing checkpoints there.

    Raises:
        FileNotFoundError: ``validate``/``test``/``predict`` with no ``last.ckpt`` (nothing to evaluate).
    """
    candidates = _last_candidates(trainer_config)
    found = [c for c in candidates if c[0].is_file()]
    if not found:
        searched = ", ".join(sorted({str(where) for _, where, _ in candidates}))
        if subcommand != "fit":
            raise FileNotFoundError(
                f"--ckpt_path last: no {LAST} under {searched}, so there is no model to {subcommand}; "
                "train one first (zoo fit) or pass a checkpoint file"
            )
        print(
            f"zoo: --ckpt_path last: no {LAST} under {searched}; starting from the beginning", file=sys.stderr
        )
        return None
    path, _, (logger, version) = max(found, key=lambda c: c[0].stat().st_mtime)
    if subcommand == "fit" and logger is not None and logger.init_args.get("version") is None:
        number = re.fullmatch(r"version_(\d+)", version)
        logger.init_args.version = int(number.group(1)) if number else version
    print(f"zoo: --ckpt_path last: resuming from {path}", file=sys.stderr, flush=True)
    return str(path)


def _last_candidates(trainer_config: Any) -> list[tuple[Path, Path, tuple[Any, str | None]]]:
    """``(path of a possible last.ckpt, the folder searched, (logger config, version folder))``."""
    root = Path(trainer_config.get("default_root_dir") or ".")
    candidates = []
    for callback in trainer_config.get("callbacks") or []:
        dirpath = (callback.get("init_args") or {}).get("dirpath") if hasattr(callback, "get") else None
        if str(callback.get("class_path", "")).endswith("ModelCheckpoint") and dirpath:
            candidates.append((Path(dirpath) / LAST, Path(dirpath), (None, None)))
    loggers = _logger_configs(trainer_config)
    if trainer_config.get("logger") is False:
        candidates.append((root / "checkpoints" / LAST, root / "checkpoints", (None, None)))
        return candidates
    if loggers:
        logger, init_args = loggers[0], loggers[0].get("init_args") or {}
        base = Path(init_args.get("save_dir") or root) / (init_args.get("name") or "")
        version = init_args.get("version")
    else:  # Lightning's default logger
        logger, base, version = None, root / "lightning_logs", None
    if version is not None:
        versions = [version if isinstance(version, str) else f"version_{version}"]
    else:
        versions = sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
    candidates += [(base / v / "checkpoints" / LAST, base, (logger, v)) for v in versions]
    if not versions:
        candidates.append((base / "version_0" / "checkpoints" / LAST, base, (None, None)))
    return candidates


def _logger_configs(trainer_config: Any) -> list[Any]:
    loggers = trainer_config.get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    return [lg for lg in loggers if hasattr(lg, "get") and lg.get("class_path")]


def existing_log_dirs(trainer: Any) -> set[Path]:
    """The run folders that exist before a run, under each logger's root (without opening a version)."""
    return {d for root in _log_roots(trainer) for d in root.iterdir() if d.is_dir()}


def remove_empty_log_dirs(trainer: Any, before: set[Path]) -> None:
    """After a failed run, remove the run folders it created if nothing worth keeping is in them: no
    checkpoint and no training step (a config.yaml, hparams.yaml or header-only metrics.csv are not kept)."""
    if not trainer.is_global_zero or trainer.global_step > 0:
        return
    for root in _log_roots(trainer):
        for folder in root.iterdir():
            if folder.is_dir() and folder not in before and not any(folder.rglob("*.ckpt")):
                shutil.rmtree(folder, ignore_errors=True)


def _log_roots(trainer: Any) -> list[Path]:
    roots = []
    for logger in trainer.loggers:
        save_dir, name = getattr(logger, "save_dir", None), getattr(logger, "name", None)
        if save_dir is not None:
            root = Path(save_dir) / (name or "")
            if root.is_dir():
                roots.append(root)
    return roots
