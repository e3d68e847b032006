"""A Ray cluster started outside nasdet (``ray start --head`` with no CPU, plus two worker nodes
of one CPU each) loses the worker node running a candidate while a search step runs on it: an
SP-NAS serial step (``executor.address: auto``), a DetNAS scoring step (the explicit address)
and an OFA search, whose two Ray actors each hold a supernet (one per worker node; the one lost
with its node finds no room to start again, so the other scores the rest). The candidates lost
with the node run again on the other worker node, every candidate is recorded once, and the run
log names the lost node and the re-run records.

Marked ``ray_cluster``: ``pytest -m "not ray_cluster"`` skips it. It starts a cluster of its own:
its two runs take about 70 CPU seconds in all (the Ray processes, the workers, this process).
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from _ray_cluster import LocalCluster, Node, processes, ray_command
from test_detnas_pipeline import detnas_config
from test_ofa_pipeline import ofa_config
from test_spnas_pipeline import spnas_config

import nasdet
from nasdet.cli import LOG_FILENAME, main
from nasdet.data import make_digits_classification
from nasdet.search.driver import is_root
from nasdet.search.records import RecordStore

pytestmark = pytest.mark.ray_cluster

TOKEN = Path.home() / ".ray" / "auth_token"
POLL_S = 0.1  # a candidate runs for seconds on its node (its worker imports torch first)


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    return make_digits_classification(root, per_class_train=4, per_class_val=2, size=32, seed=0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A head node with no CPU (no candidate can run there) and two worker nodes of 1 CPU each,
    token authentication on; stopped (every process of each node killed) at the end whatever
    happened."""
    src = str(Path(nasdet.__file__).resolve().parents[1])  # the workers import this nasdet
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, RAY_AUTH_MODE="token", OMP_NUM_THREADS="1",
               PYTHONPATH=f"{src}{os.pathsep}{path}" if path else src)
    env.pop("RAY_ADDRESS", None)
    if not TOKEN.is_file():  # what ray.init does for a local instance, and users do once
        subprocess.run([ray_command(), "get-auth-token", "--generate"], env=env, check=True,
                       capture_output=True)
    cluster = LocalCluster(env)
    try:
        cluster.wait(cluster.start_head(num_cpus=0))
        for _ in range(2):  # one at a time: joins at once can time out on 2 busy cores
            cluster.wait(cluster.add_node())
        yield cluster
    finally:
        cluster.stop()


class Killer(threading.Thread):
    """Kills the first of ``nodes`` (every process of it) seen running a candidate. The head has
    no CPU, so every candidate runs on one of them: which one is Ray's choice, that one is
    killed, and the other is the node the lost candidate must run again on."""

    def __init__(self, nodes: list[Node], task: str, timeout: float = 300) -> None:
        super().__init__(daemon=True)
        self.nodes, self.task, self.timeout = nodes, task, timeout
        self.node_id: str | None = None
        self.error: str | None = None
        self.step_over = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                procs = processes()  # one look at /proc for all the nodes: it costs CPU
                busy = [n for n in self.nodes if n.busy_workers(self.task, procs)]
                if busy:
                    break
                if self.step_over.is_set() or time.monotonic() > deadline:
                    self.error = "no candidate ever ran on a worker node"
                    return
                time.sleep(POLL_S)
            self.node_id = busy[0].node_id()
            busy[0].kill()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = f"{type(exc).__name__}: {exc}"


def run_losing_a_node(
    cluster: LocalCluster,
    cfg: dict,
    tmp_path: Path,
    *,
    first: list[str] | None = None,
    task: str = "_ray_call",
) -> tuple[Path, str]:
    """``nasdet run`` of ``cfg`` while the worker node that runs the first candidate is killed;
    the run folder and the lost node's id. ``first``: steps run before, undisturbed, in this
    process (``--steps`` with ``search.executor: inprocess``, a key a run may change when it
    resumes: the run then resumes after them on the cluster). ``task``: the Ray process title
    of a candidate running (``_ray_call``: a Ray task; ``_ActorWorker.score``: an actor's)."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    if first:
        local = copy.deepcopy(cfg)
        for key in ("address", "workers"):
            local["search"].pop(key, None)
        local["search"]["executor"] = "inprocess"
        before = tmp_path / "first.yaml"
        before.write_text(yaml.safe_dump(local))
        assert main(["-q", "run", str(before), "--out", str(out), "--steps", ",".join(first)]) == 0
    live = [n for n in cluster.nodes[1:] if not n.killed]
    while len(live) < 2:  # a node killed by an earlier test is replaced
        live.append(cluster.add_node())
        cluster.wait(live[-1])  # up before the step starts: its first candidates can go there
    killer = Killer(live, task)
    killer.start()
    try:
        code = main(["-q", "run", str(path), "--out", str(out)])
    finally:
        killer.step_over.set()
        killer.join(timeout=120)
    assert killer.error is None, killer.error
    assert killer.node_id, "no worker node was killed"
    log = (out / LOG_FILENAME).read_text()
    assert code == 0, log[-4000:]
    return out, killer.node_id


def assert_rerun_once(out: Path, step: str, lost: str, expected: int) -> None:
    """Every candidate of ``step`` is recorded once and done; the log names the lost node, the
    records lost with it, and the other node that ran them again."""
    store = RecordStore(out / "records.sqlite")
    records = [r for r in store.records(step) if not is_root(r)]
    assert [r.status for r in records] == ["done"] * expected
    assert len({r.genotype for r in records}) == expected
    log = (out / LOG_FILENAME).read_text()
    assert f"Ray node {lost}" in log and "was lost" in log, log[-4000:]
    requeued = re.findall(r"re-running record (\d+), lost with node (\w+)", log)
    assert requeued and {node for _, node in requeued} == {lost}, log[-4000:]
    again = re.findall(r"record (\d+) ran again on node (\w+) after its node was lost: (\w+)", log)
    assert sorted(int(r) for r, _, _ in again) == sorted({int(r) for r, _ in requeued})
    assert all(node != lost and how == "done" for _, node, how in again), again
    assert {int(r) for r, _ in requeued} <= {r.id for r in records}


def spnas_serial(
    cluster: LocalCluster, digits_root: Path, cls_root: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict, str, int]:
    """An SP-NAS serial step of 2 candidates at ``address: auto``: (config, step, candidates)."""
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)  # what `address: auto` finds
    cfg = spnas_config(digits_root, cls_root, serial_samples=2, steps=["fine_tune", "serial"],
                       executor="ray", address="auto", workers=2)
    return cfg, "serial", 2


def detnas_scoring(
    cluster: LocalCluster, digits_root: Path, cls_root: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict, str, int]:
    """DetNAS scoring of 2 candidates at the cluster's address: (config, step, candidates)."""
    cfg = detnas_config(digits_root, cls_root, num_candidates=2, top_k=1, num_mutation=1,
                        num_crossover=0, max_epochs=1, executor="ray", address=cluster.address,
                        workers=2)
    cfg["pipeline"] = ["supernet_train", "evolution_search"]
    return cfg, "evolution_search", 2


def ofa_search(
    cluster: LocalCluster, digits_root: Path, cls_root: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict, str, int]:
    """An OFA search with 2 Ray actors at the cluster's address, 7 candidates (a population of
    4, then one generation of 3 children): (config, step, candidates)."""
    cfg = ofa_config(digits_root, executor="ray", address=cluster.address)
    cfg["search"]["trainer_cfg"]["parallelism"] = 2
    cfg["pipeline"] = ["supernet_train", "search"]
    return cfg, "search", 7


FIRST = {spnas_serial: ["fine_tune"], ofa_search: ["supernet_train"]}  # run here, first
TASK = {ofa_search: "_ActorWorker.score"}


@pytest.mark.parametrize(
    "step", [spnas_serial, detnas_scoring, ofa_search], ids=["spnas", "detnas", "ofa"]
)
def test_a_step_survives_losing_a_node(
    step: Callable[..., tuple[dict, str, int]],
    cluster: LocalCluster,
    digits_root: Path,
    cls_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg, name, expected = step(cluster, digits_root, cls_root, monkeypatch)
    # SP-NAS's serial step starts from fine_tune's record, OFA's search from its supernet: they
    # run first, in this process
    out, lost = run_losing_a_node(
        cluster, cfg, tmp_path, first=FIRST.get(step), task=TASK.get(step, "_ray_call")
    )
    assert_rerun_once(out, name, lost, expected)
