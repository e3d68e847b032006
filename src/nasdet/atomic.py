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
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomic", "write_text_atomic"]


def write_text_atomic(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` atomically.

    Args:
        path: the file to write; its folder must exist.
        text: the whole content, written as given (no newline translation).
        encoding: text encoding.

    Returns:
        ``path`` as a :class:`~pathlib.Path`; the file has mode 0644.

    Raises:
        OSError: the folder is missing or not writable, or the disk is full (``path`` unchanged).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding=encoding, newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


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
