"""The docs are tests. Every ``zoo`` command that README.md and docs/ print parses against the code as
printed (``--print_config``), carries a ``# needs ...`` mark exactly when it cannot run on a CPU with
../shared/data, and the quickstart's sequence (fit, predict, resume, export) runs as docs/quickstart.md
prints it, at a small size."""

from __future__ import annotations

import csv
import glob
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import shared_file

from zoo.cli import main

REPO = Path(__file__).resolve().parents[1]
PAGES = [
    REPO / "README.md",
    *sorted((REPO / "docs").rglob("*.md")),
    *sorted((REPO / "recipes").rglob("*.yaml")),
]

# a command at the start of a line (or of a code span): `zoo fit ...`, `OMP_NUM_THREADS=1 zoo fit ...`,
# `srun zoo fit ...`, `torchrun ... -m zoo.cli fit ...`
_COMMAND = re.compile(
    r"^\s*(?:\w+=\S*\s+)*(?:srun\s+)?(?:zoo|(?:python\S*|torchrun)\s.*?-m\s+zoo\.cli)"
    r"\s+((?:fit|validate|test|predict|export)(?=\s|$).*)"
)
_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE = re.compile(r"`([^`]+)`")
# The docs' mark for a command that cannot run on a CPU with ../shared/data: a comment at the end of the
# command, `# needs a GPU`, `# needs 8 GPUs and your corpus`. Inline commands (in prose or a table row)
# say so on their line ("needs", or a hardware column with "GPU").
NEEDS = re.compile(r"\bneeds\b")
INLINE_NEEDS = re.compile(r"\bneeds\b|GPU")

# Placeholders the docs print, and what stands in for them here.
PLACEHOLDERS = {
    "recipes/....yaml": "recipes/gpt2/shakespeare-char.yaml",  # README, docs/index.md: any recipe
    "FILE": "../shared/data/conll2003/valid.txt",  # recipes/finetune/conll2003-minilm.yaml names this one
}
# Input files a page asks the reader to write (it shows their lines); the check writes a stand-in.
READER_FILES = ("sentences.txt", "reviews.txt", "held_out.txt", "my_lm.yaml", "conversations.jsonl")
# data keys that name input files, checked to exist (other than under ../shared/data)
FILE_KEYS = ("files", "val_files", "train_files", "test_files", "train_file", "val_file", "test_file")
FILE_KEYS += ("predict_file",)


@dataclass(frozen=True)
class DocCommand:
    """A ``zoo`` command as a page prints it."""

    page: str  # relative to the repository
    line: int
    argv: tuple[str, ...]  # after `zoo`: the subcommand and its arguments
    comment: str  # the `# ...` at its end (inline commands: their line of the page)
    inline: bool

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _split_comment(text: str) -> tuple[str, str]:
    """``code  # comment`` -> (code, comment); a ``#`` inside quotes or inside a word is not a comment."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i], text[i + 1 :].strip()
    return text, ""


def _command(text: str, page: str, line: int, *, inline: bool, context: str = "") -> DocCommand | None:
    code, comment = _split_comment(text)
    match = _COMMAND.match(code)
    if match is None:
        return None
    return DocCommand(page, line, tuple(shlex.split(match.group(1))), context if inline else comment, inline)


def _joined(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(first line number, logical line): lines joined over ``\\`` continuations."""
    joined, start, logical = [], 0, ""
    for number, line in lines:
        start = start if logical else number
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
        else:
            joined.append((start, logical + line))
            logical = ""
    return joined


def _page_commands(path: Path) -> list[DocCommand]:
    page = str(path.relative_to(REPO))
    prose, code, fenced = [], [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            code.append((number, ""))  # ends a logical line
        elif fenced:
            code.append((number, line))
        prose.append("" if fenced or _FENCE.match(line) else line)
    found = [_command(text, page, number, inline=False) for number, text in _joined(code)]
    text = "\n".join(prose)
    for span in _INLINE.finditer(text):
        number = text.count("\n", 0, span.start()) + 1
        inline = span.group(1).replace("\n", " ")
        if "--config" in inline:
            found.append(_command(inline, page, number, inline=True, context=prose[number - 1]))
    return [c for c in found if c is not None]


def _recipe_commands(path: Path) -> list[DocCommand]:
    """The commands of a recipe's header comment; the whole header is their context (it says "GPU")."""
    page = str(path.relative_to(REPO))
    header = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("#"):
            break
        header.append((number, line[1:]))
    context = " ".join(line for _, line in header)
    found = [_command(text, page, number, inline=True, context=context) for number, text in _joined(header)]
    return [c for c in found if c is not None]


def doc_commands(pages: list[Path] = PAGES) -> list[DocCommand]:
    """Every ``zoo fit|validate|test|predict|export`` in the pages' fenced blocks (joined over ``\\``
    continuations), every inline ``zoo ... --config ...`` in backticks outside them, and the commands of
    the recipes' header comments."""
    return [
        c for path in pages for c in (_recipe_commands if path.suffix == ".yaml" else _page_commands)(path)
    ]


COMMANDS = doc_commands()


def _stand_ins(tmp_path: Path) -> dict[str, str]:
    """Placeholder -> value, with the reader's files written under ``tmp_path``."""
    values = dict(PLACEHOLDERS)
    for name in READER_FILES:
        (tmp_path / name).write_text("The [MASK] of France is Paris .\n", encoding="utf-8")
        values[name] = str(tmp_path / name)
    # docs/subclassing.md prints my_lm.yaml in full: the stand-in is that block
    page = (REPO / "docs" / "subclassing.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(model:\n  class_path: my_lm\..*?)```", page, re.S)
    assert block, "docs/subclassing.md no longer shows my_lm.yaml"
    (tmp_path / "my_lm.yaml").write_text(block.group(1), encoding="utf-8")
    return values


def _substitute(arg: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        arg = re.sub(rf"(?<![\w/.-]){re.escape(placeholder)}(?![\w/.-])", lambda _, v=value: v, arg)
    return arg


def _missing_inputs(config: dict) -> list[str]:
    """Input files the resolved config names that are neither under ../shared/data nor found here."""
    data = (config.get("data") or {}).get("init_args") or {}
    missing = []
    for key in FILE_KEYS:
        values = data.get(key)
        for spec in values if isinstance(values, list) else [values]:
            if not isinstance(spec, str) or spec.startswith(("stdlib:", "../shared/data/")):
                continue
            if "://" not in spec and spec != "tinyshakespeare" and not glob.glob(spec, recursive=True):
                missing.append(f"{key}={spec}")
    return missing


def _needs(config: dict) -> list[str]:
    """What the resolved config needs beyond a CPU and ../shared/data."""
    accelerator = str((config.get("trainer") or {}).get("accelerator"))
    return (["a GPU"] if accelerator in ("gpu", "cuda") else []) + _missing_inputs(config)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_doc_command_parses(command, tmp_path, monkeypatch, capsys):
    """The command as printed, placeholders replaced, parses (exit 0 with ``--print_config``); and it is
    marked `# needs ...` exactly when it needs a GPU or input files that are not here."""
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO / "tests" / "fixtures" / "user_project"))  # my_lm
    values = _stand_ins(tmp_path)
    argv = [_substitute(arg, values) for arg in command.argv]
    if argv[0] == "export":
        calls = []
        for writer in ("export_checkpoint", "export_gguf"):  # a directory, or --format gguf's file
            monkeypatch.setattr(f"zoo.export.{writer}", lambda *a, **k: calls.append((a, k)))
        main(argv)
        assert calls, f"{command.where}: `zoo {' '.join(argv)}` did not reach the export"
        return
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--print_config"])
    out, err = capsys.readouterr()
    assert exited.value.code in (0, None), f"{command.where}: `zoo {' '.join(argv)}` fails:\n{err[-3000:]}"
    needs = _needs(yaml.safe_load(out))
    marked = bool((INLINE_NEEDS if command.inline else NEEDS).search(command.comment))
    assert marked == bool(needs), (
        f"{command.where}: `zoo {' '.join(command.argv)}` needs {needs or 'nothing beyond a CPU'}, "
        f"but it is {'' if marked else 'not '}marked `# needs ...`"
    )


def test_every_page_with_a_zoo_command_is_collected():
    """The collector sees the commands the pages print (a guard against a parser that finds nothing)."""
    pages = {c.page for c in COMMANDS}
    assert {"README.md", "docs/quickstart.md", "docs/cli.md", "docs/resume.md", "docs/export.md"} <= pages
    assert any(c.argv[0] == "export" for c in COMMANDS)
    assert any(c.inline for c in COMMANDS)


# --- the quickstart, for real ---------------------------------------------------------------------------

RUN_DIR = "runs/shakespeare-char"  # what the recipe's default_root_dir is; moved to tmp by the test


def _small(root: Path, cache: Path) -> list[str]:
    return [
        "--trainer.max_steps=6",
        "--trainer.val_check_interval=3",
        "--trainer.limit_val_batches=1",
        f"--trainer.default_root_dir={root}",
        f"--data.init_args.cache_dir={cache}",
        "--model.init_args.max_new_tokens=40",
        "--model.init_args.backbone.init_args.num_layers=1",
        "--model.init_args.backbone.init_args.embed_dim=32",
        "--model.init_args.backbone.init_args.num_heads=2",
    ]


def _zoo(argv: list[str]) -> subprocess.CompletedProcess:
    """The installed `zoo` console script, as a user types it (else ``python -m zoo``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = Path(sys.executable).parent / "zoo"
    proc = subprocess.run(
        ([str(script)] if script.is_file() else [sys.executable, "-m", "zoo"]) + argv,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"zoo {' '.join(argv)}:\n{proc.stderr[-3000:]}"
    return proc


def test_quickstart_sequence_runs_as_printed(tmp_path):
    """docs/quickstart.md's commands in order, as printed plus size overrides and a tmp root: fit writes
    last.ckpt and samples.txt beside its config.yaml in version_0, predict writes predictions.txt in its
    own version_1, fit --ckpt_path last continues version_0 (same metrics.csv), export writes a directory
    that transformers loads with zoo's logits."""
    shared_file("tinyshakespeare/input.txt")
    commands = [c.argv for c in doc_commands([REPO / "docs" / "quickstart.md"])]
    kinds = [" ".join([c[0], *(["--ckpt_path", "last"] if "last" in c else [])]) for c in commands]
    assert kinds == ["fit", "predict --ckpt_path last", "fit --ckpt_path last", "export"]
    fit, predict, resume, export = commands
    root, cache = tmp_path / "run", tmp_path / "cache"
    small = _small(root, cache)
    last = root / "logs" / "version_0" / "checkpoints" / "last.ckpt"

    trained = _zoo([*fit, *small])
    assert "---------- sample 1 ----------" in trained.stdout
    samples = root / "logs" / "version_0" / "samples.txt"
    assert f"zoo: wrote 2 samples to {samples}" in trained.stderr
    assert (samples.parent / "config.yaml").is_file()
    assert torch.load(last, weights_only=True)["global_step"] == 6

    sampled = _zoo([*predict, *small])
    assert f"zoo: --ckpt_path last: resuming from {last}" in sampled.stderr
    predictions = root / "logs" / "version_1" / "predictions.txt"
    assert sampled.stderr.rstrip().endswith(f"zoo: wrote 2 predictions to {predictions}")
    assert (predictions.parent / "config.yaml").is_file()
    text = predictions.read_text(encoding="utf-8")
    assert text.startswith("ROMEO:") and "JULIET:" in text
    assert not list(root.glob("*.txt")), "nothing written where two runs would overwrite each other"

    resumed = _zoo([*resume, *small, "--trainer.max_steps=9"])  # three steps more than the first fit
    assert f"zoo: --ckpt_path last: resuming from {last}" in resumed.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 9
    assert f"zoo: wrote 2 samples to {samples}" in resumed.stderr  # its own folder's samples, rewritten
    with_checkpoints = {p.parent.parent.name for p in root.glob("logs/*/checkpoints/*.ckpt")}
    assert with_checkpoints == {"version_0"}, "the resumed run continues version_0"
    rows = list(csv.DictReader((root / "logs" / "version_0" / "metrics.csv").open()))
    assert [r["step"] for r in rows if r.get("val_loss")] == ["2", "5", "8"]  # one file, both runs

    moved = [arg.replace(RUN_DIR, str(root)) for arg in export]
    exported = _zoo(moved)
    out = Path(moved[moved.index("--output") + 1])
    assert exported.stdout.strip() == f"exported {last} as GPT2LMHeadModel + tokenizer to {out}"
    transformers = pytest.importorskip("transformers")
    from zoo.tasks import CausalLM

    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = transformers.AutoTokenizer.from_pretrained(out)("ROMEO:", return_tensors="pt")["input_ids"]
    ours = CausalLM.load_from_checkpoint(last, weights_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ours(ids), atol=1e-5, rtol=1e-5)
