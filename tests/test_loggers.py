"""zoo's loggers: TensorBoard works out of the box (or says which package is missing, in one line)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import shared_file

from zoo.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "gpt2" / "shakespeare-char.yaml")


def _small(root: Path) -> list[str]:
    return [
        f"--data.init_args.files=[{shared_file('tinyshakespeare/input.txt')}]",
        f"--data.init_args.cache_dir={root / 'cache'}",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={root}",
        "--model.init_args.backbone.init_args.num_layers=1",
        "--trainer.logger=zoo.loggers.TensorBoardLogger",
    ]


def test_tensorboard_logger_writes_events_beside_the_checkpoints(tmp_path):
    pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard")
    main(["fit", "--config", RECIPE, *_small(tmp_path)])
    version = tmp_path / "logs" / "version_0"
    assert list(version.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert (version / "checkpoints" / "last.ckpt").is_file() and (version / "config.yaml").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(version))
    events.Reload()
    assert "train_loss" in events.Tags()["scalars"] and "val_loss" in events.Tags()["scalars"]


def test_without_tensorboard_one_line_names_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("zoo.loggers.find_spec", lambda name: None)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", RECIPE, *_small(tmp_path)])
    assert exc.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: TensorBoardLogger needs the tensorboard package: pip install tensorboard "
        "(or use zoo.loggers.CSVLogger, which needs nothing)"
    ]
    assert not (tmp_path / "logs").exists()
