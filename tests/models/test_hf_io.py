"""Model exports replace their directory atomically: a failed write leaves the old export intact."""

from __future__ import annotations

import pytest
import torch

from zoo.models import hf_io
from zoo.models.gpt2 import GPT2


def test_failed_export_keeps_the_previous_directory(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = GPT2(vocab_size=30, max_seq_len=8, embed_dim=16, num_heads=2, num_layers=1)
    out = model.to_hf(tmp_path / "export")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import safetensors.torch

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        model.to_hf(tmp_path / "export")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temporary left behind


def test_export_over_an_existing_directory_replaces_it_whole(tmp_path):
    model = GPT2(vocab_size=30, max_seq_len=8, embed_dim=16, num_heads=2, num_layers=1)
    target = tmp_path / "export"
    target.mkdir()
    (target / "stale.bin").write_text("old")
    hf_io.write_model_dir(target, {"model_type": "gpt2"}, {"w": torch.zeros(2)})
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert model.to_hf(target) == target.resolve()
