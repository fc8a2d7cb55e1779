"""zoo's floors: nn, models, data, tasks, export, cli, each importing only the floors below it (eagerly or
inside a function), so a family, task or format lands without a cycle. The modules beside the floors
(io, errors, runs, loggers, checkpoint, strategies) import no floor but the few named here, with why."""

from __future__ import annotations

import ast
from pathlib import Path

ZOO = Path(__file__).resolve().parents[1] / "zoo"
FLOORS = ["nn", "models", "data", "tasks", "export", "cli"]
# the modules beside the floors that do import one, and why
BESIDE = {
    "zoo.__main__": {"cli"},  # `python -m zoo`: the entry point
    "zoo.strategies": {"nn"},  # FSDP units and block-wise compile/checkpointing over zoo.nn's blocks
    "zoo.checkpoint": {"tasks"},  # old checkpoints' optimizer hparams become tasks.optim specs (lazily)
}


def _floor(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else None


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n == "zoo" or n.startswith("zoo.")}


def test_every_import_points_down_the_floors():
    wrong = []
    for path in sorted(ZOO.rglob("*.py")):
        module = ".".join(path.relative_to(ZOO.parent).with_suffix("").parts).removesuffix(".__init__")
        own = _floor(module)
        for name in _imports(path):
            theirs = _floor(name)
            if theirs is None:
                continue
            if own is None and theirs not in BESIDE.get(module, set()):
                wrong.append(f"{module} (beside the floors) imports {name}")
            elif own is not None and FLOORS.index(theirs) > FLOORS.index(own):
                wrong.append(f"{module} ({own}) imports {name} ({theirs}, above)")
    assert not wrong, "\n".join(wrong)
