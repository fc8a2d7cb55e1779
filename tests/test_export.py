"""``zoo export``: each (family, task) pair becomes the transformers class that computes the same logits,
with a tokenizer that ``AutoTokenizer`` loads and that gives zoo's token ids; bad input ends with one
``error:`` line and exit code 1."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import cpu_trainer
from tokenizers import Tokenizer

from zoo.cli import main as zoo
from zoo.data import BertPretrainingDataModule, TaggingDataModule, TextClassificationDataModule
from zoo.data.tokenizers import train_bpe_tokenizer
from zoo.data.wordpiece import train_wordpiece
from zoo.models.bert import Bert
from zoo.models.bert import convert as bert_convert
from zoo.models.gpt2 import GPT2
from zoo.models.gpt2 import convert as gpt2_convert
from zoo.models.hf_io import LabelHead
from zoo.models.seq2seq import Transformer
from zoo.tasks import CausalLM, MaskedLM, SequenceClassification, TokenClassification, Translation
from zoo.tasks.optim import adamw, warmup_cosine_schedule

transformers = pytest.importorskip("transformers")

SENTENCES = [
    ("a gripping , funny and moving film", "positive"),
    ("the plot is thin and the jokes fall flat", "negative"),
    ("an hour and a half of pure boredom", "negative"),
    ("one of the best performances of the year", "positive"),
    ("it is neither good nor bad , just there", "neutral"),
    ("the actors do what they can with the script", "neutral"),
    ("a warm , wise and wonderful story", "positive"),
    ("tedious , overlong and badly edited", "negative"),
]
CONLL = """-DOCSTART- -X- -X- O

Schwarzenegger NNP B-NP B-PER
visited VBD B-VP O
Wolfeschlegelsteinhausen NNP B-NP B-LOC
. . O O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""
SAMPLE = "The film was surprisingly good, said Peter in Berlin."
TINY_BERT = dict(max_seq_len=64, embed_dim=32, num_heads=2, num_layers=2, hidden_dim=64)
TINY_GPT2 = dict(max_seq_len=64, embed_dim=32, num_heads=2, num_layers=2)


# -- helpers -----------------------------------------------------------------------------------------
def _export(ckpt: Path, out: Path, capsys, *extra: str) -> str:
    """Run ``zoo export`` in-process; the one line it prints."""
    zoo(["export", "--ckpt_path", str(ckpt), "--output", str(out), *extra])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _export_fails(args: list[str], capsys) -> str:
    """Run ``zoo export`` in-process expecting exit code 1; its ``error:`` line."""
    with pytest.raises(SystemExit) as exit_info:
        zoo(["export", *args])
    assert exit_info.value.code == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("error: "), first
    return first


def _fit(tmp_path: Path, task, data, steps: int = 3) -> Path:
    trainer = cpu_trainer(tmp_path / "run", max_steps=steps, limit_val_batches=0)
    trainer.fit(task, data)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def _saved_untrained(tmp_path: Path, task) -> Path:
    """A checkpoint Lightning writes for ``task`` without data (so without a tokenizer)."""
    trainer = cpu_trainer(tmp_path / "run", max_steps=0)
    trainer.strategy.connect(task)
    path = tmp_path / "untrained.ckpt"
    trainer.save_checkpoint(path)
    return path


def _tokenizer_file(tmp_path: Path, kind: str) -> Path:
    texts = [s for s, _ in SENTENCES] * 4 + [SAMPLE, "Schwarzenegger visited the EU in Berlin"]
    tok = (
        train_wordpiece(iter(texts), vocab_size=200, min_frequency=1)
        if kind == "wordpiece"
        else train_bpe_tokenizer(texts, vocab_size=300)
    )
    path = tmp_path / kind / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    return path


def _sentences(tmp_path: Path, tokenizer: str) -> TextClassificationDataModule:
    table = tmp_path / "train.tsv"
    table.write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in SENTENCES))
    return TextClassificationDataModule(
        tokenizer=str(_tokenizer_file(tmp_path, tokenizer)),
        train_file=str(table),
        batch_size=4,
        max_seq_len=32,
    )


def _check_tokenizer(out: Path, ckpt: Path, *pair: str) -> dict[str, torch.Tensor]:
    """AutoTokenizer loads the export and encodes like the checkpoint's own tokenizer; its batch."""
    saved = torch.load(ckpt, weights_only=True)
    ours = next(
        Tokenizer.from_str(v["tokenizer"]) for v in saved.values() if isinstance(v, dict) and "tokenizer" in v
    )
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    texts = pair or (SAMPLE,)
    batch = theirs(*texts, return_tensors="pt")
    expected = ours.encode(*texts)
    assert batch["input_ids"][0].tolist() == expected.ids
    if "token_type_ids" in batch:
        assert batch["token_type_ids"][0].tolist() == expected.type_ids
    return batch


def _padded(tokenizer_dir: Path, texts: list[str]) -> dict[str, torch.Tensor]:
    """A right-padded batch made by the exported tokenizer."""
    return dict(
        transformers.AutoTokenizer.from_pretrained(tokenizer_dir)(texts, padding=True, return_tensors="pt")
    )


def _close(theirs: torch.Tensor, ours: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    if mask is not None:  # per-token outputs: padding positions mean nothing
        theirs, ours = theirs[mask.bool()], ours[mask.bool()]
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


# -- one test per (family, task) ---------------------------------------------------------------------
def test_causal_lm_from_zoo_fit_is_a_gpt2_lm_head_model(tmp_path, stdlib_text_file, capsys):
    config = tmp_path / "fit.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            seed_everything: 1
            trainer:
              accelerator: cpu
              max_steps: 3
              limit_val_batches: 0
              enable_progress_bar: false
              enable_model_summary: false
              logger: false
              default_root_dir: {tmp_path / "run"}
              callbacks:
                - class_path: lightning.pytorch.callbacks.ModelCheckpoint
                  init_args: {{dirpath: {tmp_path / "ckpt"}, every_n_train_steps: 3, save_last: true}}
            model:
              class_path: zoo.tasks.CausalLM
              init_args:
                backbone:
                  class_path: zoo.models.gpt2.GPT2
                  init_args: {{max_seq_len: 64, embed_dim: 32, num_heads: 2, num_layers: 2}}
                optimizer: {{class_path: torch.optim.AdamW, init_args: {{lr: 1.0e-2}}}}
            data:
              class_path: zoo.data.TextDataModule
              init_args:
                files: [{stdlib_text_file}]
                tokenizer: bpe
                bpe_vocab_size: 400
                max_seq_len: 64
                batch_size: 4
                cache_dir: {tmp_path / "cache"}
            """
        )
    )
    zoo(["fit", "--config", str(config)])
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    capsys.readouterr()

    out = tmp_path / "exported"
    line = _export(ckpt, out, capsys)
    assert line == f"exported {ckpt} as GPT2LMHeadModel + tokenizer to {out}"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    batch = _check_tokenizer(out, ckpt, "def wrap(text, width=70): return lines")
    assert set(batch) == {"input_ids", "attention_mask"}  # GPT-2 would embed token_type_ids
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "GPT2LMHeadModel"
    zoo_task = CausalLM.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        _close(model(**batch).logits, zoo_task.backbone(batch["input_ids"]))
    eot = transformers.AutoTokenizer.from_pretrained(out).eos_token_id
    assert eot is not None and model.config.eos_token_id == eot


@pytest.mark.parametrize("nsp", [True, False])
def test_masked_lm_is_bert_for_pretraining_or_masked_lm(tmp_path, stdlib_text_file, capsys, nsp):
    data = BertPretrainingDataModule(
        files=[str(stdlib_text_file)],
        wordpiece_vocab_size=300,
        max_seq_len=32,
        dupe_factor=1,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
    )
    task = MaskedLM(
        Bert(vocab_size=data.vocab_size, **TINY_BERT),
        nsp=nsp,
        lr_scheduler=warmup_cosine_schedule(warmup_steps=0, min_lr_ratio=0.0),
        optimizer=adamw(lr=1e-2),
    )
    ckpt = _fit(tmp_path, task, data)

    out = tmp_path / "exported"
    architecture = "BertForPreTraining" if nsp else "BertForMaskedLM"
    assert _export(ckpt, out, capsys) == f"exported {ckpt} as {architecture} + tokenizer to {out}"
    batch = _check_tokenizer(out, ckpt, "the wrapper breaks lines", "and fills paragraphs")
    model = getattr(transformers, architecture).from_pretrained(out)
    zoo_task = MaskedLM.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        ours = zoo_task(**batch)
        theirs = model(**batch)
    if nsp:
        _close(theirs.prediction_logits, ours.mlm_logits)
        _close(theirs.seq_relationship_logits, ours.nsp_logits)
    else:
        _close(theirs.logits, ours.mlm_logits)
        assert not any("pooler" in k or "seq_relationship" in k for k in model.state_dict())


def test_sequence_classification_over_bert(tmp_path, capsys):
    data = _sentences(tmp_path, "wordpiece")
    backbone = Bert(vocab_size=data.vocab_size, **TINY_BERT, with_pretraining_heads=False)
    task = SequenceClassification(
        backbone, num_labels=3, label_names=data.label_names, optimizer=adamw(lr=1e-2)
    )
    ckpt = _fit(tmp_path, task, data)

    out = tmp_path / "exported"
    assert (
        _export(ckpt, out, capsys) == f"exported {ckpt} as BertForSequenceClassification + tokenizer to {out}"
    )
    _check_tokenizer(out, ckpt)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert model.config.problem_type == "single_label_classification"
    batch = _padded(out, [SAMPLE, SENTENCES[0][0]])
    zoo_task = SequenceClassification.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        _close(model(**batch).logits, zoo_task(batch))


def test_mean_pooled_bert_classifier_exports_the_backbone_and_says_why(tmp_path, capsys):
    data = _sentences(tmp_path, "wordpiece")
    backbone = Bert(vocab_size=data.vocab_size, **TINY_BERT, with_pretraining_heads=False)
    task = SequenceClassification(backbone, num_labels=3, pooling="mean")
    ckpt = _fit(tmp_path, task, data, steps=1)

    out = tmp_path / "exported"
    line = _export(ckpt, out, capsys)
    assert line.startswith(
        f"exported {ckpt} as BertModel + tokenizer to {out}; the classification head was not"
    )
    assert "pooling='mean' has no transformers equivalent" in line
    model = transformers.AutoModel.from_pretrained(out)
    assert type(model).__name__ == "BertModel"
    batch = _padded(out, [SAMPLE, SENTENCES[1][0]])
    zoo_task = SequenceClassification.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        ours = zoo_task.backbone.hidden_states(batch["input_ids"], attention_mask=batch["attention_mask"])
        _close(model(**batch).last_hidden_state, ours, batch["attention_mask"])


@pytest.mark.parametrize("zero_bias", [True, False])
def test_sequence_classification_over_gpt2(tmp_path, capsys, zero_bias):
    data = _sentences(tmp_path, "bpe")
    backbone = GPT2(vocab_size=data.vocab_size, **TINY_GPT2)
    task = SequenceClassification(backbone, num_labels=3, pooling="last", optimizer=adamw(lr=1e-2))
    if zero_bias:  # transformers' score layer has none: train without one
        task.head[1].bias.requires_grad_(False)
    ckpt = _fit(tmp_path, task, data)
    zoo_task = SequenceClassification.load_from_checkpoint(ckpt).eval()
    assert bool(zoo_task.head[1].bias.any()) != zero_bias

    out = tmp_path / "exported"
    line = _export(ckpt, out, capsys)
    batch = _padded(out, [SAMPLE, SENTENCES[2][0]])
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # the second row is padded
    if zero_bias:
        assert line == f"exported {ckpt} as GPT2ForSequenceClassification + tokenizer to {out}"
        model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
        with torch.no_grad():
            _close(model(**batch).logits, zoo_task(batch))
    else:
        assert line.startswith(f"exported {ckpt} as GPT2Model + tokenizer to {out}; ")
        assert "score layer has no bias" in line
        model = transformers.AutoModel.from_pretrained(out)
        with torch.no_grad():
            ours = zoo_task.backbone.hidden_states(batch["input_ids"], attention_mask=batch["attention_mask"])
            _close(model(**batch).last_hidden_state, ours, batch["attention_mask"])


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_token_classification(tmp_path, capsys, family):
    conll = tmp_path / "train.txt"
    conll.write_text(CONLL)
    tokenizer = _tokenizer_file(tmp_path, "wordpiece" if family == "bert" else "bpe")
    data = TaggingDataModule(tokenizer=str(tokenizer), train_file=str(conll), batch_size=2, max_seq_len=64)
    if family == "bert":
        backbone = Bert(vocab_size=data.vocab_size, **TINY_BERT, with_pretraining_heads=False)
    else:
        backbone = GPT2(vocab_size=data.vocab_size, **TINY_GPT2)
    task = TokenClassification(
        backbone, num_labels=data.num_labels, label_names=data.label_names, optimizer=adamw(lr=1e-2)
    )
    ckpt = _fit(tmp_path, task, data)

    out = tmp_path / "exported"
    architecture = "BertForTokenClassification" if family == "bert" else "GPT2ForTokenClassification"
    assert _export(ckpt, out, capsys) == f"exported {ckpt} as {architecture} + tokenizer to {out}"
    _check_tokenizer(out, ckpt)
    model = transformers.AutoModelForTokenClassification.from_pretrained(out)
    assert type(model).__name__ == architecture
    assert [model.config.id2label[i] for i in range(data.num_labels)] == data.label_names
    batch = _padded(out, [SAMPLE, "EU rejects German call"])
    zoo_task = TokenClassification.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        _close(model(**batch).logits, zoo_task(batch), batch["attention_mask"])


def test_heads_without_a_transformers_class_are_named():
    head = LabelHead(weight=torch.zeros(2, 4), bias=torch.zeros(2), label_names=["a", "b"], pooling="first")
    assert "pooling='first' has no transformers equivalent" in bert_convert.head_mismatch(head)
    assert bert_convert.head_mismatch(LabelHead(**{**head.__dict__, "pooling": "pooler"})) is None
    assert "pooling='first'" in gpt2_convert.head_mismatch(head)
    assert gpt2_convert.head_mismatch(LabelHead(**{**head.__dict__, "pooling": "last"})) is None
    biased = LabelHead(**{**head.__dict__, "pooling": "last", "bias": torch.ones(2)})
    assert "no bias" in gpt2_convert.head_mismatch(biased)
    model = GPT2(vocab_size=30, **TINY_GPT2)
    with pytest.raises(ValueError, match="no bias"):
        gpt2_convert.save_hf(model, "unused", head=biased)


def test_translation_is_refused_with_the_reason(tmp_path, capsys):
    backbone = Transformer(
        vocab_size=50, max_seq_len=16, embed_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1
    )
    ckpt = _saved_untrained(tmp_path, Translation(backbone))
    out = tmp_path / "exported"
    error = _export_fails(["--ckpt_path", str(ckpt), "--output", str(out)], capsys)
    assert error.startswith(
        f"error: {ckpt}: a Translation checkpoint over Transformer; transformers has no class"
    )
    assert not out.exists()


# -- bad input ---------------------------------------------------------------------------------------
def test_unreadable_checkpoints_name_the_file(tmp_path, capsys):
    out = str(tmp_path / "exported")
    missing = tmp_path / "nope.ckpt"
    assert _export_fails(["--ckpt_path", str(missing), "--output", out], capsys) == (
        f"error: checkpoint {missing} not found"
    )
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    error = _export_fails(["--ckpt_path", str(text), "--output", out], capsys)
    assert error.startswith(f"error: {text}: truncated or not a PyTorch checkpoint")

    real = _saved_untrained(tmp_path, CausalLM(GPT2(vocab_size=30, **TINY_GPT2)))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    error = _export_fails(["--ckpt_path", str(truncated), "--output", out], capsys)
    assert error.startswith(f"error: {truncated}: truncated or not a PyTorch checkpoint")

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"linear.weight": torch.zeros(2, 2)}, "epoch": 0}, foreign)
    error = _export_fails(["--ckpt_path", str(foreign), "--output", out], capsys)
    assert error == f"error: {foreign}: not a zoo task's checkpoint (no 'zoo_task' entry); zoo export " + (
        "reads checkpoints written by `zoo fit` or a Trainer fitting a zoo task"
    )
    assert not Path(out).exists()


def test_output_directory_is_replaced_only_with_overwrite(tmp_path, capsys):
    ckpt = _saved_untrained(tmp_path, CausalLM(GPT2(vocab_size=30, **TINY_GPT2)))
    out = tmp_path / "exported"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    error = _export_fails(["--ckpt_path", str(ckpt), "--output", str(out)], capsys)
    assert error == f"error: --output {out} exists and is not empty; pass --overwrite to replace it"
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    line = _export(ckpt, out, capsys, "--overwrite")
    assert line == f"exported {ckpt} as GPT2LMHeadModel (no tokenizer: the checkpoint holds none) to {out}"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]

    error = _export_fails(["--ckpt_path", str(ckpt), "--output", str(tmp_path), "--overwrite"], capsys)
    assert error == f"error: --output {tmp_path} holds the checkpoint {ckpt}; choose another directory"
    assert ckpt.is_file()


def test_console_command_exit_codes(tmp_path):
    missing = tmp_path / "nope.ckpt"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "zoo.cli",
            "export",
            "--ckpt_path",
            str(missing),
            "--output",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1
    assert run.stderr.splitlines()[0] == f"error: checkpoint {missing} not found"
    with pytest.raises(SystemExit) as exit_info:
        zoo(["export", "--ckpt_path", str(missing)])  # argparse: --output is required
    assert exit_info.value.code == 2
