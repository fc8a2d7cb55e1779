"""``python -m zoo.data.prepare_corpus`` as a user runs it: bad input ends with one ``error:`` line naming
the file or glob and exit code 1 (no traceback, no half-written corpus); a folder means its ``*.txt``
files; shards hold at most ``--shard-tokens`` tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file

from zoo.data.prepare_corpus import main
from zoo.data.tokenizers import train_bpe_tokenizer, train_char_tokenizer

TEXT = "".join(f"line {i}: to be or not to be, that is the question.\n" for i in range(200))


def _run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zoo.data.prepare_corpus", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def _fails_with(result: subprocess.CompletedProcess, message: str) -> None:
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"error: {message}\n")


@pytest.fixture
def tokenizer(tmp_path: Path) -> Path:
    """A BPE tokenizer with ``<|endoftext|>`` (added after each file: the 1-token corpus of an empty one)."""
    path = tmp_path / "tokenizer.json"
    path.write_text(train_bpe_tokenizer([TEXT], vocab_size=300).to_str())
    return path


def test_a_glob_that_matches_nothing_is_one_error_line(tmp_path, tokenizer):
    out = tmp_path / "out"
    result = _run("--files", tmp_path / "nope" / "*.txt", "--tokenizer", tokenizer, "--out", out)
    _fails_with(result, f"corpus spec '{tmp_path / 'nope' / '*.txt'}' matches no file")
    assert not out.exists()


def test_a_folder_means_its_txt_files(tmp_path, tokenizer, capsys):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.txt", "a.txt", "notes.md", "sub/c.txt"):
        (folder / name).write_text(TEXT)
    out = tmp_path / "out"
    result = _run("--files", folder, "--tokenizer", tokenizer, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{out}: ") and " tokens of 2 file(s) in 1 shard(s)" in result.stdout
    assert json.loads((out / "index.json").read_text())["files"] == [
        str(folder / "a.txt"),
        str(folder / "b.txt"),
    ]
    for name in ("a.txt", "b.txt", "sub/c.txt"):
        (folder / name).unlink()
    result = _run("--files", folder, "--tokenizer", tokenizer, "--out", tmp_path / "out2")
    _fails_with(result, f"corpus folder '{folder}' holds no *.txt file")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "a folder (its *.txt files" in " ".join(capsys.readouterr().out.split())


def test_an_empty_corpus_is_an_error_naming_its_files(tmp_path, tokenizer):
    empty, only_bom = tmp_path / "empty.txt", tmp_path / "bom.txt"
    empty.write_text("")
    only_bom.write_bytes(b"\xef\xbb\xbf")
    out = tmp_path / "out"
    result = _run("--files", empty, only_bom, "--tokenizer", tokenizer, "--out", out)
    _fails_with(result, f"{empty}, {only_bom}: the corpus is empty: no text to tokenize")
    assert list(out.iterdir()) == [], "nothing that looks like a corpus is left"


def test_unreadable_input_is_one_error_line_naming_the_file(tmp_path, tokenizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(TEXT.encode() + b"caf\xe9\n")
    result = _run("--files", corpus, "--tokenizer", tokenizer, "--out", tmp_path / "out")
    _fails_with(result, f"{corpus}: not UTF-8 text (byte {len(TEXT) + 3}: invalid continuation byte)")
    result = _run("--files", corpus, "--tokenizer", tmp_path / "nope.json", "--out", tmp_path / "out")
    _fails_with(result, f"tokenizer file {tmp_path / 'nope.json'} not found")
    result = _run("--files", corpus, "--tokenizer", tokenizer, "--out", corpus)
    _fails_with(result, f"--out {corpus} is a file; give the folder to write")


def test_shards_hold_at_most_shard_tokens(tmp_path):
    corpus = shared_file("tinyshakespeare/input.txt")  # one document of 1,115,394 characters
    tokenizer = tmp_path / "char.json"
    text = corpus.read_text(encoding="utf-8")
    char = train_char_tokenizer([text])
    tokenizer.write_text(char.to_str())
    out = tmp_path / "out"
    result = _run("--files", corpus, "--tokenizer", tokenizer, "--out", out, "--shard-tokens", "200000")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}: 1,115,394 tokens of 1 file(s) in 6 shard(s)\n"
    index = json.loads((out / "index.json").read_text())
    assert [s["tokens"] for s in index["shards"]] == [200_000] * 5 + [115_394]
    for shard in index["shards"]:
        assert (out / shard["file"]).stat().st_size == 2 * shard["tokens"]  # uint16
    stream = np.concatenate([np.fromfile(out / s["file"], dtype=np.uint16) for s in index["shards"]])
    assert stream.tolist() == char.encode(text, add_special_tokens=False).ids  # every token, in order
