"""Progress of long steps (training, evaluation, BN recalibration, LUT measurement, dataset
generation, a search's candidates), on a terminal and off it.

The mode (:func:`progress_mode`) is read when a bar starts:

- ``rich``: one live view on stderr (``rich``) that every bar of the process joins as a row:
  nested bars (the batches of a candidate's training inside a search step) stack, and a bar's
  row goes away when it ends. Log lines go above the view while it shows.
- ``plain``: sparse INFO lines on the ``nasdet.progress`` logger, for logs that are not a
  terminal (CI, ``nohup``, Ray workers): a bar logs at most once per tenth of its total and once
  per ``NASDET_PROGRESS_INTERVAL`` seconds (default 30), so a loop shorter than that logs
  nothing and a long one logs about ten lines. (A search logs one line per candidate whatever
  the mode: :class:`nasdet.search.progress.CandidateProgress`.)
- ``off``: nothing.

``NASDET_PROGRESS=rich|plain|off`` (``nasdet --progress``) overrides the choice, which is
otherwise ``rich`` when stderr is a terminal in the main process and ``plain`` elsewhere
(pipes, files, worker processes of ``multiprocessing``, Ray workers); ``off`` on torchrun ranks
other than 0.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from nasdet.errors import ConfigError

log = logging.getLogger(__name__)
MODES = ("rich", "plain", "off")
MODE_ENV = "NASDET_PROGRESS"
INTERVAL_ENV = "NASDET_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0
T = TypeVar("T")


def progress_mode() -> str:
    """``rich``, ``plain`` or ``off``: ``NASDET_PROGRESS`` when set, else ``off`` on a torchrun
    rank other than 0, ``rich`` when stderr is a terminal and this is not a child process, else
    ``plain``.

    Raises:
        ConfigError: ``NASDET_PROGRESS`` holds something else.
    """
    value = os.environ.get(MODE_ENV, "").strip().lower()
    if value:
        if value not in MODES:
            raise ConfigError(f"{MODE_ENV}={value!r}: set it to one of rich, plain, off")
        return value
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 shows the progress of all
        return "off"
    if multiprocessing.parent_process() is not None:  # a worker sharing the parent's terminal
        return "plain"
    isatty = getattr(sys.stderr, "isatty", None)
    return "rich" if callable(isatty) and isatty() else "plain"


def _interval() -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        raise ConfigError(f"{INTERVAL_ENV}={raw!r}: give seconds, e.g. 30") from None
    if not value >= 0:
        raise ConfigError(f"{INTERVAL_ENV}={raw!r}: give seconds >= 0")
    return value


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


class _LiveView:
    """The process's rich view: one ``rich.progress.Progress`` whose rows are the open bars;
    started with the first row, stopped (and erased) with the last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress: Any = None
        self.rows = 0
        self._rerouted: list[tuple[logging.StreamHandler, Any]] = []
        self.console: Any = None  # a test's rich Console; None: stderr

    def add(self, description: str, total: float | None, done: float) -> int:
        with self._lock:
            if self._progress is None:
                self._start()
            self.rows += 1
            return self._progress.add_task(
                description, total=total, completed=done, note="", eta=None
            )

    @property
    def live(self) -> bool:
        """Whether the view is showing (a bar is open)."""
        return self._progress is not None

    def refresh(self) -> None:
        """Draw the view now (it also redraws itself ten times a second)."""
        progress = self._progress
        if progress is not None:
            progress.refresh()

    def update(self, task: int, **fields: Any) -> None:
        progress = self._progress
        if progress is not None:
            progress.update(task, **fields)

    def remove(self, task: int) -> None:
        with self._lock:
            if self._progress is None:
                return
            self._progress.remove_task(task)
            self.rows -= 1
            if self.rows == 0:
                self._stop()

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class _Remaining(TimeRemainingColumn):  # a bar's own estimate (set_eta) wins
            def render(self, task: Any) -> Any:
                eta = task.fields.get("eta")
                if eta is None:
                    return super().render(task)
                minutes, seconds = divmod(int(eta), 60)
                hours, minutes = divmod(minutes, 60)  # as rich writes it
                return Text(f"{hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")

        console = self.console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            _Remaining(),
            TextColumn("{task.fields[note]}"),
            console=console,
            transient=True,
            speed_estimate_period=3600.0,  # candidates finish minutes apart
        )
        stderr = sys.stderr
        self._progress.start()  # on a terminal, sys.stderr now prints above the view
        if sys.stderr is not stderr:
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is stderr:
                    self._rerouted.append((handler, handler.setStream(sys.stderr)))

    def _stop(self) -> None:
        self._progress.stop()
        self._progress = None
        for handler, stream in self._rerouted:
            handler.setStream(stream)
        self._rerouted.clear()


VIEW = _LiveView()


class Bar:
    """One progress bar of ``total`` units (``None``: unknown) named ``description``, ``done``
    of which were done before it started (a resumed run: counted, but not in the rate).

    ``advance()`` counts units; ``note(text)`` sets the text after the bar (e.g. the loss);
    ``close()`` ends it (a context manager closes it on exit). In ``plain`` mode it logs
    ``"<description>: k of N (p %), elapsed 1m05s, ETA 3m12s"`` sparsely (module docstring);
    ``enabled=False`` or mode ``off``: nothing at all.
    """

    def __init__(
        self,
        description: str,
        total: float | None = None,
        *,
        done: float = 0,
        enabled: bool = True,
    ) -> None:
        self.description, self.total = description, total
        self.count = self._done_before = done
        self.mode = progress_mode() if enabled else "off"
        self._start = self._last = time.monotonic()
        self._tenth = math.floor(10 * done / total) if total else 0  # the last tenth logged
        self._interval = _interval() if self.mode == "plain" else 0.0
        self._task = VIEW.add(description, total, done) if self.mode == "rich" else None

    def advance(self, n: float = 1) -> None:
        self.count += n
        if self._task is not None:
            VIEW.update(self._task, advance=n)
        elif self.mode == "plain":
            self._maybe_log()

    def note(self, text: str) -> None:
        if self._task is not None:
            VIEW.update(self._task, note=text)

    def set_eta(self, seconds: float) -> None:
        """Show this estimate of the time left instead of rich's (from the recent rate)."""
        if self._task is not None:
            VIEW.update(self._task, eta=seconds)

    def set_postfix(self, **values: Any) -> None:
        """``note`` as tqdm's ``set_postfix`` takes it: ``key=value`` pairs."""
        self.note(" ".join(f"{k}={v}" for k, v in values.items()))

    def describe(self, description: str) -> None:
        self.description = description
        if self._task is not None:
            VIEW.update(self._task, description=description)

    def close(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            VIEW.remove(task)

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last < self._interval or self.count <= self._done_before:
            return
        elapsed = now - self._start
        if self.total:
            tenth = math.floor(10 * self.count / self.total)
            if tenth <= self._tenth:
                return
            self._tenth = tenth
            eta = elapsed / (self.count - self._done_before) * max(self.total - self.count, 0)
            log.info(
                "%s: %g of %g (%d %%), elapsed %s, ETA %s",
                self.description,
                self.count,
                self.total,
                round(100 * self.count / self.total),
                fmt_duration(elapsed),
                fmt_duration(eta),
            )
        else:
            log.info("%s: %g done, elapsed %s", self.description, self.count, fmt_duration(elapsed))
        self._last = now


class track(Generic[T]):  # noqa: N801 - used like a function, as tqdm is
    """Iterate ``iterable`` under a :class:`Bar` (``total``: ``len(iterable)`` when it has one);
    the bar closes when the loop ends, breaks or raises. ``set_postfix`` / ``note`` as on
    :class:`Bar`."""

    def __init__(
        self,
        iterable: Iterable[T],
        description: str,
        *,
        total: float | None = None,
        enabled: bool = True,
    ) -> None:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.description, self.total = iterable, description, total
        self.enabled = enabled
        self.bar: Bar | None = None

    def __iter__(self) -> Iterator[T]:
        self.bar = Bar(self.description, self.total, enabled=self.enabled)
        try:
            for item in self.iterable:
                yield item
                self.bar.advance()
        finally:
            self.bar.close()

    def set_postfix(self, **values: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.note(text)
