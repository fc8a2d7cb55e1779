"""Where a ``zoo`` run writes, and how ``--ckpt_path last`` finds the run to continue.

Everything a run writes lives under ``trainer.default_root_dir``: the logger's ``save_dir`` (when the
recipe leaves it out, as every recipe does), hence ``logs/version_N/`` with ``metrics.csv``,
``config.yaml``, ``checkpoints/`` and the run's own samples or predictions (`zoo.tasks.callbacks`). These
functions work on the parsed LightningCLI config, before anything is built.
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


def checkpoint_in(path: str | Path) -> str:
    """``path`` itself, or for a folder the ``last.ckpt`` in it (a run's ``checkpoints/`` folder) or in its
    ``checkpoints/`` (a ``logs/version_N`` folder), said in one line.

    Raises:
        FileNotFoundError: A folder with neither, naming the checkpoints it holds.
    """
    folder = Path(path)
    if not folder.is_dir():
        return str(path)
    for candidate in (folder / LAST, folder / "checkpoints" / LAST):
        if candidate.is_file():
            print(f"zoo: --ckpt_path {path} is a folder: using {candidate}", file=sys.stderr, flush=True)
            return str(candidate)
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.ckpt"))[:5]
    held = f"; it holds {', '.join(found)}" if found else ", nor any .ckpt file"
    raise FileNotFoundError(
        f"--ckpt_path {path} is a folder with no {LAST} (nor checkpoints/{LAST}){held}; "
        "pass a checkpoint file"
    )


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
    """The folders a failed run must not remove: the run folders under each logger's root and the roots
    themselves (with ``default_root_dir``) as far as they exist before the run."""
    existing = {d for d in _run_folders(trainer) if d.is_dir()}
    roots = [root for root in _log_roots(trainer) if root.is_dir()]
    return existing | {d for root in roots for d in root.iterdir() if d.is_dir()}


def remove_empty_log_dirs(trainer: Any, before: set[Path]) -> None:
    """After a failed run, remove the run folders it created if nothing worth keeping is in them: no
    checkpoint and no training step (a config.yaml, hparams.yaml or header-only metrics.csv are not kept);
    then the folders above them that the run created and left empty (``logs/``, ``default_root_dir``)."""
    if not trainer.is_global_zero or trainer.global_step > 0:
        return
    for root in _log_roots(trainer):
        if not root.is_dir():
            continue
        for folder in root.iterdir():
            if folder.is_dir() and folder not in before and not any(folder.rglob("*.ckpt")):
                shutil.rmtree(folder, ignore_errors=True)
    for folder in sorted(_run_folders(trainer), key=lambda p: len(p.parts), reverse=True):  # deepest first
        if folder not in before and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _log_roots(trainer: Any) -> list[Path]:
    """Each logger's ``save_dir/name``: the folder that holds its ``version_N`` folders."""
    roots = []
    for logger in trainer.loggers:
        save_dir, name = getattr(logger, "save_dir", None), getattr(logger, "name", None)
        if save_dir is not None:
            roots.append(Path(save_dir) / (name or ""))
    return roots


def _run_folders(trainer: Any) -> set[Path]:
    """The folders a run may create above its version folders: the loggers' roots and ``save_dir``, and
    ``default_root_dir``."""
    folders = {Path(trainer.default_root_dir)}
    for root in _log_roots(trainer):
        folders |= {root, root.parent}
    return folders
