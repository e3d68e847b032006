"""Progress a log can show: one INFO line per finished candidate, for runs off a terminal (CI,
``nohup``), where tqdm's bars are off."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class CandidateProgress:
    """Logs ``"<label>: candidate k of N finished, elapsed 1m05s, ETA 3m12s"`` per candidate.

    Args:
        label: what is counted, e.g. the step (``"serial"``, ``"search generation 2"``).
        total: the candidates the step evaluates in all, ``N``.
        done: those finished before this process started (a resumed run), counted in ``k``
            but not in the rate.
        clock: seconds, monotonic (a test's fake clock).

    The ETA is the wall time per candidate finished in this process (so parallel workers are
    accounted for) times the candidates left.
    """

    def __init__(
        self,
        label: str,
        total: int,
        done: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.done = label, int(total), int(done)
        self._clock = clock
        self._start = clock()
        self._here = 0

    def finished(self) -> None:
        """Count one finished candidate (done or failed) and log the line."""
        self.done += 1
        self._here += 1
        elapsed = self._clock() - self._start
        left = max(self.total - self.done, 0)
        log.info(
            "%s: candidate %d of %d finished, elapsed %s, ETA %s",
            self.label,
            self.done,
            self.total,
            fmt_duration(elapsed),
            fmt_duration(elapsed / self._here * left),
        )


def fmt_duration(seconds: float | None) -> str:
    """``1h02m03s``, ``2m05s``, ``7s``; ``unknown`` for ``None``."""
    if seconds is None:
        return "unknown"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
