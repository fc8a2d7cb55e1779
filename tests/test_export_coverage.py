"""``zoo export`` beyond GPT-2 and BERT's first tasks: Llama (``LlamaForCausalLM`` and its classifiers),
question answering (``*ForQuestionAnswering``), BERT2BERT (``EncoderDecoderModel``) and ``pooling: first``
(a token classifier whose first row is zoo's logits). Each export is loaded with transformers and must
give zoo's logits; what cannot be exported is refused in one ``error:`` line that says why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_export import (
    CONLL,
    SAMPLE,
    SENTENCES,
    TINY_BERT,
    TINY_GPT2,
    _check_tokenizer,
    _close,
    _export,
    _export_fails,
    _fit,
    _padded,
    _saved_untrained,
    _sentences,
    _tokenizer_file,
)

from zoo.data import QuestionAnsweringDataModule, SummarizationDataModule, TaggingDataModule, TextDataModule
from zoo.models import Configurable
from zoo.models.bert import Bert, BertEncoderDecoder
from zoo.models.gpt2 import GPT2
from zoo.models.llama import Llama
from zoo.models.seq2seq import Transformer
from zoo.nn import ALiBiPositions, LoRA
from zoo.tasks import (
    CausalLM,
    QuestionAnswering,
    SequenceClassification,
    Summarization,
    TokenClassification,
    Translation,
)
from zoo.tasks.optim import adamw
from zoo.tasks.settings import Decoding

transformers = pytest.importorskip("transformers")

TINY_LLAMA = dict(max_seq_len=64, embed_dim=32, num_heads=4, num_kv_heads=2, num_layers=2, hidden_dim=64)
CONTEXT = "Peter Blackburn visited Berlin in the spring . The film was surprisingly good , he said ."
QUESTIONS = [("Who visited Berlin ?", "Peter Blackburn"), ("Where did Peter go ?", "Berlin")]


def _backbone(family: str, vocab_size: int) -> torch.nn.Module:
    if family == "bert":
        return Bert(vocab_size=vocab_size, **TINY_BERT, with_pretraining_heads=False)
    if family == "gpt2":
        return GPT2(vocab_size=vocab_size, **TINY_GPT2)
    return Llama(vocab_size=vocab_size, **TINY_LLAMA)


def test_llama_causal_lm_is_a_llama_for_causal_lm(tmp_path, stdlib_text_file, capsys):
    data = TextDataModule(
        files=[str(stdlib_text_file)],
        tokenizer="bpe",
        bpe_vocab_size=300,
        max_seq_len=32,
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
    )
    task = CausalLM(Llama(vocab_size=data.vocab_size, **TINY_LLAMA), optimizer=adamw(lr=1e-2))
    ckpt = _fit(tmp_path, task, data)

    out = tmp_path / "exported"
    assert _export(ckpt, out, capsys) == f"exported {ckpt} as LlamaForCausalLM + tokenizer to {out}"
    batch = _check_tokenizer(out, ckpt, "def wrap(text, width=70): return lines")
    assert set(batch) == {"input_ids", "attention_mask"}
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    eot = transformers.AutoTokenizer.from_pretrained(out).eos_token_id
    assert eot is not None and model.config.eos_token_id == eot
    zoo_task = CausalLM.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        _close(model(**batch).logits, zoo_task.backbone(batch["input_ids"]))


@pytest.mark.parametrize("zero_bias", [True, False])
def test_llama_sequence_classification(tmp_path, capsys, zero_bias):
    data = _sentences(tmp_path, "bpe")
    task = SequenceClassification(
        Llama(vocab_size=data.vocab_size, **TINY_LLAMA),
        num_labels=3,
        pooling="last",
        optimizer=adamw(lr=1e-2),
    )
    if zero_bias:  # transformers' score layer has none: train without one
        task.head[1].bias.requires_grad_(False)
    ckpt = _fit(tmp_path, task, data)
    zoo_task = SequenceClassification.load_from_checkpoint(ckpt).eval()

    out = tmp_path / "exported"
    line = _export(ckpt, out, capsys)
    batch = _padded(out, [SAMPLE, SENTENCES[2][0]])
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # the second row is padded
    if not zero_bias:
        assert line.startswith(f"exported {ckpt} as LlamaModel + tokenizer to {out}; the classification head")
        assert "LlamaForSequenceClassification's score layer has no bias" in line
        model = transformers.AutoModel.from_pretrained(out).eval()
        with torch.no_grad():
            ours = zoo_task.backbone.hidden_states(batch["input_ids"], attention_mask=batch["attention_mask"])
            _close(model(**batch).last_hidden_state, ours, batch["attention_mask"])
        return
    assert line == f"exported {ckpt} as LlamaForSequenceClassification + tokenizer to {out}"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert [model.config.id2label[i] for i in range(3)] == data.label_names
    with torch.no_grad():
        _close(model(**batch).logits, zoo_task(batch))


def test_llama_token_classification(tmp_path, capsys):
    conll = tmp_path / "train.txt"
    conll.write_text(CONLL)
    tokenizer = _tokenizer_file(tmp_path, "bpe")
    data = TaggingDataModule(tokenizer=str(tokenizer), train_file=str(conll), batch_size=2, max_seq_len=64)
    task = TokenClassification(
        Llama(vocab_size=data.vocab_size, **TINY_LLAMA),
        num_labels=data.num_labels,
        label_names=data.label_names,
        optimizer=adamw(lr=1e-2),
    )
    ckpt = _fit(tmp_path, task, data)

    out = tmp_path / "exported"
    assert (
        _export(ckpt, out, capsys) == f"exported {ckpt} as LlamaForTokenClassification + tokenizer to {out}"
    )
    model = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    assert type(model).__name__ == "LlamaForTokenClassification"
    batch = _padded(out, [SAMPLE, "EU rejects German call"])
    zoo_task = TokenClassification.load_from_checkpoint(ckpt).eval()
    assert bool(zoo_task.head[1].bias.any())  # the bias trained, and transformers' score layer has it
    with torch.no_grad():
        _close(model(**batch).logits, zoo_task(batch), batch["attention_mask"])


def _squad(tmp_path: Path) -> Path:
    questions = [
        {"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]}
        for i, (q, a) in enumerate(QUESTIONS)
    ]
    path = tmp_path / "squad.json"
    path.write_text(
        json.dumps({"data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": questions}]}]})
    )
    return path


@pytest.mark.parametrize(
    "family, architecture",
    [
        ("bert", "BertForQuestionAnswering"),
        ("gpt2", "GPT2ForQuestionAnswering"),
        ("llama", "LlamaForQuestionAnswering"),
    ],
)
def test_question_answering(tmp_path, capsys, family, architecture):
    tokenizer = _tokenizer_file(tmp_path, "wordpiece" if family == "bert" else "bpe")
    data = QuestionAnsweringDataModule(
        tokenizer=str(tokenizer),
        train_file=str(_squad(tmp_path)),
        max_seq_len=64,
        doc_stride=16,
        max_question_len=16,
        batch_size=2,
    )
    task = QuestionAnswering(_backbone(family, data.vocab_size), optimizer=adamw(lr=1e-2))
    ckpt = _fit(tmp_path, task, data)

    out = tmp_path / "exported"
    assert _export(ckpt, out, capsys) == f"exported {ckpt} as {architecture} + tokenizer to {out}"
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(out).eval()
    assert type(model).__name__ == architecture
    questions = [q for q, _ in QUESTIONS]
    batch = dict(
        transformers.AutoTokenizer.from_pretrained(out)(
            questions, [CONTEXT[:48], CONTEXT[:30]], padding=True, return_tensors="pt"
        )
    )
    assert not batch["attention_mask"].all()  # the second pair is padded
    zoo_task = QuestionAnswering.load_from_checkpoint(ckpt).eval()
    assert bool(zoo_task.head[1].bias.any())
    with torch.no_grad():
        theirs, ours = model(**batch), zoo_task(batch)  # (N, T), (N, T), (N, T, 2)
    _close(theirs.start_logits, ours[..., 0], batch["attention_mask"])
    _close(theirs.end_logits, ours[..., 1], batch["attention_mask"])


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_first_token_classifier_is_exported_per_token_and_read_at_position_0(tmp_path, capsys, family):
    data = _sentences(tmp_path, "wordpiece" if family == "bert" else "bpe")
    task = SequenceClassification(
        _backbone(family, data.vocab_size), num_labels=3, pooling="first", optimizer=adamw(lr=1e-2)
    )
    ckpt = _fit(tmp_path, task, data)

    out = tmp_path / "exported"
    line = _export(ckpt, out, capsys)
    architecture = {"bert": "Bert", "gpt2": "GPT2", "llama": "Llama"}[family] + "ForTokenClassification"
    assert line == (
        f"exported {ckpt} as {architecture} + tokenizer to {out}; pooling='first' is exported per token: no "
        "transformers sequence classifier reads the first token's hidden state directly (BERT's adds its "
        "tanh pooler), so take logits[:, 0], zoo's logits"
    )
    model = transformers.AutoModelForTokenClassification.from_pretrained(out).eval()
    batch = _padded(out, [SAMPLE, SENTENCES[3][0]])
    zoo_task = SequenceClassification.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        _close(model(**batch).logits[:, 0], zoo_task(batch))


def test_bert2bert_summarization_is_an_encoder_decoder_model(tmp_path, capsys):
    tokenizer = _tokenizer_file(tmp_path, "wordpiece")
    records = [{"dialogue": s, "summary": s.split(" ,")[0]} for s, _ in SENTENCES]
    table = tmp_path / "pairs.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = SummarizationDataModule(
        str(table), str(table), tokenizer=str(tokenizer), max_source_len=32, max_target_len=16,
        max_tokens=128, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    ids = {name: getattr(data, name) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}
    backbone = BertEncoderDecoder(vocab_size=data.vocab_size, **TINY_BERT)
    decoding = Decoding(min_length=0, no_repeat_ngram_size=0, max_new_tokens=12)
    task = Summarization(
        backbone, **ids, decoding=decoding, val_num_beams=0, optimizer=adamw(lr=1e-2), lr_scheduler=None
    )
    ckpt = _fit(tmp_path, task, data)

    out = tmp_path / "exported"
    assert _export(ckpt, out, capsys) == f"exported {ckpt} as EncoderDecoderModel + tokenizer to {out}"
    model, info = transformers.EncoderDecoderModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # every weight written, none left over
    assert model.config.decoder_start_token_id == ids["bos_token_id"]
    source = _padded(out, [SAMPLE, SENTENCES[4][0]])
    target = _padded(out, ["the film was good", "neutral"])["input_ids"][:, :-1]  # [CLS] summary, no [SEP]
    zoo_task = Summarization.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        theirs = model(**source, decoder_input_ids=target).logits
        ours = zoo_task.backbone(source["input_ids"], target, attention_mask=source["attention_mask"])
    _close(theirs, ours)
    # greedy decoding from the config's start and end tokens, as zoo's (which never emits [PAD] or [CLS],
    # and counts the end token in max_new_tokens)
    generated = model.generate(
        **source, max_new_tokens=decoding.max_new_tokens - 1, do_sample=False, num_beams=1,
        bad_words_ids=[[ids["pad_token_id"]], [ids["bos_token_id"]]],
    )  # fmt: skip
    special = set(ids.values())
    theirs = [[t for t in row.tolist() if t not in special] for row in generated]
    assert theirs == zoo_task.generate(source["input_ids"], source["attention_mask"], num_beams=1)


# -- what cannot be exported -------------------------------------------------------------------------
def test_seq2seq_transformer_is_refused_with_the_reason(tmp_path, capsys):
    backbone = Transformer(
        vocab_size=50, max_seq_len=16, embed_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1
    )
    ckpt = _saved_untrained(tmp_path, Summarization(backbone))
    out = tmp_path / "exported"
    error = _export_fails(["--ckpt_path", str(ckpt), "--output", str(out)], capsys)
    assert error == (
        f"error: {ckpt}: a Summarization checkpoint over Transformer; transformers has no class that "
        "computes zoo's encoder-decoder Transformer (its norm placement, positions and shared embeddings are "
        "not BART's, T5's or Marian's), so it cannot be exported; a BertEncoderDecoder (BERT2BERT) backbone "
        "exports as EncoderDecoderModel"
    )
    assert not out.exists()


class RecordedALiBi(Configurable, ALiBiPositions):
    """ALiBi that records its arguments, as a part given from Python must for its checkpoint to rebuild."""


def test_llama_with_other_positions_is_refused(tmp_path, capsys):
    sizes = {**TINY_LLAMA, "num_kv_heads": None}
    ckpt = _saved_untrained(
        tmp_path, CausalLM(Llama(vocab_size=40, **sizes, positions=RecordedALiBi(num_heads=4)))
    )
    out = tmp_path / "exported"
    error = _export_fails(["--ckpt_path", str(ckpt), "--output", str(out)], capsys)
    assert error == (
        f"error: {ckpt}: transformers' Llama has rotary positions only; this Llama's positions is "
        f"{__name__}.RecordedALiBi, so it cannot be exported"
    )
    assert not out.exists()


def test_peft_for_an_encoder_decoder_is_refused(tmp_path, capsys):
    backbone = BertEncoderDecoder(vocab_size=40, **TINY_BERT)
    ckpt = _saved_untrained(tmp_path, Translation(backbone, lora=LoRA(rank=2)))
    out = tmp_path / "exported"
    error = _export_fails(["--ckpt_path", str(ckpt), "--output", str(out), "--peft"], capsys)
    assert error == (
        f"error: {ckpt}: --peft: PEFT adapters are written for GPT2, Bert and Llama backbones, not a "
        "BertEncoderDecoder; export without --peft (the merged weights include them)"
    )
    assert not out.exists()


class MyGPT2(GPT2):
    """A user's subclass of a family: its weights may mean something the family's converter does not know."""


def test_another_backbone_class_is_refused(tmp_path, capsys):
    ckpt = _saved_untrained(tmp_path, CausalLM(MyGPT2(vocab_size=40, **TINY_GPT2)))
    out = tmp_path / "exported"
    error = _export_fails(["--ckpt_path", str(ckpt), "--output", str(out)], capsys)
    assert error == (
        f"error: {ckpt}: the backbone is a MyGPT2; zoo export writes zoo.models.gpt2.GPT2, "
        "zoo.models.bert.Bert, zoo.models.llama.Llama and zoo.models.bert.BertEncoderDecoder backbones only"
    )
    assert not out.exists()
