"""Locating and reading corpus files: local paths and globs, the Python standard library, downloads."""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from zoo.io import atomic_write

KNOWN_CORPORA = {
    "tinyshakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
}
"""Files users commonly train on; ``files: [tinyshakespeare]`` downloads it once into the cache."""


def resolve_files(specs: list[str], *, cache_dir: Path) -> list[Path]:
    """Expand corpus specs into an ordered list of existing files.

    A spec is a path or glob (``data/*.txt``); a folder, meaning the ``*.txt`` files directly in it;
    ``stdlib:GLOB``, a glob inside the running Python's standard library (a corpus every installation
    has); an ``http(s)://`` URL or a name from ``KNOWN_CORPORA``, downloaded once into ``cache_dir``.

    Raises:
        FileNotFoundError: ``"corpus spec 'data/*.txt' matches no file"``, or ``"corpus folder 'data'
            holds no *.txt file"``.
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
        if not glob.has_magic(pattern) and Path(pattern).is_dir():
            files = sorted(p for p in Path(pattern).glob("*.txt") if p.is_file())
            if not files:
                raise FileNotFoundError(f"corpus folder {spec!r} holds no *.txt file")
            out.extend(files)
            continue
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
    return atomic_write(target, data)


BOM = "\ufeff"
"""The byte-order mark (EF BB BF in UTF-8) that `read_text` drops from the start of a file."""

MAX_CONTROL_SHARE = 0.1
"""A file whose bytes are more than this share of control bytes (NUL, ESC, ...; not tab, newline, carriage
return, form feed or vertical tab) is refused as binary. Real text has none: tinyshakespeare, WikiText-2,
every shared dataset and every ``.py`` file of the standard library measure 0."""

_CONTROL_BYTES = np.zeros(256, dtype=bool)
_CONTROL_BYTES[[*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F]] = True


def read_text(path: Path) -> str:
    """Read a UTF-8 text file, with universal newlines (``\\r\\n`` and ``\\r`` read as ``\\n``) and
    without the byte-order mark some editors write first (Excel's "CSV UTF-8", Notepad): every table,
    document and corpus reader of zoo.data reads through this function or `read_text_blocks`.

    Raises:
        ValueError: The file is not UTF-8 (names the byte offset), or it decodes but is mostly control
            bytes, e.g. a binary file renamed ``.txt`` or UTF-16 text (names the line and byte offset of
            the first stretch of them).
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from err
    check_not_binary(path, data)
    return text.removeprefix(BOM).replace("\r\n", "\n").replace("\r", "\n")


def check_not_binary(path: Path, data: bytes, *, line: int = 1, byte: int = 0) -> None:
    """Refuse ``data`` (the contents of ``path``) when more than ``MAX_CONTROL_SHARE`` of it is control bytes.

    ``line`` and ``byte`` say where ``data`` starts in the file when it is one block of it.

    Raises:
        ValueError: ``"PATH:LINE: binary data, not text: N of its M bytes (P%) are control bytes ...,
            first stretch at byte B ..."``.
    """
    byte_counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)  # (256,)
    count = int(byte_counts[_CONTROL_BYTES].sum())
    if count <= MAX_CONTROL_SHARE * len(data):
        return
    offset = _first_control_stretch(np.frombuffer(data, dtype=np.uint8))
    line += data.count(b"\n", 0, offset)
    raise ValueError(
        f"{path}:{line}: binary data, not text: {count:,} of its {len(data):,} bytes "
        f"({count / len(data):.0%}) are control bytes such as NUL; the first stretch starts at byte "
        f"{byte + offset} (more than {MAX_CONTROL_SHARE:.0%} is refused; convert UTF-16 text to UTF-8)"
    )


def read_text_blocks(path: Path, block_bytes: int = 1 << 22) -> Iterator[str]:
    """`read_text` in pieces: the file read ``block_bytes`` at a time, each piece ending at a line end.

    Joined, the pieces are exactly ``read_text(path)``: a piece never ends inside a UTF-8 character or
    between ``\\r`` and ``\\n`` because it ends right after a ``\\n`` byte (or at the end of the file). A
    line longer than ``block_bytes`` is one longer piece. The binary check applies to each block
    (`check_not_binary`, with the block's file line and byte offset); a byte-order mark is dropped.

    Raises:
        ValueError: As `read_text`, with the byte offset (and line) in the whole file.
    """
    line, offset, rest = 1, 0, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(block_bytes)
            data = rest + block
            if not data:
                return
            cut = data.rfind(b"\n") + 1 if block else len(data)
            if cut == 0:  # no line end yet: read on
                rest = data
                continue
            data, rest = data[:cut], data[cut:]
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: not UTF-8 text (byte {offset + err.start}: {err.reason})") from err
            check_not_binary(path, data, line=line, byte=offset)
            if offset == 0:
                text = text.removeprefix(BOM)
            line += data.count(b"\n")
            offset += len(data)
            yield text.replace("\r\n", "\n").replace("\r", "\n")


def _first_control_stretch(data: np.ndarray, run: int = 8, block: int = 1 << 20) -> int:
    """Offset of the first ``run`` control bytes in a row in ``data`` (uint8), else of the first one."""
    for start in range(0, len(data), block):
        window = data[start : start + block + run - 1]  # overlapping by run - 1: no stretch is cut
        control = _CONTROL_BYTES[window].astype(np.int32)  # (len(window),)
        hits = np.flatnonzero(np.convolve(control, np.ones(run, dtype=np.int32), mode="valid") == run)
        if hits.size:
            return start + int(hits[0])
    return int(np.argmax(_CONTROL_BYTES[data]))


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
