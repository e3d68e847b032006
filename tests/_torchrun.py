"""Run a command under ``torchrun`` from a test and keep every rank's output.

On its console torchrun interleaves the ranks' lines, and when a rank fails it stops the others
and reports only the first exit code, so a failing rank's own message is easily lost in a
truncated assertion text. Here each rank's stdout and stderr go to their own files
(``--log-dir``, ``--redirects 3``) and :meth:`TorchrunResult.report` shows all of them in full.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TorchrunResult:
    """``returncode`` of torchrun (``None``: killed at the timeout); ``launcher``: torchrun's own
    stdout and stderr; ``stdout[r]`` / ``stderr[r]``: what local rank ``r`` wrote in the last
    attempt; ``attempts``: how many times torchrun started the group (1 + its restarts)."""

    command: list[str]
    returncode: int | None
    launcher: str
    stdout: list[str]
    stderr: list[str]
    attempts: int = 1

    def report(self) -> str:
        """Everything, for an assertion message: each rank's stderr and stdout, then the
        launcher's output."""
        status = "timed out" if self.returncode is None else f"exited with {self.returncode}"
        parts = [f"torchrun {status} after {self.attempts} attempt(s): {' '.join(self.command)}"]
        if not self.stderr:
            parts.append("(no rank wrote a log file: torchrun failed before starting them)")
        for rank, (out, err) in enumerate(zip(self.stdout, self.stderr, strict=True)):
            parts.append(f"----- rank {rank} stderr -----\n{err.rstrip()}")
            parts.append(f"----- rank {rank} stdout -----\n{out.rstrip()}")
        parts.append(f"----- torchrun launcher -----\n{self.launcher.rstrip()}")
        return "\n".join(parts)


def run_torchrun(
    args: Sequence[str],
    log_dir: Path,
    *,
    nproc: int = 2,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
    max_restarts: int = 0,
) -> TorchrunResult:
    """``torchrun --standalone --nproc_per_node NPROC --max-restarts MAX_RESTARTS ARGS`` with
    ``OMP_NUM_THREADS=1``; each rank's output is kept in a new folder under ``log_dir``. At the
    timeout torchrun and its ranks are stopped (the result's ``returncode`` is then ``None``)."""
    logs = Path(tempfile.mkdtemp(prefix="torchrun-", dir=log_dir))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), "--max-restarts", str(max_restarts),
               "--log-dir", str(logs), "--redirects", "3", *args]  # fmt: skip
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(
        command,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        launcher, _ = proc.communicate(timeout=timeout)
        returncode: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        launcher, returncode = _stop(proc), None
    attempts = len(list(logs.glob("*/attempt_*")))
    return TorchrunResult(command, returncode, launcher, *_rank_logs(logs, nproc), attempts)


def _stop(proc: subprocess.Popen) -> str:
    """Stop torchrun and its ranks; torchrun's output. The ranks run in sessions of their own,
    so they are found as torchrun's children; torchrun stops them itself on SIGTERM, and
    whatever is left after 30 s is killed."""
    ranks = _children(proc.pid)
    proc.terminate()
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]
    finally:
        for pid in ranks:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux ``/proc``; none found elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's pid
            found.append(int(stat.parent.name))
    return found


def _rank_logs(logs: Path, nproc: int) -> tuple[list[str], list[str]]:
    """The last attempt's ``<rank>/stdout.log`` and ``stderr.log`` (torchrun writes them under
    ``LOG_DIR/<run id>/attempt_<n>/``); empty lists when there are none."""
    attempts = sorted(
        logs.glob("*/attempt_*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0)
    )
    if not attempts:
        return [], []

    def read(rank: int, stream: str) -> str:
        path = attempts[-1] / str(rank) / f"{stream}.log"
        return path.read_text(errors="replace") if path.is_file() else f"(no {path.name})"

    return [read(r, "stdout") for r in range(nproc)], [read(r, "stderr") for r in range(nproc)]
