"""BERT on the shared stack (`zoo.nn.EncoderStack` of `zoo.nn.PostNormBlock`s): checkpoints of the earlier
layout (blocks at ``layers.<i>``) keep their parameter order and start a fine-tuning run, and sizes the
fused attention cannot split are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoo.models.bert import Bert
from zoo.models.pretrained import load_pretrained
from zoo.models.spec import from_spec
from zoo.tasks import MaskedLM, SequenceClassification

OLD_CKPT = Path(__file__).resolve().parents[1] / "fixtures" / "old_checkpoints" / "bert" / "last.ckpt"


def _old_checkpoint() -> dict:
    return torch.load(OLD_CKPT, map_location="cpu", weights_only=True)


def test_the_old_layout_renamed_is_todays_state_dict_in_the_same_order():
    """Same keys and order as before the move, blocks renamed: resuming maps optimizer state 1:1 and
    ``reset_parameters`` draws in the same order."""
    checkpoint = _old_checkpoint()
    old_keys = [k[len("backbone.") :] for k in checkpoint["state_dict"] if k.startswith("backbone.")]
    assert "layers.0.self_attn.qkv_proj.weight" in old_keys  # written by the earlier zoo
    model = from_spec(checkpoint["hyper_parameters"]["backbone"])
    renamed = ["encoder." + k if k.startswith("layers.") else k for k in old_keys]
    assert renamed == list(model.state_dict())
    assert Bert.state_dict_renames == {"layers.": "encoder.layers."}
    assert model.layers is model.encoder.layers


def test_an_old_pretraining_checkpoint_starts_a_fine_tuning_run(tmp_path):
    """``pretrained: old.ckpt`` of a fine-tuning task: the encoder gets the old weights under their new
    names and computes what the pretraining model (reloaded by Lightning) computes."""
    spec = _old_checkpoint()["hyper_parameters"]["backbone"]
    bare = {**spec, "init_args": {**spec["init_args"], "with_pretraining_heads": False}}
    task = SequenceClassification(bare, num_labels=2, pretrained=str(OLD_CKPT))
    load_pretrained(task.backbone, OLD_CKPT)  # what FinetuneTask.setup does when training starts
    pretrained = MaskedLM.load_from_checkpoint(OLD_CKPT, map_location="cpu").backbone.eval()
    ids = torch.randint(5, spec["init_args"]["vocab_size"], (2, 9))
    mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    with torch.no_grad():
        ours = task.backbone.eval().hidden_states(ids, attention_mask=mask)
        theirs = pretrained.hidden_states(ids, attention_mask=mask)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_an_embed_dim_the_heads_do_not_divide_is_refused():
    with pytest.raises(ValueError, match="Bert: embed_dim=30 is not divisible by num_heads=4"):
        Bert(vocab_size=50, embed_dim=30, num_heads=4, num_layers=1)
    with pytest.raises(ValueError, match="Bert: num_layers must be a positive integer, got 0"):
        Bert(vocab_size=50, embed_dim=32, num_heads=4, num_layers=0)
