"""Fill-mask with `zoo predict`: the model's own probabilities, sorted and cut at top_k, one row per filler,
the same in padded batches as alone, bad input named by file and line, and the mini recipe end to end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import cpu_trainer, shared_file
from tokenizers import Tokenizer

from zoo.cli import main
from zoo.data import BertPretrainingDataModule
from zoo.models.bert import Bert
from zoo.tasks import MaskedLM
from zoo.tasks.callbacks import PredictionWriter

REPO = Path(__file__).resolve().parents[2]
VOCAB = [
    *("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    *("the", "a", "cat", "dog", "mat", "sat", "on", "ran", "home", "he", "she", "walk", "and", "was"),
    *("big", "small", "red", "to", "of", "in", "it", "is", ".", ",", "##ed", "##ing", "##s", "##er"),
]
SENTENCES = [
    "the [MASK] sat on the mat .",
    "he [MASK] home and the dog [MASK] on a [MASK] mat .",
    "[MASK] walk [MASK]",
]


def _data(tmp_path: Path, lines: list[str], **kw) -> BertPretrainingDataModule:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(lines) + "\n")
    kw = {"tokenizer": str(vocab), "predict_file": str(sentences), "max_seq_len": 32, **kw}
    dm = BertPretrainingDataModule([str(sentences)], **kw)
    dm.setup("predict")
    return dm


def _task(vocab_size: int, top_k: int = 5) -> MaskedLM:
    torch.manual_seed(0)
    backbone = Bert(vocab_size=vocab_size, max_seq_len=32, embed_dim=32, num_heads=2, num_layers=2)
    return MaskedLM(backbone, top_k=top_k).eval()


@torch.no_grad()
def _predict(task: MaskedLM, dm: BertPretrainingDataModule) -> list:
    return [
        fillers for i, batch in enumerate(dm.predict_dataloader()) for fillers in task.predict_step(batch, i)
    ]


def test_fillers_are_the_softmax_of_the_mlm_logits_at_each_mask(tmp_path):
    dm = _data(tmp_path, SENTENCES, eval_batch_size=8)
    task = _task(dm.vocab_size, top_k=4)
    (batch,) = list(dm.predict_dataloader())
    with torch.no_grad():
        predicted = task.predict_step(batch, 0)
        logits = task(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).mlm_logits
    assert [len(masks) for masks in predicted] == [1, 3, 2]  # every mask of every line, in order
    mask_id = dm.tokenizer.token_to_id("[MASK]")
    for row, masks in enumerate(predicted):
        positions = (batch["input_ids"][row] == mask_id).nonzero().flatten().tolist()
        for position, fillers in zip(positions, masks, strict=True):
            expected = logits[row, position].softmax(-1).topk(4)  # a direct full forward
            probabilities = torch.tensor([p for _, p in fillers])
            assert [i for i, _ in fillers] == expected.indices.tolist()
            torch.testing.assert_close(probabilities, expected.values)
            assert probabilities.tolist() == sorted(probabilities.tolist(), reverse=True)
    # a top_k beyond the vocabulary gives every token once: the whole distribution
    everything = _predict(_task(dm.vocab_size, top_k=1000), dm)
    for fillers in (f for masks in everything for f in masks):
        assert sorted(i for i, _ in fillers) == list(range(dm.vocab_size))
        assert math.isclose(sum(p for _, p in fillers), 1.0, rel_tol=1e-5)


def test_padded_batches_fill_like_one_sentence_at_a_time(tmp_path):
    task = _task(len(VOCAB))
    batched, alone = (
        _data(tmp_path, SENTENCES, eval_batch_size=3),
        _data(tmp_path, SENTENCES, eval_batch_size=1),
    )
    assert (next(iter(batched.predict_dataloader()))["attention_mask"] == 0).any()  # padding is involved
    together, one_by_one = _predict(task, batched), _predict(task, alone)
    assert len(together) == len(one_by_one) == 3
    for a, b in zip(together, one_by_one, strict=True):
        for fillers_a, fillers_b in zip(a, b, strict=True):
            assert [i for i, _ in fillers_a] == [i for i, _ in fillers_b]
            torch.testing.assert_close(
                torch.tensor([p for _, p in fillers_a]), torch.tensor([p for _, p in fillers_b])
            )


def test_trainer_predict_writes_the_rows_without_building_pretraining_instances(tmp_path):
    """`files` here is the prediction file itself, one single-sentence document: building NSP instances
    from it would fail, so passing proves `predict` only needs the tokenizer."""
    dm = _data(tmp_path, SENTENCES, eval_batch_size=2)
    task = _task(dm.vocab_size, top_k=2)
    expected = "".join(dm.format_prediction(i, fillers) for i, fillers in enumerate(_predict(task, dm)))
    out = tmp_path / "out" / "fills.tsv"
    cpu_trainer(tmp_path, callbacks=[PredictionWriter(str(out))]).predict(task, datamodule=dm)
    assert out.read_text() == expected
    assert len(expected.splitlines()) == 1 + 2 * (1 + 3 + 2)  # header, then top_k rows per mask


def test_rows_name_line_mask_token_word_and_join_continuation_pieces(tmp_path):
    dm = _data(tmp_path, ["he walk [MASK] home .", "", "[MASK] [MASK]"])
    ids = dm.tokenizer.token_to_id
    first = dm.format_prediction(0, [[(ids("##ed"), 0.5), (ids("home"), 0.25)]])
    second = dm.format_prediction(1, [[(ids("##s"), 0.125)], [(ids("##s"), 0.0625), (ids("cat"), 0.03125)]])
    assert first.splitlines() == [
        "line\tmask\ttoken\tword\tprobability",
        "1\t1\t##ed\twalked\t0.5",  # a ## piece completes the word before the mask
        "1\t1\thome\thome\t0.25",
    ]
    assert second.splitlines() == [  # the file's own line numbers: the blank line 2 is skipped
        "3\t1\t##s\ts\t0.125",  # nothing before it but [CLS]
        "3\t2\t##s\t[MASK]s\t0.0625",
        "3\t2\tcat\tcat\t0.03125",
    ]


def test_bad_predict_files_are_named_by_file_and_line(tmp_path):
    with pytest.raises(ValueError, match=r"sentences\.txt:3: no \[MASK\]"):
        _data(tmp_path, ["the [MASK] sat .", "", "the cat sat ."])
    with pytest.raises(ValueError, match=r"sentences\.txt:1: no \[MASK\]"):  # the token is case-sensitive
        _data(tmp_path, ["the [mask] sat ."])
    with pytest.raises(ValueError, match=r"sentences\.txt:2: 10 tokens .* max_seq_len=8"):
        _data(tmp_path, ["[MASK] .", "the cat sat on the [MASK] mat ."], max_seq_len=8)
    with pytest.raises(ValueError, match="every line is blank"):
        _data(tmp_path, ["", "  "])
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        _data(tmp_path, SENTENCES, predict_file=str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="predict_file"):
        _data(tmp_path, SENTENCES, predict_file=None)
    with pytest.raises(ValueError, match="MaskedLM: top_k must be a positive integer, got 0"):
        _task(len(VOCAB), top_k=0)


def test_zoo_predict_with_the_mini_recipe_writes_the_models_fillers(tmp_path, monkeypatch):
    """`zoo fit` (2 steps, a tiny encoder) then `zoo predict --ckpt_path` with a PredictionWriter added on
    the command line: one row per filler, top_k from the command line, the checkpoint's probabilities."""
    corpus = shared_file("ud_en_ewt/en_ewt-ud-dev.conllu")
    monkeypatch.chdir(tmp_path)  # the recipe's runs/ and .cache/ land here
    (tmp_path / "sentences.txt").write_text("The [MASK] is here .\n\nShe [MASK] to the [MASK] yesterday .\n")
    recipe = str(REPO / "recipes" / "bert" / "mini-mlm-nsp.yaml")
    small = [
        f"--data.init_args.files=[{corpus}]",
        "--data.init_args.wordpiece_vocab_size=1000",
        "--data.init_args.dupe_factor=1",
        "--data.init_args.batch_size=8",
        "--data.init_args.eval_batch_size=8",
        "--model.init_args.backbone.init_args.embed_dim=32",
        "--model.init_args.backbone.init_args.num_heads=2",
        "--model.init_args.backbone.init_args.num_layers=1",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
    ]
    main(["fit", "--config", recipe, *small])
    last = tmp_path / "runs" / "bert-mini" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    main(
        [
            "predict",
            "--config",
            recipe,
            *small,
            "--data.init_args.predict_file=sentences.txt",
            "--trainer.callbacks+=zoo.tasks.callbacks.PredictionWriter",
            "--trainer.callbacks.output_file=fills.tsv",
            "--model.init_args.top_k=3",
            "--ckpt_path",
            str(last),
        ]
    )
    header, *rows = [line.split("\t") for line in (tmp_path / "fills.tsv").read_text().splitlines()]
    assert header == ["line", "mask", "token", "word", "probability"]
    assert [(r[0], r[1]) for r in rows] == [("1", "1")] * 3 + [("3", "1")] * 3 + [("3", "2")] * 3
    for start in range(0, len(rows), 3):
        probabilities = [float(r[4]) for r in rows[start : start + 3]]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1
    # the numbers are the checkpoint's own: a direct forward of line 1 gives the same top 3
    model = MaskedLM.load_from_checkpoint(last, weights_only=True).eval()
    saved = torch.load(last, weights_only=True)["BertPretrainingDataModule"]["tokenizer"]
    tokenizer = Tokenizer.from_str(saved)
    ids = tokenizer.encode("The [MASK] is here .").ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).mlm_logits[0, ids.index(tokenizer.token_to_id("[MASK]"))]
    top = logits.softmax(-1).topk(3)
    assert [r[2] for r in rows[:3]] == [tokenizer.id_to_token(i) for i in top.indices.tolist()]
    torch.testing.assert_close(
        torch.tensor([float(r[4]) for r in rows[:3]]), top.values, rtol=1e-5, atol=1e-7
    )
