"""One piece of work's own log file: :func:`log_file` sends what nasdet logs while the work runs
to ``path``, in whatever process runs it, a Ray worker included (whose lines Ray would otherwise
drop below WARNING, or fold into its de-duplicated driver output). ``nasdet compare`` gives each
training ``runs/<label>/seed<k>/train.log`` this way."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOG_FORMAT", "file_formatter", "log_file"]

LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


def file_formatter() -> logging.Formatter:
    """The format of nasdet's log files: :data:`LOG_FORMAT` with the date in the time."""
    return logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")


@contextmanager
def log_file(path: str | Path, level: int = logging.INFO, logger: str = "nasdet") -> Iterator[Path]:
    """Append ``logger``'s records of ``level`` and above to ``path`` while the block runs (a
    resumed piece of work adds to its file). The logger's level is lowered to ``level`` for the
    block when it would drop them (a Ray worker's loggers start at WARNING) and restored after.
    An exception leaving the block is written to the file with its traceback (only there: the
    caller reports the failure) and raised on. The handler sits on the process's logger, so
    every thread's lines go to it: one such block per process at a time (a Ray task or a
    compare's in-process training)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(level)
    handler.setFormatter(file_formatter())
    target = logging.getLogger(logger)
    old_level = target.level
    if target.getEffectiveLevel() > level:
        target.setLevel(level)
    target.addHandler(handler)
    try:
        yield path
    except BaseException as e:
        handler.handle(
            logging.makeLogRecord(
                {
                    "name": logger,
                    "levelno": logging.ERROR,
                    "levelname": "ERROR",
                    "msg": f"failed: {type(e).__name__}: {e}",
                    "exc_info": sys.exc_info(),
                }
            )
        )
        raise
    finally:
        target.removeHandler(handler)
        target.setLevel(old_level)
        handler.close()
