"""Atomic file writes: the old file or the new one, never half of one, and no temp file left."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

import nasdet.atomic
from nasdet.atomic import write_json_atomic, write_text_atomic


def test_write_text_atomic_writes_and_replaces_leaving_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "pareto.csv"
    assert write_text_atomic(target, "a,b\n") == target
    assert target.read_text() == "a,b\n"
    write_text_atomic(target, "c,d\r\n")
    assert target.read_bytes() == b"c,d\r\n"  # written as given, no newline translation
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.csv"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "desc_3.json"
    target.write_text("old\n")

    def no_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nasdet.atomic.os, "fsync", no_disk)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["desc_3.json"]


def test_write_json_atomic_and_an_unserialisable_object(tmp_path: Path) -> None:
    target = tmp_path / "desc_1.json"
    write_json_atomic(target, {"id": 1, "metrics": {"mAP": 0.5}})
    assert json.loads(target.read_text()) == {"id": 1, "metrics": {"mAP": 0.5}}
    assert target.read_text().endswith("}\n")
    with pytest.raises(TypeError):
        write_json_atomic(target, {"id": object()})
    assert json.loads(target.read_text())["id"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["desc_1.json"]
