"""``nasdet.logfile.log_file``: a piece of work's own log file, whatever the logger levels."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nasdet.logfile import log_file


def test_info_reaches_the_file_while_the_logger_drops_it_elsewhere(tmp_path: Path) -> None:
    """As in a Ray worker: the ``nasdet`` logger at WARNING. Lines go to the file only inside the
    block, the level comes back after it, and a resumed piece of work appends."""
    logger = logging.getLogger("nasdet")
    child = logging.getLogger("nasdet.engine.train")
    before = logger.level
    logger.setLevel(logging.WARNING)
    try:
        child.info("before the block")
        path = tmp_path / "run" / "train.log"
        with log_file(path) as written:
            assert written == path
            child.info("epoch %d/%d", 1, 2)
            child.debug("not at INFO")
        child.info("after the block")
        assert logger.level == logging.WARNING
        with log_file(path):
            child.warning("resumed")
    finally:
        logger.setLevel(before)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("I nasdet.engine.train: epoch 1/2")
    assert lines[1].endswith("W nasdet.engine.train: resumed")
    assert not logger.handlers or all(
        getattr(h, "baseFilename", None) != str(path) for h in logger.handlers
    )


def test_a_failure_leaves_its_traceback_in_the_file_and_is_raised(tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    with pytest.raises(ValueError, match="num_channels"), log_file(path):
        raise ValueError("num_channels must be divisible by num_groups")
    text = path.read_text()
    assert "E nasdet: failed: ValueError: num_channels must be divisible" in text
    assert "Traceback (most recent call last)" in text and 'raise ValueError("num_channels' in text


def test_a_lower_level_is_kept(tmp_path: Path) -> None:
    """A logger already at DEBUG (``nasdet -v``) is not raised to INFO."""
    logger = logging.getLogger("nasdet")
    before = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with log_file(tmp_path / "a.log"):
            assert logger.level == logging.DEBUG
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(before)
