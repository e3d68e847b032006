"""A Ray cluster started outside nasdet, as a user starts one (``ray start``), on this machine.

:class:`LocalCluster` starts a head node and worker nodes with ``ray start --block``, each in a
session of its own, on 127.0.0.1 with free ports and a short temporary directory of its own, so
several test runs (and other tests' ``ray.init`` instances) never meet. A node's processes are
those of its ``ray start`` session plus its raylet's children (Ray starts each worker in a new
session), found in ``/proc``: :meth:`Node.kill` ends them all at once, as if its machine was
switched off, and :meth:`LocalCluster.stop` ends every node's, whatever state they are in (no
``ray stop``: that stops every Ray process of the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

STARTED = "Ray runtime started"


def ray_command() -> str:
    """The ``ray`` script of this interpreter's environment."""
    here = Path(sys.executable).with_name("ray")
    found = str(here) if here.is_file() else shutil.which("ray")
    if found is None:
        raise RuntimeError("no 'ray' command next to the Python running the tests")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


Processes = dict[int, tuple[int, int, str]]


def processes() -> Processes:
    """pid -> (parent pid, process group, command line) of the processes now running."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue  # gone meanwhile
        out[int(entry)] = (int(stat[1]), int(stat[2]), cmd.strip())
    return out


@dataclass
class Node:
    """One ``ray start --block`` and the processes it started."""

    name: str
    proc: subprocess.Popen
    log: Path
    killed: bool = False

    def started(self) -> bool:
        return STARTED in self.log.read_text(errors="replace")

    def raylet(self, procs: Processes | None = None) -> tuple[int, str] | None:
        """(pid, command line) of this node's raylet, if it runs (in ``procs``, a snapshot of
        :func:`processes`, when given)."""
        for pid, (_, pgid, cmd) in (procs or processes()).items():
            if pgid == self.proc.pid and "/raylet/raylet " in cmd:
                return pid, cmd
        return None

    def node_id(self) -> str | None:
        """This node's Ray node id (from its raylet's ``--node_id``), once the raylet runs."""
        found = self.raylet()
        if found is None:
            return None
        for arg in found[1].split():
            if arg.startswith("--node_id="):
                return arg.split("=", 1)[1]
        return None

    def pids(self) -> list[int]:
        """The node's processes: its ``ray start`` session and every child of its raylet."""
        procs = processes()
        group = {pid for pid, (_, pgid, _) in procs.items() if pgid == self.proc.pid}
        return sorted(group | {pid for pid, (ppid, _, _) in procs.items() if ppid in group})

    def busy_workers(self, task: str, procs: Processes | None = None) -> list[int]:
        """Workers of this node running the remote function named ``task`` now (in ``procs``, a
        snapshot of :func:`processes`, when given)."""
        procs = procs or processes()
        found = self.raylet(procs)
        if found is None:
            return []
        return [
            pid
            for pid, (ppid, _, cmd) in procs.items()
            if ppid == found[0] and cmd.startswith(f"ray::{task}")
        ]

    def kill(self) -> None:
        """SIGKILL the raylet first (so nothing reports a clean exit), then the rest."""
        found = self.raylet()
        pids = self.pids()
        if found is not None:
            _kill(found[0])
        for pid in pids:
            _kill(pid)
        self.killed = True
        self.proc.wait(timeout=30)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class LocalCluster:
    """A head node (``num_cpus`` CPUs) and worker nodes on 127.0.0.1; see the module docstring.

    ``env``: the environment of every node (the workers import nasdet from it); token
    authentication is on (``RAY_AUTH_MODE=token``, the token in ``~/.ray/auth_token``).
    """

    env: Mapping[str, str]
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nd-ray-", dir="/tmp")))
    port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, args: list[str]) -> Node:
        log = self.root / f"{name}.log"
        command = [ray_command(), "start", "--block", "--node-ip-address", "127.0.0.1",
                   "--disable-usage-stats", "--include-log-monitor", "false",
                   "--min-worker-port", "0", "--max-worker-port", "0",
                   "--dashboard-agent-listen-port", str(free_port()), *args]
        with log.open("w") as out:
            proc = subprocess.Popen(command, env=dict(self.env), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        node = Node(name, proc, log)
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int = 1) -> Node:
        return self._start("head", ["--head", "--port", str(self.port), "--temp-dir",
                                    str(self.root), "--num-cpus", str(num_cpus),
                                    "--include-dashboard", "false",
                                    "--ray-client-server-port", str(free_port())])

    def add_node(self, num_cpus: int = 1) -> Node:
        """Start a worker node joining the head (it retries until the head is up)."""
        return self._start(f"node{len(self.nodes)}", ["--address", self.address,
                                                      "--num-cpus", str(num_cpus)])

    def wait(self, *nodes: Node, timeout: float = 180) -> None:
        """Wait until every node says it started; a node that exits first is an error."""
        deadline = time.monotonic() + timeout
        for node in nodes:
            while not node.started():
                if node.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start of {node.name} failed:\n"
                                       + node.log.read_text(errors="replace")[-3000:])
                time.sleep(0.2)

    def stop(self) -> None:
        """Kill every node's processes (worker nodes first) and remove the temporary folder."""
        for node in reversed(self.nodes):
            if node.proc.poll() is None or node.pids():
                node.kill()
        shutil.rmtree(self.root, ignore_errors=True)
