"""Errors a user meets through `zoo`: one `error: ...` line naming the file or key, a non-zero exit, no
traceback (unless asked for), and nothing left behind by the failed run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared_file

from zoo.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes" / "gpt2" / "shakespeare-char.yaml")


def _small(root: Path, corpus: Path) -> list[str]:
    return [
        f"--data.init_args.files=[{corpus}]",
        "--data.init_args.cache_dir=" + str(root / "cache"),
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={root}",
        "--model.init_args.backbone.init_args.num_layers=1",
    ]


def _fails(args: list[str], capsys) -> str:
    """Run `zoo ARGS` in-process; it must exit 1 with one error line (and the debug hint), no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-2000:]
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[str]]:
    """A 2-step shakespeare-char checkpoint from the shipped recipe."""
    root = tmp_path_factory.mktemp("trained")
    small = _small(root, shared_file("tinyshakespeare/input.txt"))
    main(["fit", "--config", RECIPE, *small])
    (last,) = root.glob("logs/version_0/checkpoints/last.ckpt")
    return last, small


def test_a_text_file_as_checkpoint_is_named(tmp_path, trained, capsys):
    _, small = trained
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    line = _fails(["validate", "--config", RECIPE, *small, "--ckpt_path", str(text)], capsys)
    assert line.startswith(f"error: {text}: truncated or not a PyTorch checkpoint")


def test_a_checkpoint_of_another_task_is_named(tmp_path, trained, capsys):
    last, small = trained
    other = torch.load(last, weights_only=True)
    other["zoo_task"] = "zoo.tasks.masked_lm.MaskedLM"
    other["hyper_parameters"]["_class_path"] = "zoo.tasks.MaskedLM"
    torch.save(other, tmp_path / "mlm.ckpt")
    line = _fails(["validate", "--config", RECIPE, *small, "--ckpt_path", str(tmp_path / "mlm.ckpt")], capsys)
    assert line == (
        f"error: {tmp_path / 'mlm.ckpt'}: the checkpoint was written by a zoo.tasks.masked_lm.MaskedLM task, "
        "not a zoo.tasks.causal_lm.CausalLM (the config's model.class_path)"
    )


def test_a_checkpoint_of_other_data_names_the_tokenizer(tmp_path, trained, stdlib_text_file, capsys):
    last, small = trained
    other_data = [a for a in small if not a.startswith("--data.init_args.files")]
    other_data.append(f"--data.init_args.files=[{stdlib_text_file}]")
    line = _fails(["validate", "--config", RECIPE, *other_data, "--ckpt_path", str(last)], capsys)
    assert line.startswith(f"error: {last}: the checkpoint was trained with a different tokenizer (vocab ")


def test_a_checkpoint_of_another_size_names_the_weights(trained, capsys):
    last, small = trained
    wider = [*small, "--model.init_args.backbone.init_args.embed_dim=64"]
    # the command line wins over the checkpoint's hyper-parameters, so the model is built wider
    line = _fails(["validate", "--config", RECIPE, *wider, "--ckpt_path", str(last)], capsys)
    assert f"error: {last}: the checkpoint's weights do not fit the model this config builds: " in line
    assert "is [66, 128] in the checkpoint but [66, 64] here" in line and "(and 14 more)" in line


def test_a_failed_run_leaves_no_empty_version_folder(tmp_path, capsys):
    """The model's positions are checked after the logger and config were set up: nothing stays behind."""
    small = _small(tmp_path, shared_file("tinyshakespeare/input.txt"))
    line = _fails(
        ["fit", "--config", RECIPE, *small, "--model.init_args.backbone.init_args.max_seq_len=32"], capsys
    )
    assert "the data's max_seq_len=64 exceeds the backbone's max_seq_len=32" in line
    assert not list((tmp_path / "logs").glob("version_*")) if (tmp_path / "logs").exists() else True
    # a previous run's folder is never touched
    (tmp_path / "logs" / "version_0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "logs" / "version_0" / "metrics.csv").write_text("step\n")
    _fails(["fit", "--config", RECIPE, *small, "--model.init_args.backbone.init_args.max_seq_len=32"], capsys)
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["version_0"]
    assert (tmp_path / "logs" / "version_0" / "metrics.csv").read_text() == "step\n"


def test_a_failed_first_run_leaves_no_folder_at_all(tmp_path, capsys):
    """The run's default_root_dir and logs/ did not exist before it: neither is left behind."""
    root = tmp_path / "run"
    small = _small(root, shared_file("tinyshakespeare/input.txt"))
    small.remove("--data.init_args.cache_dir=" + str(root / "cache"))
    _fails(["fit", "--config", RECIPE, *small, "--model.init_args.backbone.init_args.max_seq_len=32"], capsys)
    assert not root.exists()


def test_ckpt_path_may_name_a_run_folder(tmp_path, trained, capsys):
    """A version folder or its checkpoints/ folder means the last.ckpt in it, said in one line; a folder
    without one is an error naming the checkpoints it does hold."""
    last, small = trained
    version = last.parent.parent
    main(["validate", "--config", RECIPE, *small, "--ckpt_path", str(version)])
    assert f"zoo: --ckpt_path {version} is a folder: using {last}" in capsys.readouterr().err
    logs = version.parent
    line = _fails(["validate", "--config", RECIPE, *small, "--ckpt_path", str(logs)], capsys)
    assert line.startswith(f"error: --ckpt_path {logs} is a folder with no last.ckpt (nor checkpoints/")
    assert "version_0/checkpoints/last.ckpt" in line


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--data.init_args.batch_size=0", "batch_size must be a positive integer, got 0"),
        ("--model.init_args.top_k=0", "top_k must be a positive integer, got 0"),
        ("--model.init_args.temperature=-1", "temperature must be >= 0, got -1"),
    ],
)
def test_bad_values_are_named_at_construction(tmp_path, override, message, capsys):
    small = _small(tmp_path, shared_file("tinyshakespeare/input.txt"))
    line = _fails(["fit", "--config", RECIPE, *small, override], capsys)
    assert message in line
    assert not (tmp_path / "logs").exists(), "nothing is written before the classes are built"


def test_debug_shows_the_traceback_and_the_process_exits_non_zero(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    args = ["validate", "--config", RECIPE, "--ckpt_path", str(text)]
    quiet = subprocess.run([sys.executable, "-m", "zoo.cli", *args], capture_output=True, text=True, cwd=REPO)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-2].startswith(f"error: {text}: truncated or not")
    loud = subprocess.run(
        [sys.executable, "-m", "zoo.cli", *args, "--debug"], capture_output=True, text=True, cwd=REPO
    )
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "CheckpointError" in loud.stderr


def test_a_checkpoint_saved_from_python_works_with_zoo_test(tmp_path, capsys):
    """Hyper-parameters without LightningCLI's `_class_path` (plain `Trainer.fit`) still rebuild the model."""
    import lightning as L

    from zoo.data import TextDataModule
    from zoo.models.gpt2 import GPT2
    from zoo.tasks import CausalLM

    corpus = shared_file("tinyshakespeare/input.txt")
    data = TextDataModule([str(corpus)], tokenizer="char", max_seq_len=64, cache_dir=str(tmp_path / "cache"))
    model = CausalLM(
        GPT2(vocab_size=data.vocab_size, max_seq_len=64, embed_dim=32, num_heads=2, num_layers=1)
    )
    trainer = L.Trainer(max_steps=1, limit_val_batches=1, logger=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(tmp_path / "python.ckpt")
    capsys.readouterr()
    small = [f"--data.init_args.files=[{corpus}]", "--trainer.limit_test_batches=1"]
    small.append(f"--trainer.default_root_dir={tmp_path}")
    main(["test", "--config", RECIPE, *small, "--ckpt_path", str(tmp_path / "python.ckpt")])
    assert "test_loss" in capsys.readouterr().out


def test_ckpt_path_last_without_a_checkpoint_is_an_error_for_evaluation(tmp_path, capsys):
    small = _small(tmp_path, shared_file("tinyshakespeare/input.txt"))
    line = _fails(["validate", "--config", RECIPE, *small, "--ckpt_path", "last"], capsys)
    assert line.startswith(
        f"error: --ckpt_path last: no last.ckpt under {tmp_path / 'logs'}, so there is no "
    )
