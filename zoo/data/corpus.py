"""Locating corpus files: local paths and globs, the Python standard library, and downloads."""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

KNOWN_CORPORA = {
    "tinyshakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
}
"""Files users commonly train on; ``files: [tinyshakespeare]`` downloads it once into the cache."""


def resolve_files(specs: list[str], *, cache_dir: Path) -> list[Path]:
    """Expand corpus specs into an ordered list of existing files.

    A spec is a path or glob (``data/*.txt``); ``stdlib:GLOB``, a glob inside the running Python's
    standard library (a corpus every installation has); an ``http(s)://`` URL or a name from
    ``KNOWN_CORPORA``, downloaded once into ``cache_dir``.
    """
    if not specs:
        raise ValueError("no corpus files given")
    out: list[Path] = []
    for spec in specs:
        spec = KNOWN_CORPORA.get(spec, spec)
        if spec.startswith(("http://", "https://")):
            out.append(download(spec, cache_dir=cache_dir))
            continue
        if spec.startswith("stdlib:"):
            pattern = str(Path(sysconfig.get_paths()["stdlib"]) / spec.removeprefix("stdlib:"))
        else:
            pattern = os.path.expanduser(spec)
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        files = [Path(m) for m in matches if Path(m).is_file()]
        if not files:
            raise FileNotFoundError(f"corpus spec {spec!r} matches no file")
        out.extend(files)
    return out


def download(url: str, *, cache_dir: Path) -> Path:
    """Download ``url`` once into ``cache_dir/downloads`` (atomic rename; reused afterwards)."""
    name = (
        hashlib.sha256(url.encode()).hexdigest()[:12] + "-" + (url.rstrip("/").rsplit("/", 1)[-1] or "file")
    )
    target = cache_dir / "downloads" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise ConnectionError(
            f"could not download {url} ({err}). Offline? Download it elsewhere and point `files` at the "
            "local copy (e.g. ../shared/data/tinyshakespeare/input.txt)."
        ) from err
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
    return target


def read_text(path: Path) -> str:
    """Read a UTF-8 text file; a decoding error names the file and byte offset."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from err


def files_digest(files: list[Path]) -> str:
    """sha256 over the files' contents, in order: the cache key part that changes when any file does."""
    h = hashlib.sha256()
    for path in files:
        file_hash = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                file_hash.update(block)
        h.update(file_hash.digest())
    return h.hexdigest()


def digest(*parts: str) -> str:
    """Short sha256 of the parts: the cache key of a derived file."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
