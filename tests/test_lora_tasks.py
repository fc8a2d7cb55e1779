"""LoRA on every task: ``lora`` from YAML/CLI, only adapters and the task's head train, checkpoints hold
and reload the adapters, a killed-and-resumed run equals an uninterrupted one bit for bit, and
``zoo export`` writes merged weights plus (``--peft``) an adapter that PEFT puts on the base model with
the same logits."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from conftest import cpu_trainer
from lightning.pytorch.utilities.model_summary import ModelSummary
from test_export import SAMPLE, SENTENCES, TINY_BERT, _close, _fit, _padded, _sentences

from zoo.cli import main as zoo
from zoo.models.bert import Bert
from zoo.models.bert import convert as bert_convert
from zoo.models.gpt2 import convert as gpt2_convert
from zoo.models.llama import Llama
from zoo.models.seq2seq import Transformer
from zoo.nn import LoRA, LoRALinear
from zoo.nn.lora import base_layers, lora_layers
from zoo.tasks import CausalLM, MaskedLM, SequenceClassification, TokenClassification, Translation
from zoo.tasks.optim import adamw

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def _config(tmp_path: Path, corpus: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            seed_everything: 3
            trainer:
              accelerator: cpu
              max_steps: 8
              limit_val_batches: 0
              enable_progress_bar: false
              enable_model_summary: false
              logger: false
              default_root_dir: {tmp_path / name}
              callbacks:
                - class_path: lightning.pytorch.callbacks.ModelCheckpoint
                  init_args:
                    dirpath: {tmp_path / name / "ckpt"}
                    filename: "{{step}}"
                    every_n_train_steps: 4
                    save_top_k: -1
                    save_last: true
            model:
              class_path: zoo.tasks.CausalLM
              init_args:
                backbone:
                  class_path: zoo.models.gpt2.GPT2
                  init_args: {{max_seq_len: 32, embed_dim: 32, num_heads: 2, num_layers: 2, dropout: 0.1}}
                optimizer: {{class_path: torch.optim.AdamW, init_args: {{lr: 1.0e-2}}}}
                lr_scheduler: null
                lora: {{alpha: 8.0, dropout: 0.1, targets: ["*.self_attn.qkv_proj", "*.mlp.in_proj"]}}
            data:
              class_path: zoo.data.TextDataModule
              init_args:
                files: [{corpus}]
                tokenizer: bpe
                bpe_vocab_size: 300
                max_seq_len: 32
                batch_size: 4
                cache_dir: {tmp_path / "cache"}
            """
        )
    )
    return path


def test_causal_lm_lora_resumes_bit_identically_and_exports_for_peft(tmp_path, stdlib_text_file, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_text(stdlib_text_file.read_text()[:20_000])
    rank = ["--model.init_args.lora.rank=4"]  # the CLI sets one field, YAML the others
    zoo(["fit", "--config", str(_config(tmp_path, corpus, "full")), *rank])
    # what a run killed after step 4 leaves: its step-4 checkpoint, written in the middle of an epoch
    killed = tmp_path / "full" / "ckpt" / "step=4.ckpt"
    zoo(["fit", "--config", str(_config(tmp_path, corpus, "cut")), *rank, "--ckpt_path", str(killed)])
    cut = tmp_path / "cut" / "ckpt" / "last.ckpt"
    full = torch.load(tmp_path / "full" / "ckpt" / "last.ckpt", weights_only=True)
    resumed = torch.load(cut, weights_only=True)
    assert resumed["global_step"] == full["global_step"] == 8
    assert full["hyper_parameters"]["lora"]["rank"] == 4
    for key, value in full["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    adapters = [k for k in full["state_dict"] if k.endswith((".lora_A", ".lora_B"))]
    assert len(adapters) == 2 * 2 * 2  # 2 layers x (qkv_proj, mlp.in_proj) x (A, B)
    assert len(full["optimizer_states"][0]["state"]) == len(adapters)  # the optimizer sees only these

    task = CausalLM.load_from_checkpoint(cut).eval()  # weights_only=True
    assert isinstance(task.backbone.decoder.layers[0].self_attn.qkv_proj, LoRALinear)
    assert any(bool(layer.lora_B.any()) for layer in lora_layers(task.backbone).values())  # it trained
    capsys.readouterr()
    out = tmp_path / "exported"
    zoo(["export", "--ckpt_path", str(cut), "--output", str(out), "--peft"])
    assert "(LoRA merged), PEFT adapter for the base model in adapter/" in capsys.readouterr().out
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 1]])
    merged = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    base = tmp_path / "base"
    with base_layers(task.backbone):  # the weights training started from: what the adapter goes on
        gpt2_convert.save_hf(task.backbone, base, head="lm")
    start = transformers.AutoModelForCausalLM.from_pretrained(base)
    on_base = peft.PeftModel.from_pretrained(start, out / "adapter")
    with torch.no_grad():
        ours = task(ids)
        _close(merged(ids).logits, ours)
        _close(on_base.eval()(ids).logits, ours)


def test_bert_classifier_lora_from_pretrained_exports_for_peft(tmp_path, capsys):
    data = _sentences(tmp_path, "wordpiece")
    torch.manual_seed(0)
    pretrained = Bert(vocab_size=data.vocab_size, **TINY_BERT, with_pretraining_heads=False)
    base = bert_convert.save_hf(pretrained, tmp_path / "pretrained", head="none")
    lora = LoRA(rank=4, alpha=8.0, targets=["*.self_attn.qkv_proj", "*.self_attn.out_proj", "*.mlp.in_proj"])
    backbone = Bert(vocab_size=data.vocab_size, **TINY_BERT, with_pretraining_heads=False)
    task = SequenceClassification(
        backbone, num_labels=3, label_names=data.label_names, pretrained=str(base), lora=lora,
        optimizer=adamw(lr=1e-2),
    )
    head = sum(p.numel() for p in task.head.parameters())
    adapters = sum(p.numel() for n, p in task.named_parameters() if ".lora_" in n)
    assert adapters == 2 * (4 * 32 + 96 * 4 + 4 * 32 + 32 * 4 + 4 * 32 + 64 * 4)
    assert ModelSummary(task).trainable_parameters == adapters + head  # what the summary reports
    ckpt = _fit(tmp_path, task, data)
    # the frozen base is the pretrained model, unchanged by training
    with base_layers(task.backbone):
        for key, value in pretrained.state_dict().items():
            assert torch.equal(task.backbone.state_dict()[key], value), key

    out = tmp_path / "exported"
    zoo(["export", "--ckpt_path", str(ckpt), "--output", str(out), "--peft"])
    capsys.readouterr()
    batch = _padded(out, [SAMPLE, SENTENCES[1][0]])
    zoo_task = SequenceClassification.load_from_checkpoint(ckpt).eval()
    assert all(bool(layer.lora_B.any()) for layer in lora_layers(zoo_task.backbone).values())
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    start = transformers.AutoModelForSequenceClassification.from_pretrained(base, num_labels=3)
    on_base = peft.PeftModel.from_pretrained(start, out / "adapter").eval()
    with torch.no_grad():
        ours = zoo_task(batch)
        _close(merged(**batch).logits, ours)
        _close(on_base(**batch).logits, ours)


def _case(name: str):
    """A tiny task with LoRA and one synthetic batch for it."""
    torch.manual_seed(0)
    ids = torch.randint(5, 40, (2, 8))
    lora = LoRA(rank=2, alpha=4.0, targets=["*attn.*", "*.mlp.*"])
    if name == "masked_lm":
        sizes = dict(vocab_size=40, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1, hidden_dim=32)
        backbone = Bert(**sizes, dropout=0.0, attention_dropout=0.0)  # 4 small steps: no dropout noise
        task = MaskedLM(backbone, nsp=False, lora=lora, lr_scheduler=None)
        return task, {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    if name == "tagging":
        backbone = Llama(vocab_size=40, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1)
        task = TokenClassification(backbone, num_labels=3, lora=lora, lr_scheduler=None)
        return task, {"input_ids": ids, "labels": ids % 3, "attention_mask": torch.ones_like(ids)}
    if name == "llama_lm":
        backbone = Llama(vocab_size=40, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1)
        return CausalLM(backbone, lora=lora, lr_scheduler=None), {"input_ids": ids, "labels": ids}
    backbone = Transformer(
        vocab_size=40, max_seq_len=16, embed_dim=16, num_heads=2, num_encoder_layers=1,
        num_decoder_layers=1, hidden_dim=32,
    )
    mask = torch.ones_like(ids)
    batch = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": ids, "labels": ids}
    return Translation(backbone, lora=lora, lr_scheduler=None), batch


@pytest.mark.parametrize("name", ["masked_lm", "tagging", "llama_lm", "translation"])
def test_every_task_trains_only_adapters_and_reloads_them(tmp_path, name):
    task, batch = _case(name)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    optimizer = task.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(4):
        loss = task.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    changed = {k for k, v in task.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".lora_" in k or k.startswith("head.") for k in changed), changed
    assert any(".lora_B" in k for k in changed)

    trainer = cpu_trainer(tmp_path, max_steps=0)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / "task.ckpt")
    loaded = type(task).load_from_checkpoint(tmp_path / "task.ckpt")
    assert loaded.lora == task.lora
    for key, value in task.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
