"""The one way zoo writes a file or a folder that someone may read while it is being written: complete or
absent, never a part.

`atomic_write` writes a temporary file beside the target, flushes and fsyncs it, renames it over the target
(``os.replace``, atomic on POSIX and Windows) and fsyncs the folder, so the rename itself survives a crash.
`atomic_directory` does the same for a folder: it is filled under a temporary name beside the target and
renamed into place when complete.

Modes follow the umask, as for a file that ``open(path, "w")`` creates: ``0o666 & ~umask`` for files,
``0o777 & ~umask`` for folders (0644 / 0755 under the usual umask 022). ``tempfile.mkstemp`` and
``mkdtemp`` (and safetensors' own writer) give 0600 / 0700 whatever the umask, hiding exports and caches
from a group that shares them. The umask is never read with ``os.umask``, which can only read it by
setting it (``os.umask(0)`` and a restore: a moment in which another thread's new files would be
world-writable). Instead, at each call, the temporary file is created with ``os.open(..., 0o666)`` and
the temporary folder with ``os.mkdir(..., 0o777)``: the kernel applies the current umask (or the
folder's default ACL), and the mode it gave is what a file that a writer replaced, or wrote into the
folder with another mode, is set to.

A write interrupted by an exception (``KeyboardInterrupt`` included) removes its temporary file or folder;
only a killed process leaves one behind, under a name that starts with ``.`` and says ``partial``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

Data = bytes | str | Callable[[BinaryIO], object]


def atomic_write(path: str | os.PathLike, data: Data) -> Path:
    """Replace ``path`` with ``data`` atomically: a reader sees the old file or the new one, never a part.

    Args:
        path: The file to write; its folder is created if needed.
        data: ``bytes``; ``str`` (written as UTF-8, newlines as given); or a callable that writes into
            the open binary temporary file it is given (``lambda f: torch.save(obj, f)``). A writer that
            needs a path writes to the file's ``name`` (``lambda f: save_file(tensors, f.name)``); one
            that replaces that file with its own (safetensors writes a 0600 file and renames it) still
            gets the umask's mode and the fsync.

    Returns:
        ``path`` as a `Path`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_beside(target)
    mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0o666 & ~umask, as the kernel applied it
    try:
        with open(tmp, "wb", opener=lambda _path, _flags: fd) as f:  # f.name: the temporary path
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        _settle_file(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


@contextmanager
def atomic_directory(target: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """A temporary folder beside ``target`` to fill; renamed to ``target`` when the block ends without error,
    removed when it raises. Before the rename every file in it is fsynced and given the mode a new file
    gets (``0o666 & ~umask``; subfolders ``0o777 & ~umask``), whatever mode its writer chose.

    Args:
        target: The folder to write.
        replace: An existing ``target`` is replaced whole (moved aside, the new folder renamed in, the old
            one deleted). ``False``: an existing non-empty ``target`` wins and the new folder is dropped
            (a cache that another process completed first).

    Yields:
        The temporary folder (mode ``0o777 & ~umask``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _mkdir_beside(target)
    try:
        yield tmp
        _settle_tree(tmp)
        _move_into_place(tmp, target, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it was renamed
    fsync_dir(target.parent)


def _settle_file(path: Path, mode: int) -> None:
    """Give ``path`` the ``mode`` and fsync it; opened by name, since a writer may have replaced it."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.chmod(path, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def _settle_tree(root: Path) -> None:
    """`_settle_file` for every file under ``root``, with the modes the umask gives (read off ``root``,
    which ``os.mkdir(..., 0o777)`` made); subfolders get ``root``'s mode."""
    folder_mode = stat.S_IMODE(root.stat().st_mode)
    for where, folders, files in os.walk(root):
        for name in folders:
            os.chmod(Path(where) / name, folder_mode)
        for name in files:
            _settle_file(Path(where) / name, folder_mode & 0o666)
        fsync_dir(Path(where))


def _move_into_place(tmp: Path, target: Path, replace: bool) -> None:
    """Rename the finished folder ``tmp`` to ``target``."""
    try:
        os.replace(tmp, target)  # succeeds when target is absent or an empty folder
        return
    except OSError:
        if not target.is_dir():
            raise
        if not replace:
            return
    old = _mkdir_beside(target, kind="old")
    os.replace(target, old / target.name)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old / target.name, target)  # put the old folder back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _partial_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _create_beside(target: Path) -> tuple[Path, int]:
    """A new empty file beside ``target`` (mode ``0o666 & ~umask``, applied by the kernel) and its fd."""
    while True:
        tmp = _partial_name(target, "partial")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue


def _mkdir_beside(target: Path, kind: str = "partial") -> Path:
    """A new empty folder beside ``target`` (mode ``0o777 & ~umask``, applied by the kernel)."""
    while True:
        tmp = _partial_name(target, kind)
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue
