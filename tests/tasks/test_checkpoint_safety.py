"""Loading checkpoints: malicious pickles are refused, truncated files and other tasks are named."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

from zoo.models.gpt2 import GPT2
from zoo.tasks import CausalLM
from zoo.tasks.base import BackboneTask, CheckpointError


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class OtherTask(BackboneTask):
    """Stands for another objective (say, masked LM) sharing the backbone."""

    def training_step(self, batch, batch_idx):  # pragma: no cover - never trained here
        raise NotImplementedError


def _saved_checkpoint(tmp_path: Path, task_cls=CausalLM) -> Path:
    model = task_cls(GPT2(vocab_size=20, max_seq_len=8, embed_dim=16, num_heads=2, num_layers=1))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_a_checkpoint_with_a_pickle_payload_is_refused_not_executed(tmp_path):
    path = _saved_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    marker = tmp_path / "pwned"
    checkpoint["hyper_parameters"]["evil"] = _Payload(marker)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        CausalLM.load_from_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = _saved_checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{path}: truncated"):
        CausalLM.load_from_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        CausalLM.load_from_checkpoint(tmp_path / "nope.ckpt")


def test_checkpoint_of_another_task_is_named(tmp_path):
    path = _saved_checkpoint(tmp_path, OtherTask)
    with pytest.raises(
        CheckpointError, match="written by a .*OtherTask task, not a zoo.tasks.causal_lm.CausalLM"
    ):
        CausalLM.load_from_checkpoint(path)
