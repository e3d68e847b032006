"""Folders that appear atomically: written aside, then renamed into place with a manifest.

A generated data set is written into a temporary sibling of its target (``.<name>.<hex>.tmp``,
the same filesystem, so the rename is atomic) and renamed to the target once complete: the target
either does not exist or is complete, whatever kills the writer (only a hard kill can leave the
``.tmp`` sibling, which may then be deleted). The last file written into it is ``MANIFEST``, a
JSON object naming the generator and its arguments: it identifies a set that may be reused
(same manifest) or replaced (another manifest); a non-empty folder without one is never touched.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nasdet.errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "nasdet-digits.json"
RENAME_TRIES = 5  # bound on the renames when other writers race for the same target


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest of the set at ``root``; None when there is none (or it is unreadable)."""
    try:
        found = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def reusable(root: Path, manifest: dict[str, Any]) -> bool:
    """Whether ``root`` holds a complete set with exactly this manifest (logs when it holds a
    set made with other arguments, which will be replaced)."""
    found = read_manifest(root)
    if found is not None and found != manifest:
        log.warning("%s: a set made with other arguments (%s); regenerating it", root, found)
    return found == manifest


def check_replaceable(out: Path) -> None:
    """DataError unless ``out`` is missing, an empty folder or a set with a manifest."""
    if not out.exists():
        return
    if not out.is_dir() or (any(out.iterdir()) and read_manifest(out) is None):
        raise DataError(
            f"{out}: exists and is not a digits set written by nasdet (no {MANIFEST}; older "
            "versions wrote none) — delete it to have it generated, or choose another folder"
        )


def publish(
    out: Path, manifest: dict[str, Any], write: Callable[[Path], None], *, keep_same: bool
) -> Path:
    """Run ``write(folder)`` on a new temporary sibling of ``out``, add ``manifest``, then rename
    the folder to ``out``; returns ``out``.

    An empty folder or a set with a manifest already at ``out`` is replaced (DataError, before
    anything is written, for anything else). With ``keep_same``, a set holding the same manifest
    at rename time (a concurrent call made it: the generators are deterministic, so it is the
    same set) is kept and ours dropped. The temporary folder is removed on any error.
    """
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        write(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
        _move_into_place(tmp, out, manifest, keep_same=keep_same)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already gone when it was renamed
    return out


def _move_into_place(tmp: Path, out: Path, manifest: dict[str, Any], *, keep_same: bool) -> None:
    """Rename ``tmp`` to ``out`` (replaces a missing or empty ``out``), first moving a set at
    ``out`` aside; old sets are deleted once ``tmp`` is in place."""
    replaced: list[Path] = []
    try:
        for _ in range(RENAME_TRIES):
            try:
                os.rename(tmp, out)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if keep_same and read_manifest(out) == manifest:
                log.info("%s: the same set was written meanwhile; keeping it", out)
                return
            check_replaceable(out)
            old = out.parent / f".{out.name}.{uuid.uuid4().hex}.old"
            try:
                os.rename(out, old)  # until tmp takes its place, out does not exist
            except FileNotFoundError:
                continue  # another writer moved it meanwhile
            replaced.append(old)
        raise DataError(
            f"{out}: other processes kept replacing it ({RENAME_TRIES} tries) — generate the set "
            "from one process"
        )
    finally:
        for old in replaced:
            shutil.rmtree(old, ignore_errors=True)
