"""Loggers whose files follow the run: ``save_dir`` left out means the trainer's ``default_root_dir``.

Lightning's loggers need an explicit ``save_dir``, so a recipe that names one ignores
``--trainer.default_root_dir``. The recipes use these instead and leave ``save_dir`` out; ``zoo`` fills it
in from ``trainer.default_root_dir`` before anything is built, so one option moves logs, checkpoints,
``config.yaml``, predictions and samples together. In Python, pass ``save_dir`` as with Lightning's.
"""

from __future__ import annotations

import csv
from importlib.util import find_spec
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as _LightningTensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only


class _ResumableWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv``; this one keeps its rows, so a run
    resumed into its own version folder (``--ckpt_path last``) continues the same file. Rows a killed
    run logged after its last checkpoint (steps the resumed run logs again) are dropped."""

    def _check_log_dir_exists(self) -> None:
        self._previous: list[dict[str, Any]] = []
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self._previous = list(csv.DictReader(file))

    def save(self) -> None:
        if self._previous and self.metrics:
            first = min(int(row["step"]) for row in self.metrics)
            kept = [row for row in self._previous if row.get("step") and int(row["step"]) < first]
            self.metrics_keys = sorted({key for row in kept for key in row} | set(self.metrics_keys))
            self.metrics = [{k: v for k, v in row.items() if v != ""} for row in kept] + self.metrics
            self._previous = []
            self._fs.rm_file(self.metrics_file_path)
        super().save()


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` (``metrics.csv`` and ``hparams.yaml`` per run version).

    Args:
        save_dir: Root of the logs; ``None`` means the trainer's ``default_root_dir`` (filled in by ``zoo``;
            the current directory in plain Python).
        name: Sub-folder of ``save_dir`` for this experiment.
        **kwargs: Lightning's ``CSVLogger`` arguments (forwarded): ``version`` (``None`` picks the next
            free ``version_N``; ``zoo fit --ckpt_path last`` continues the version the checkpoint came
            from), ``flush_logs_every_n_steps`` (how often rows are written to disk), ``prefix``.
    """

    def __init__(self, save_dir: str | None = None, name: str = "logs", **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir or ".", name=name, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The CSV writer; an existing ``metrics.csv`` in the version folder is continued, not deleted."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Flush the rows with every checkpoint, so a killed run's metrics reach its last checkpoint."""
        self.save()


class TensorBoardLogger(_LightningTensorBoardLogger):
    """Lightning's ``TensorBoardLogger``, with a one-line error when no TensorBoard writer is installed.

    Args:
        save_dir: Root of the logs; ``None`` means the trainer's ``default_root_dir`` (filled in by ``zoo``;
            the current directory in plain Python).
        name: Sub-folder of ``save_dir`` for this experiment.
        default_hp_metric: Log a placeholder ``hp_metric`` (Lightning's default; off here).
        **kwargs: Lightning's ``TensorBoardLogger`` arguments (forwarded), e.g. ``version`` (``None``
            picks the next free ``version_N``), ``log_graph``, ``prefix``.

    Raises:
        ModuleNotFoundError: Neither ``tensorboard`` nor ``tensorboardX`` is installed.
    """

    def __init__(
        self,
        save_dir: str | None = None,
        name: str = "logs",
        default_hp_metric: bool = False,
        **kwargs: Any,
    ) -> None:
        if find_spec("tensorboard") is None and find_spec("tensorboardX") is None:
            raise ModuleNotFoundError(
                "TensorBoardLogger needs the tensorboard package: pip install tensorboard "
                "(or use zoo.loggers.CSVLogger, which needs nothing)"
            )
        super().__init__(save_dir=save_dir or ".", name=name, default_hp_metric=default_hp_metric, **kwargs)
