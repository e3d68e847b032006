"""Kill-and-resume harness: ``nasdet run`` in a process of its own (its own process group),
SIGKILLed at points read from its log, and the records of a run compared with another run's.

A kill point is a sequence of regular expressions that must match, in this order, lines the run
appends to ``DIR/nasdet.log`` (every ``nasdet run`` logs at DEBUG there, one flushed line per
record); the whole process group is killed as soon as the last one has matched. The run directory
is reused from kill to kill, so a chain of kills costs about one run plus a start per kill.

A run is ``nasdet.cli.main(["-q", "run", ...])`` (what ``python -m nasdet`` calls) in a process
of its own, in a session of its own, forked by a ``multiprocessing`` fork server that has
imported nasdet, torch, torchvision and scikit-learn once (:data:`PRELOAD`): a start then costs
a fork, not the 5-10 CPU seconds of those imports, which a chain of kills would pay again at
every restart.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch

from nasdet.search.records import RecordStore

POLL_S = 0.005
# what a record may hold that depends on the clock, not on the computation
VOLATILE_EXTRA = ("train_seconds", "traceback", "eval_started", "eval_finished", "actor")


@dataclass(frozen=True)
class KillPoint:
    """Kill the run once each of ``patterns`` has matched a line of its log, in this order."""

    name: str
    patterns: tuple[str, ...]


# what a run imports: loaded once, by the fork server, before it forks the runs
PRELOAD = [
    "torch",
    "torchvision",
    "torch.utils.tensorboard",
    "sklearn.datasets",
    "scipy.stats",
    "faster_coco_eval",
    "plotly.graph_objs",
    "rich.progress",
    "nasdet.cli",
    "nasdet.methods",
    "nasdet.pipeline",
]


def command(config: Path, out: Path) -> list[str]:
    """The arguments of ``nasdet`` for a run of ``config`` in ``out``."""
    return ["-q", "run", str(config), "--out", str(out)]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def start_fork_server() -> None:
    """Start the fork server now (it imports :data:`PRELOAD` in the background, meanwhile the
    caller goes on), with ``OMP_NUM_THREADS=1`` as it loads torch. Idempotent."""
    forkserver.set_forkserver_preload(PRELOAD)
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def _nasdet(args: list[str], output: str, env: dict[str, str]) -> None:
    """In the forked process: a session of its own (its group id is its pid), stdout and stderr
    appended to ``output``, the environment ``env``; then ``nasdet ARGS`` (its status is this
    process's exit status)."""
    os.setsid()
    fd = os.open(output, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    import torch

    torch.set_num_threads(1)
    from nasdet.cli import main

    sys.exit(main(args))


@contextmanager
def started(args: Sequence[str], output: Path) -> Iterator[BaseProcess]:
    """``nasdet ARGS`` running in its own process group (stdout and stderr to ``output``); the
    group is SIGKILLed on the way out if it is still there."""
    start_fork_server()
    proc = multiprocessing.get_context("forkserver").Process(
        target=_nasdet, args=(list(args), str(output), environment()), daemon=False
    )
    proc.start()
    try:
        yield proc
    finally:
        if proc.exitcode is None:
            kill_group(proc)


def kill_group(proc: BaseProcess) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # setsid: the group id is the pid
    except ProcessLookupError:  # not in its own session yet (or gone): the process alone
        proc.kill()
    proc.join()


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else "(no output)"


def run_and_kill(config: Path, out: Path, point: KillPoint, *, timeout_s: float = 300.0) -> None:
    """Run ``nasdet run config --out out`` and SIGKILL its process group at ``point``. Fails if
    the run ends (or ``timeout_s`` passes) first."""
    log = out / "nasdet.log"
    offset = log.stat().st_size if log.is_file() else 0  # what earlier runs logged
    output = out.parent / f"{out.name}.stdout"
    patterns = [re.compile(p) for p in point.patterns]
    seen, partial = 0, b""  # patterns matched so far, an unfinished last line
    with started(command(config, out), output) as proc:
        deadline = time.monotonic() + timeout_s
        while seen < len(patterns):
            if log.is_file():
                with log.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                offset += len(chunk)
                *lines, partial = (partial + chunk).split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace")
                    if seen < len(patterns) and patterns[seen].search(text):
                        seen += 1
                if seen == len(patterns):
                    break
            if proc.exitcode is not None:
                raise AssertionError(
                    f"kill point {point.name!r} never came: the run exited with {proc.exitcode}"
                    f"\n--- output ---\n{_tail(output)}\n--- log ---\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"kill point {point.name!r}: no match in {timeout_s:.0f} s")
            time.sleep(POLL_S)
        kill_group(proc)
    assert proc.exitcode == -signal.SIGKILL, f"{point.name}: exit status {proc.exitcode}"


def run_to_end(config: Path, out: Path, *, timeout_s: float = 300.0) -> None:
    """Run ``nasdet run config --out out`` to its end; fail unless it exits 0."""
    output = out.parent / f"{out.name}.stdout"
    with started(command(config, out), output) as proc:
        wait_ok(proc, output, timeout_s)


def wait_ok(proc: BaseProcess, output: Path, timeout_s: float) -> None:
    proc.join(timeout_s)
    if proc.exitcode is None:
        raise AssertionError(f"no end in {timeout_s:.0f} s:\n{_tail(output)}")
    assert proc.exitcode == 0, f"exit status {proc.exitcode}:\n{_tail(output)}"


# ----------------------------------------------------------------------------- comparison
def records(out: Path) -> list[dict[str, Any]]:
    """The records of the run in ``out`` in id order, without what may differ between two
    runs that computed the same things: ids (parents are named by step and genotype),
    timestamps, workers, the run directory in paths, training seconds."""
    store = RecordStore(out / "records.sqlite")
    try:
        stored = store.records()
    finally:
        store.close()
    by_id = {r.id: r for r in stored}

    def ref(rid: int | None) -> list[str] | None:
        return None if rid is None else [by_id[rid].step, by_id[rid].genotype]

    rows = []
    for r in stored:
        extra = {k: v for k, v in r.extra.items() if k not in VOLATILE_EXTRA}
        if "parents" in extra:
            extra["parents"] = [ref(p) for p in extra["parents"]]
        rows.append(
            {
                "step": r.step,
                "genotype": r.genotype,
                "status": r.status,
                "parent": ref(r.parent_id),
                "metrics": r.metrics,
                "cost": r.cost,
                "error": r.error,
                "extra": extra,
                "weights_path": r.weights_path,
            }
        )
    return json.loads(json.dumps(rows).replace(str(out), "<run>"))


def weights_differences(a: Path, b: Path) -> list[str]:
    """Paths (relative to the run directories) of the records' weights files whose tensors
    differ between the runs in ``a`` and ``b``."""
    store = RecordStore(a / "records.sqlite")
    try:
        files = sorted({r.weights_path for r in store.records() if r.weights_path})
    finally:
        store.close()
    differ = []
    for path in files:
        rel = Path(path).relative_to(a)
        ta, tb = _tensors(a / rel), _tensors(b / rel)
        if ta.keys() != tb.keys() or any(not torch.equal(ta[k], tb[k]) for k in ta):
            differ.append(str(rel))
    return differ


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}

    def walk(obj: Any, key: str) -> None:
        if isinstance(obj, torch.Tensor):
            found[key] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{key}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{key}/{i}")

    walk(torch.load(path, map_location="cpu", weights_only=True), "")
    return found
