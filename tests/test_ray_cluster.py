"""A Ray cluster started outside nasdet (``ray start --head`` plus a second node with its own CPU)
loses its second node while a search step runs on it: an SP-NAS serial step (``executor.address:
auto``) and a DetNAS scoring step (the explicit address). The candidates lost with the node run
again on the head, every candidate is recorded once, and the run log names the lost node and the
re-run records.

Marked ``ray_cluster``: ``pytest -m "not ray_cluster"`` skips it. It starts a cluster of its own:
its two runs take about 70 CPU seconds in all (the Ray processes, the workers, this process).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from _ray_cluster import LocalCluster, Node, ray_command
from test_detnas_pipeline import detnas_config
from test_spnas_pipeline import spnas_config

import nasdet
from nasdet.cli import LOG_FILENAME, main
from nasdet.data import make_digits_classification
from nasdet.search.driver import is_root
from nasdet.search.records import RecordStore

pytestmark = pytest.mark.ray_cluster

TOKEN = Path.home() / ".ray" / "auth_token"


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    return make_digits_classification(root, per_class_train=4, per_class_val=2, size=32, seed=0)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A head node and a second node, 1 CPU each, with token authentication on; stopped (every
    process of each node killed) at the end whatever happened."""
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
        cluster.wait(cluster.start_head(), cluster.add_node())
        yield cluster
    finally:
        cluster.stop()


class Killer(threading.Thread):
    """Kills ``node`` (every process of it) as soon as one of its workers runs a candidate; with
    ``replace``, then starts a new second node for the next test (it joins meanwhile)."""

    def __init__(
        self, cluster: LocalCluster, node: Node, replace: bool, timeout: float = 300
    ) -> None:
        super().__init__(daemon=True)
        self.cluster, self.node, self.replace, self.timeout = cluster, node, replace, timeout
        self.node_id: str | None = None
        self.error: str | None = None
        self.step_over = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while not self.node.busy_workers("_ray_call"):
                if self.step_over.is_set() or time.monotonic() > deadline:
                    self.error = "no candidate ever ran on the second node"
                    return
                time.sleep(0.05)
            self.node_id = self.node.node_id()
            self.node.kill()
            if self.replace:
                self.cluster.add_node()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = f"{type(exc).__name__}: {exc}"


def run_losing_a_node(
    cluster: LocalCluster, cfg: dict, tmp_path: Path, *, replace: bool = False
) -> tuple[Path, str]:
    """``nasdet run`` of ``cfg`` while the second node is killed once it runs a candidate (with
    ``replace``, a new one is started then); the run folder and the lost node's id."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    node = cluster.nodes[-1]
    if node.killed:  # this test runs alone, after another one
        node = cluster.add_node()
    cluster.wait(node)  # up before the step starts: its first candidates can go there
    killer = Killer(cluster, node, replace)
    killer.start()
    try:
        code = main(["-q", "run", str(path), "--out", str(out)])
    finally:
        killer.step_over.set()
        killer.join(timeout=120)
    assert killer.error is None, killer.error
    assert killer.node_id, "the second node was not killed"
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


@pytest.mark.parametrize("step", [spnas_serial, detnas_scoring], ids=["spnas", "detnas"])
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
    # the SP-NAS run (first) starts a new second node once it lost one, for the DetNAS run
    out, lost = run_losing_a_node(cluster, cfg, tmp_path, replace=step is spnas_serial)
    assert_rerun_once(out, name, lost, expected)
