"""Where a search step stands: one INFO line per finished candidate (any mode, so logs off a
terminal — CI, ``nohup``, Ray — say it too), and on a terminal a row of the live view
(:mod:`nasdet.progress`) with the step, "candidate k of N", the best so far and the Pareto size,
above the bars of the candidate being trained."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from nasdet.progress import Bar, fmt_duration, progress_mode
from nasdet.search.pareto import Objective, pareto_records
from nasdet.search.records import Record

__all__ = ["CandidateProgress", "best_so_far", "fmt_duration", "front_size"]
log = logging.getLogger(__name__)
T = TypeVar("T")


class CandidateProgress:
    """Logs ``"<label>: candidate k of N finished[, best ...][, Pareto P], elapsed 1m05s,
    ETA 3m12s"`` per candidate and shows the step's row in the live view.

    Args:
        label: what is counted, e.g. the step (``"serial"``, ``"search generation 2"``).
        total: the candidates the step evaluates in all, ``N``.
        done: those finished before this process started (a resumed run), counted in ``k``
            but not in the rate.
        clock: seconds, monotonic (a test's fake clock).

    The ETA is the wall time per candidate finished in this process (so parallel workers are
    accounted for) times the candidates left. Close it (or use it as a context manager) when
    the step ends, so its row leaves the view.
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
        self._bar: Bar | None = None  # off the live view, the lines above are the progress
        if progress_mode() == "rich":
            self._bar = Bar(self._description(), self.total, done=self.done)

    def _description(self) -> str:
        return f"{self.label}: candidate {min(self.done + 1, self.total)} of {self.total}"

    def finished(self, best: str | None = None, pareto: int | None = None) -> None:
        """Count one finished candidate (done or failed) and log the line; ``best`` (e.g.
        ``"mAP 0.412"``) and ``pareto`` (the size of the step's front) as known now."""
        self.done += 1
        self._here += 1
        elapsed = self._clock() - self._start
        eta = elapsed / self._here * max(self.total - self.done, 0)
        shown = "".join(
            [f", best {best}" if best else "", f", Pareto {pareto}" if pareto is not None else ""]
        )
        log.info(
            "%s: candidate %d of %d finished%s, elapsed %s, ETA %s",
            self.label,
            self.done,
            self.total,
            shown,
            fmt_duration(elapsed),
            fmt_duration(eta),
        )
        if self._bar is not None:
            self._bar.describe(self._description())
            self._bar.note(shown.removeprefix(", ").replace(", ", " · "))
            self._bar.set_eta(eta)
            self._bar.advance()

    def closing(self, items: Iterable[T]) -> Iterator[T]:
        """``items`` (e.g. a step's outcomes), closing this when their loop ends or raises."""
        try:
            yield from items
        finally:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> CandidateProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def best_so_far(records: Sequence[Record], objectives: Sequence[Objective]) -> str | None:
    """The best value of each objective among the done ``records``, e.g. ``"mAP 0.412, params
    1.2e+06"`` (each its own optimum); ``None`` when none is done yet."""
    parts = []
    for obj in objectives:
        values = [
            float(v)
            for r in records
            if r.status == "done"
            and isinstance(v := r.values().get(obj.key), int | float)
            and math.isfinite(v)
        ]
        if values:
            parts.append(f"{obj.key} {(max if obj.maximize else min)(values):,.4g}")
    return ", ".join(parts) or None


def front_size(records: Sequence[Record], objectives: Sequence[Objective]) -> int:
    """How many done ``records`` are on the Pareto front of ``objectives``."""
    return len(pareto_records(records, objectives))
