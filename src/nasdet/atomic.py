"""Atomic file writes: a reader, or a rerun after a kill, finds the old file or the new one, never
half of one.

Each write goes to a temporary file beside its target (``.<name>.<random>.tmp``), is flushed and
fsynced, then renamed over the target with :func:`os.replace` (atomic on POSIX and Windows within
one file system); the folder is fsynced too where the OS allows, so the rename survives a power
cut. On any error the temporary file is removed and the target is left as it was. A kill between
creating and renaming leaves only the temporary file, which
:func:`nasdet.search.driver.clean_leftovers` removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["copy_atomic", "open_atomic", "write_json_atomic", "write_text_atomic"]


@contextlib.contextmanager
def open_atomic(path: str | Path, mode: str = "w", *, encoding: str = "utf-8") -> Iterator[IO]:
    """A file handle whose content replaces ``path`` atomically when the block ends without an
    error (``mode`` ``"w"`` for text, with no newline translation, or ``"wb"``); the folder is
    created if missing. On an error the target is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        text = {} if "b" in mode else {"encoding": encoding, "newline": ""}
        with os.fdopen(fd, mode, **text) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def copy_atomic(source: str | Path, path: str | Path) -> Path:
    """Replace ``path`` with a copy of ``source`` atomically."""
    with open(source, "rb") as src, open_atomic(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` atomically.

    Args:
        path: the file to write (its folder is created if missing).
        text: the whole content, written as given (no newline translation).
        encoding: text encoding.

    Returns:
        ``path`` as a :class:`~pathlib.Path`; the file has mode 0644.

    Raises:
        OSError: the folder is not writable, or the disk is full (``path`` unchanged).
    """
    with open_atomic(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int = 2) -> Path:
    """Replace ``path`` with ``obj`` as JSON (indented, ending in a newline) atomically.

    Raises:
        TypeError, ValueError: ``obj`` is not JSON-serialisable (nothing is written).
        OSError: as :func:`write_text_atomic`.
    """
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    with contextlib.suppress(OSError):
        fd = os.open(folder, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
