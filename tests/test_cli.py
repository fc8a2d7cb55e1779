"""The CLI: every recipe parses, fit -> checkpoint -> predict works, bad configs name the problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_file

from zoo.cli import ZooCLI, main
from zoo.tasks import TokenClassification

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


class _ParseOnly(ZooCLI):
    """Parse and validate a config against the code's signatures without building anything."""

    def instantiate_classes(self) -> None:
        pass


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in RECIPES])
def test_every_recipe_parses(recipe):
    text = recipe.read_text()
    assert text.startswith("#") and "zoo " in text.split("\n\n")[0] + text, "header must give the command"
    cli = _ParseOnly(
        subclass_mode_model=True, subclass_mode_data=True, run=False, args=["--config", str(recipe)]
    )
    assert cli.config.model.class_path.startswith("zoo.")
    assert cli.config.data.class_path.startswith("zoo.")


def test_unknown_key_and_malformed_yaml_are_named(tmp_path, capsys):
    recipe = (REPO / "recipes" / "gpt2" / "shakespeare-char.yaml").read_text()
    assert "num_heads: 4" in recipe  # the edits below must change something
    bad_key = tmp_path / "bad_key.yaml"
    bad_key.write_text(recipe.replace("num_heads: 4", "num_haeds: 4"))
    with pytest.raises(SystemExit) as exc:
        _ParseOnly(
            subclass_mode_model=True, subclass_mode_data=True, run=False, args=["--config", str(bad_key)]
        )
    assert exc.value.code not in (0, None)  # the shell sees a failure
    assert "num_haeds" in capsys.readouterr().err
    wrong_type = tmp_path / "wrong_type.yaml"
    wrong_type.write_text(recipe.replace("num_heads: 4", "num_heads: four"))
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(wrong_type)])
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err  # jsonargparse's message: the key, the expected type, the value given
    assert 'Parser key "num_heads"' in err and "Expected a <class 'int'>. Got value: four" in err
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("model:\n  class_path: zoo.tasks.CausalLM\n   init_args: [\n")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(malformed)])
    assert exc.value.code not in (0, None)  # sys.exit(message): exit status 1
    assert f"{malformed}:3:" in str(exc.value) and "invalid YAML" in str(exc.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match="config file .*nope.yaml not found"):
        main(["fit", "--config", str(tmp_path / "nope.yaml")])


def test_finetune_recipe_fit_then_zoo_predict_writes_one_tag_per_word(
    tmp_path, monkeypatch, minilm_dir, capsys
):
    """The CoNLL recipe end to end on a few real sentences: labels linked from the training file, a
    checkpoint that reloads weights-only, and `zoo predict` writing the input back with one tag per word."""
    conll = REPO.parent / "shared" / "data" / "conll2003" / "train.txt"
    if not conll.is_file():
        pytest.skip(f"{conll} not found: the shared datasets live in ../shared/data beside the repo")
    monkeypatch.chdir(tmp_path)
    sentences = [s for s in conll.read_text(encoding="utf-8").split("\n\n") if not s.startswith("-DOCSTART-")]
    (tmp_path / "train.txt").write_text("\n\n".join(sentences[:40]), encoding="utf-8")
    (tmp_path / "new.txt").write_text("Peter\nBlackburn\nflew\nto\nBrussels\n\nThe\nEU\nsaid\nno\n.\n")
    recipe = str(REPO / "recipes" / "finetune" / "conll2003-minilm.yaml")
    small = [
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=4",
        "--trainer.limit_val_batches=1",
        "--data.init_args.train_file=train.txt",
        "--data.init_args.val_file=train.txt",
        "--data.init_args.batch_size=8",
    ]
    main(["fit", "--config", recipe, *small])
    last = tmp_path / "runs" / "conll2003-minilm" / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    model = TokenClassification.load_from_checkpoint(last, weights_only=True)
    assert model.label_names[0] == "O" and len(model.label_names) == model.num_labels == 9
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
    predictions = tmp_path / "runs" / "conll2003-minilm" / "logs" / "version_1" / "predictions.txt"
    written = predictions.read_text().strip("\n").split("\n\n")
    rows = [[line.split() for line in block.splitlines()] for block in written]
    assert [[r[0] for r in block] for block in rows] == [
        ["Peter", "Blackburn", "flew", "to", "Brussels"],
        ["The", "EU", "said", "no", "."],
    ]
    assert all(len(r) == 2 and r[1] in model.label_names for block in rows for r in block)
    # with --ckpt_path the checkpoint's hyper-parameters rebuild the model, but the command line wins
    capsys.readouterr()
    main(["validate", "--config", recipe, *small, "--ckpt_path", str(last)])
    assert "val_f1" in capsys.readouterr().out
    main(
        [
            "validate",
            "--config",
            recipe,
            *small,
            "--ckpt_path",
            str(last),
            "--model.init_args.entity_metric=none",
        ]
    )
    out = capsys.readouterr().out
    assert "val_acc" in out and "val_f1" not in out


def test_each_run_writes_samples_and_predictions_in_its_own_version_folder(tmp_path, capsys):
    """Runs in one default_root_dir keep their own files: fit's samples.txt beside its config.yaml in
    version_0, each `zoo predict` its predictions.txt in the version folder it opens (two runs, two files,
    each with its own prompts); without a logger, default_root_dir. The last line printed names the file."""
    text = shared_file("tinyshakespeare/input.txt")
    root = tmp_path / "run"
    small = [
        "--config",
        str(REPO / "recipes" / "gpt2" / "shakespeare-char.yaml"),
        f"--data.init_args.files=[{text}]",
        f"--data.init_args.cache_dir={tmp_path / 'cache'}",
        f"--trainer.default_root_dir={root}",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--model.init_args.max_new_tokens=8",
        "--model.init_args.backbone.init_args.num_layers=1",
        "--model.init_args.backbone.init_args.embed_dim=32",
        "--model.init_args.backbone.init_args.num_heads=2",
    ]
    main(["fit", *small])
    fitted = root / "logs" / "version_0"
    assert {"config.yaml", "samples.txt"} <= {p.name for p in fitted.iterdir()}
    assert f"zoo: wrote 2 samples to {fitted / 'samples.txt'}" in capsys.readouterr().err

    for version, prompt in (("version_1", "ROMEO:"), ("version_2", "JULIET:")):
        main(["predict", *small, f"--data.init_args.prompts={json.dumps([prompt])}", "--ckpt_path", "last"])
        written = root / "logs" / version / "predictions.txt"
        assert capsys.readouterr().err.splitlines()[-1] == f"zoo: wrote 1 predictions to {written}"
        assert (written.parent / "config.yaml").is_file()
    first, second = (root / "logs" / v / "predictions.txt" for v in ("version_1", "version_2"))
    assert first.read_text().startswith("ROMEO:") and second.read_text().startswith("JULIET:")
    assert not list(root.glob("*.txt"))

    last = fitted / "checkpoints" / "last.ckpt"
    main(["predict", *small, "--trainer.logger=false", "--ckpt_path", str(last)])
    unlogged = root / "predictions.txt"
    assert capsys.readouterr().err.splitlines()[-1] == f"zoo: wrote 2 predictions to {unlogged}"
    assert first.read_text().startswith("ROMEO:"), "the earlier runs' files are left alone"


def test_top_level_help_answers_without_lightning_and_lists_every_subcommand():
    """`zoo --help` must not pay Lightning's import (seconds); it lists what `zoo` dispatches."""
    from lightning.pytorch.cli import LightningCLI

    from zoo.__main__ import HELP

    code = "import sys; from zoo.__main__ import main; sys.argv = ['zoo', '--help']\n"
    code += "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'lightning' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "0 False", proc.stdout[-500:] + proc.stderr[-500:]
    listed = set(HELP.split("{", 1)[1].split("}", 1)[0].split(","))
    assert listed == set(LightningCLI.subcommands()) | {"export"}
