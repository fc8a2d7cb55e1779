"""``zoo.io``: a write is complete or absent (an interrupted one leaves the old file and no temporary), and
what zoo writes (files and folders of an export, a checkpoint, prepared shards, a token cache) has the
modes the umask gives, as files ``open()`` creates do: 0644 / 0755 under umask 022, 0600 / 0700 under 077."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from zoo.io import atomic_directory, atomic_write


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _modes(root: Path) -> dict[str, str]:
    """``{path under root: octal mode}`` for ``root`` and everything in it."""
    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}


def _expected(root: Path, umask: int) -> dict[str, str]:
    return {
        str(p.relative_to(root)): oct((0o777 if p.is_dir() else 0o666) & ~umask)
        for p in [root, *root.rglob("*")]
    }


def _assert_umask_modes(root: Path, umask: int) -> None:
    assert len(_modes(root)) > 1
    assert _modes(root) == _expected(root, umask)


# -- the writer ---------------------------------------------------------------------------------------------


def test_files_and_folders_get_the_modes_of_the_umask(tmp_path, umask):
    out = tmp_path / "out"
    atomic_write(out / "bytes.bin", b"\x00\x01")
    atomic_write(out / "text.txt", "héllo\n")
    atomic_write(out / "file-writer.npy", lambda f: f.write(b"by file"))
    atomic_write(out / "path-writer.bin", lambda f: Path(f.name).write_bytes(b"by path"))
    with atomic_directory(out / "folder") as tmp:
        (tmp / "inner.txt").write_text("x")
    assert (out / "text.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (out / "path-writer.bin").read_bytes() == b"by path"
    assert (out / "folder" / "inner.txt").read_text() == "x"
    _assert_umask_modes(out, umask)


class Interrupted(BaseException):
    """Raised inside a write, as KeyboardInterrupt would be."""


@pytest.mark.parametrize("writer", ["file", "path"])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, writer):
    target = tmp_path / "last.ckpt"
    atomic_write(target, b"old, complete")

    def half_then_die(f):
        if writer == "file":
            f.write(b"new, ha")
            f.flush()
        else:
            Path(f.name).write_bytes(b"new, ha")
        assert sorted(os.listdir(tmp_path)) != ["last.ckpt"]  # the temporary file exists meanwhile
        raise Interrupted

    with pytest.raises(Interrupted):
        atomic_write(target, half_then_die)
    assert target.read_bytes() == b"old, complete"
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_an_interrupted_folder_write_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "config.json").write_text("old")
    with pytest.raises(Interrupted), atomic_directory(target) as tmp:
        (tmp / "config.json").write_text("new")
        raise Interrupted
    assert os.listdir(tmp_path) == ["model"] and os.listdir(target) == ["config.json"]
    assert (target / "config.json").read_text() == "old"
    with atomic_directory(target) as tmp:  # replaced whole: a file of the old folder does not survive
        (tmp / "weights.bin").write_bytes(b"new")
    assert os.listdir(tmp_path) == ["model"] and os.listdir(target) == ["weights.bin"]


def test_a_cache_folder_another_process_completed_first_is_kept(tmp_path):
    target = tmp_path / "instances"
    with atomic_directory(target, replace=False) as mine:
        (mine / "meta.json").write_text("mine")
        with atomic_directory(target, replace=False) as theirs:  # the other process finishes first
            (theirs / "meta.json").write_text("theirs")
    assert (target / "meta.json").read_text() == "theirs"
    assert os.listdir(tmp_path) == ["instances"]


# -- what zoo writes through it -----------------------------------------------------------------------------


def test_a_checkpoint_and_its_export_follow_the_umask(tmp_path, umask):
    from conftest import cpu_trainer

    from zoo.checkpoint import install_atomic_checkpoint_io
    from zoo.export import export_checkpoint
    from zoo.models.gpt2 import GPT2
    from zoo.nn.lora import LoRA
    from zoo.tasks import CausalLM

    task = CausalLM(
        GPT2(vocab_size=30, max_seq_len=16, embed_dim=16, num_heads=2, num_layers=1), lora=LoRA(rank=2)
    )
    trainer = cpu_trainer(tmp_path / "run", max_steps=0)
    trainer.strategy.connect(task)
    install_atomic_checkpoint_io(trainer)
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    _assert_umask_modes(ckpt.parent, umask)
    out = export_checkpoint(ckpt, tmp_path / "export" / "model", peft=True)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    _assert_umask_modes(tmp_path / "export", umask)


def test_prepared_shards_and_a_token_cache_follow_the_umask(tmp_path, umask, capsys):
    from zoo.data import TextDataModule
    from zoo.data.prepare_corpus import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be\n" * 200)
    dm = TextDataModule(
        [str(corpus)], tokenizer="char", max_seq_len=8, batch_size=2, cache_dir=str(tmp_path / "cache")
    )
    dm.prepare_data()
    assert list((tmp_path / "cache" / "tokens").glob("*.uint16"))
    _assert_umask_modes(tmp_path / "cache", umask)
    tokenizer = next((tmp_path / "cache" / "tokenizers").rglob("tokenizer.json"))
    main(
        [
            "--files",
            str(corpus),
            "--tokenizer",
            str(tokenizer),
            "--out",
            str(tmp_path / "shards"),
            "--shard-tokens",
            "1000",
        ]
    )
    assert "in 4 shard(s)" in capsys.readouterr().out
    _assert_umask_modes(tmp_path / "shards", umask)
