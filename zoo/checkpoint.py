"""Checkpoint files that are either complete or absent.

Lightning's default writer hands the file to fsspec, whose local "transaction" may stage it in the system
temp directory and *copy* it into place, so a kill at the wrong moment can leave a truncated
``last.ckpt``. :class:`AtomicCheckpointIO` writes next to the target, fsyncs, and renames: a reader
(``--ckpt_path last`` included) sees the previous complete file or the new complete file, never a part.
Zoo tasks install it automatically when the trainer uses the default writer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with write-to-temporary + fsync + atomic rename for local paths."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec semantics
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.partial-*"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def install_atomic_checkpoint_io(trainer: Any) -> None:
    """Swap the trainer's default checkpoint writer for :class:`AtomicCheckpointIO` (a custom one is kept)."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
