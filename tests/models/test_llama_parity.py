"""Llama parity with transformers.LlamaForCausalLM (same weights, same logits), decoding, training, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import shared_file
from zoo.cli import main
from zoo.data import TextDataModule
from zoo.models.llama import Llama
from zoo.tasks import CausalLM
from zoo.tasks.decoding import generate, positions_from_mask

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
V = 97


def _hf_model(tmp_path: Path, *, tie: bool) -> transformers.LlamaForCausalLM:
    """A random tiny Llama with grouped-query attention (4 query heads share 2 key/value heads)."""
    config = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        rms_norm_eps=1e-5,
        rope_theta=500.0,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # transformers initialises norms to one: make them matter
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path / "hf")
    return hf


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(0, V, (3, 11))
    right = torch.ones_like(ids)
    right[1, 7:] = 0
    right[2, 4:] = 0
    return ids, right, right.flip(1)  # right padding (CausalLM batches) and left padding (generation)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_from_hf_matches_transformers_on_padded_batches(tmp_path, tie):
    hf = _hf_model(tmp_path, tie=tie)
    ours = Llama.from_hf(tmp_path / "hf").eval()
    assert ours.spec["init_args"]["num_kv_heads"] == 2 and ours.spec["init_args"]["tie_weights"] is tie
    assert (ours.lm_head.weight is ours.tokens.weight) is tie
    ids, right, left = _batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        expected = hf(input_ids=ids, attention_mask=right).logits
        got = ours(ids, attention_mask=right)  # as CausalLM calls it
        torch.testing.assert_close(got[right.bool()], expected[right.bool()], atol=1e-5, rtol=1e-5)
        positions = positions_from_mask(left)  # as generation calls it
        expected = hf(input_ids=ids, attention_mask=left, position_ids=positions).logits
        got = ours(ids, attention_mask=left, position_ids=positions)
        torch.testing.assert_close(got[left.bool()], expected[left.bool()], atol=1e-5, rtol=1e-5)


def test_cached_decoding_equals_full_decoding(tmp_path):
    _hf_model(tmp_path, tie=False)
    ours = Llama.from_hf(tmp_path / "hf").eval()
    prompts = [[5, 6, 7, 8, 9], [11, 12], [40]]
    with torch.no_grad():
        cached = generate(ours, prompts, max_new_tokens=8, temperature=0.0)  # fits: incremental decoding
        full = []
        for prompt in prompts:  # each row alone, every step re-reading the whole sequence
            seq = list(prompt)
            for _ in range(8):
                seq.append(int(ours(torch.tensor([seq]))[0, -1].argmax()))
            full.append(seq[len(prompt) :])
    assert cached == full
    # the logits themselves: a prompt then one token at a time through the caches equals one full pass
    ids, _, left = _batch()
    positions = positions_from_mask(left)
    caches = ours.init_cache(3, 11)
    assert caches.self_attn[0].k.shape == (3, 2, 11, 12)  # only the 2 key/value heads are cached
    with torch.no_grad():
        full_logits = ours(ids, attention_mask=left, position_ids=positions)
        steps = [
            ours(ids[:, :6], attention_mask=left[:, :6], position_ids=positions[:, :6], cache=caches)
        ]
        for t in range(6, 11):
            step = ours(
                ids[:, t : t + 1],
                attention_mask=left[:, : t + 1],
                position_ids=positions[:, t : t + 1],
                cache=caches,
            )
            steps.append(step)
    real = left.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full_logits[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_to_hf_round_trips_into_transformers(tmp_path, tie):
    torch.manual_seed(2)
    ours = Llama(
        vocab_size=61,
        max_seq_len=16,
        embed_dim=32,
        num_heads=4,
        num_kv_heads=1,
        num_layers=2,
        tie_weights=tie,
    ).eval()
    out = ours.to_hf(tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["num_key_value_heads"] == 1 and config["intermediate_size"] == 128  # 8·32/3 -> 128
    hf = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(Llama.from_hf(out)(ids), ours(ids), atol=0, rtol=0)


def test_conversion_refuses_what_zoo_llama_does_not_compute(tmp_path):
    hf = _hf_model(tmp_path, tie=False)
    config_path = tmp_path / "hf" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        Llama.from_hf(tmp_path / "hf")
    config_path.write_text(json.dumps({**config, "rope_parameters": {"rope_type": "linear", "factor": 2.0}}))
    with pytest.raises(ValueError, match="rope_type='linear'"):
        Llama.from_hf(tmp_path / "hf")
    config_path.write_text(json.dumps(config))
    hf.model.layers[0].self_attn.q_proj.register_parameter("bias", torch.nn.Parameter(torch.zeros(48)))
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(KeyError, match="unexpected weights for Llama.*q_proj.bias"):
        Llama.from_hf(tmp_path / "hf")


def test_tiny_fit_lowers_the_loss_and_the_checkpoint_reloads_weights_only(stdlib_text_file, tmp_path):
    L.seed_everything(0)
    dm = TextDataModule([str(stdlib_text_file)], max_seq_len=32, batch_size=16, cache_dir=str(tmp_path / "c"))
    backbone = Llama(
        vocab_size=dm.vocab_size, max_seq_len=32, embed_dim=48, num_heads=4, num_kv_heads=2, num_layers=2
    )
    model = CausalLM(backbone)  # the task's default optimizer and schedule
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=60,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        limit_val_batches=4,
        num_sanity_val_steps=0,
    )
    before = trainer.validate(model, datamodule=dm, verbose=False)[0]["val_loss"]
    trainer.fit(model, datamodule=dm)
    after = trainer.validate(model, datamodule=dm, verbose=False)[0]["val_loss"]
    assert after < before - 0.5, (before, after)
    path = tmp_path / "llama.ckpt"
    trainer.save_checkpoint(path)
    again = CausalLM.load_from_checkpoint(path, weights_only=True)
    assert again.hparams.backbone["class_path"] == "zoo.models.llama.model.Llama"
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_zoo_fit_trains_llama_from_the_gpt2_recipe_by_swapping_the_backbone(tmp_path, monkeypatch):
    corpus = shared_file("tinyshakespeare/input.txt")
    monkeypatch.chdir(tmp_path)  # the recipe's relative output paths land in tmp_path
    main(
        [
            "fit",
            "--config",
            str(REPO / "recipes" / "gpt2" / "shakespeare-char.yaml"),
            "--model.init_args.backbone=zoo.models.llama.Llama",
            "--model.init_args.backbone.init_args.num_kv_heads=2",
            "--model.init_args.backbone.init_args.num_layers=2",
            f"--data.init_args.files=[{corpus}]",
            "--trainer.max_steps=6",
            "--trainer.val_check_interval=3",
            "--trainer.limit_val_batches=1",
        ]
    )
    last = tmp_path / "runs" / "shakespeare-char" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    model = CausalLM.load_from_checkpoint(last, weights_only=True)
    assert isinstance(model.backbone, Llama)
    args = model.hparams.backbone["init_args"]
    # the recipe's sizes carried over to the new backbone, the command line's overrides too
    assert (args["embed_dim"], args["num_heads"], args["num_kv_heads"], args["num_layers"]) == (128, 4, 2, 2)
    assert args["max_seq_len"] == 64 and args["tie_weights"] is False
    assert args["vocab_size"] > 60  # linked from the data's character vocabulary
