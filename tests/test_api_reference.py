"""The API reference (docs/api/*.md) documents every module of zoo/: a new module that is not listed is a
gap in the site, found here rather than by a reader."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_module_has_an_api_page_entry():
    modules = set()
    for path in (REPO / "zoo").rglob("*.py"):
        if path.name == "__main__.py" or path.name == "__init__.py" and not _defines_anything(path):
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    listed = set()
    for page in (REPO / "docs" / "api").glob("*.md"):
        listed |= set(re.findall(r"^::: (\S+)$", page.read_text(encoding="utf-8"), re.MULTILINE))
    assert not sorted(modules - listed), "modules missing from docs/api/*.md"
    assert not sorted(listed - modules), "docs/api/*.md lists modules that do not exist"


def _defines_anything(init: Path) -> bool:
    """An ``__init__.py`` with code of its own (not only imports, ``__all__`` and a docstring)."""
    text = init.read_text(encoding="utf-8")
    return bool(re.search(r"^(def|class) ", text, re.MULTILINE))
