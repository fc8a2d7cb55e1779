"""Where the text writers put their files (the runs through `zoo` are in tests/test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cpu_trainer
from lightning.pytorch.loggers import CSVLogger

from zoo.tasks.callbacks import output_path, run_dir


def test_run_dir_is_the_loggers_version_folder_read_without_a_collective(tmp_path, monkeypatch):
    """The folder where LightningCLI writes config.yaml (``trainer.log_dir``), found without
    ``trainer.log_dir``'s broadcast: `GenerateSamples` asks on rank 0 only, where a collective would hang
    DDP."""
    trainer = cpu_trainer(tmp_path, logger=CSVLogger(tmp_path, name="logs"))
    config_folder = Path(trainer.log_dir)
    assert config_folder == tmp_path / "logs" / "version_0"

    def broadcast(*args, **kwargs):
        raise AssertionError("a collective on one rank hangs a DDP run")

    monkeypatch.setattr(trainer.strategy, "broadcast", broadcast)
    assert run_dir(trainer) == config_folder
    assert output_path(trainer, None, "samples.txt") == config_folder / "samples.txt"
    assert output_path(trainer, "out/given.txt", "samples.txt") == Path("out/given.txt")
    assert output_path(trainer, "-", "samples.txt") is None


@pytest.mark.parametrize("output_file", [None, "-"])
def test_without_a_logger_files_go_to_default_root_dir(tmp_path, output_file):
    trainer = cpu_trainer(tmp_path)  # logger=False
    expected = None if output_file == "-" else tmp_path / "predictions.txt"
    assert output_path(trainer, output_file, "predictions.txt") == expected
