"""Executors: outcomes and failures in process, lazy task pulling, and a 2-worker local Ray run."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nasdet.errors import ConfigError, NasdetError
from nasdet.search import RecordStore
from nasdet.search._selftest import sleep_task, threads_task
from nasdet.search.executors import (
    Executor,
    InProcessExecutor,
    Outcome,
    RayExecutor,
    Task,
    _needs_token,
    lost_node,
    make_executor,
    task_threads,
)


def _returns_list(payload: dict[str, Any]) -> Any:
    return [payload]


class _Counted:
    """A lazy task iterable that counts how many tasks were pulled."""

    def __init__(self, tasks: Iterable[Task]) -> None:
        self.tasks = tasks
        self.pulled = 0

    def __iter__(self) -> Iterator[Task]:
        for task in self.tasks:
            self.pulled += 1
            yield task


def _run_checking_lookahead(executor: Executor, fn: Any, tasks: Iterable[Task]) -> list[Outcome]:
    """Run and assert that no more than ``max_workers`` tasks are ever pulled ahead."""
    counted = _Counted(tasks)
    outcomes: list[Outcome] = []
    for outcome in executor.run(fn, counted):
        # the finished task was pulled, plus at most max_workers - 1 others still in flight
        assert counted.pulled - len(outcomes) <= executor.max_workers
        outcomes.append(outcome)
    return outcomes


def test_inprocess_outcomes_in_order_and_failure_is_an_outcome() -> None:
    tasks = [Task(10 + i, {"value": i, "fail": i == 2}) for i in range(5)]
    with make_executor("inprocess") as executor:
        assert isinstance(executor, InProcessExecutor) and executor.max_workers == 1
        outcomes = _run_checking_lookahead(executor, sleep_task, tasks)
    assert [o.record_id for o in outcomes] == [10, 11, 12, 13, 14]
    assert [o.ok for o in outcomes] == [True, True, False, True, True]
    assert [o.result.get("value") for o in outcomes] == [0, 2, None, 6, 8]
    failed = outcomes[2]
    assert failed.result == {} and failed.error == "ValueError: asked to fail (value 2)"
    assert failed.traceback is not None
    assert failed.traceback.startswith("Traceback (most recent call last):")
    assert "in sleep_task" in failed.traceback
    assert failed.traceback.rstrip().endswith("ValueError: asked to fail (value 2)")
    assert all(o.error is None and o.traceback is None for o in outcomes if o.ok)


def test_inprocess_non_dict_result_fails() -> None:
    (outcome,) = InProcessExecutor().run(_returns_list, [Task(1, {})])
    assert not outcome.ok
    assert outcome.error == "TypeError: the task function returned list, not a dict"


def test_inprocess_pulls_lazily_from_an_endless_generator() -> None:
    counted = _Counted(Task(i, {"value": i}) for i in itertools.count())
    outcomes = InProcessExecutor().run(sleep_task, counted)
    first = list(itertools.islice(outcomes, 3))
    assert [o.result["value"] for o in first] == [0, 2, 4]
    assert counted.pulled == 3


def test_make_executor_rejects_unknown_kinds_and_options() -> None:
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        make_executor("dask")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="takes no options"):
        make_executor("inprocess", max_workers=2)
    with pytest.raises(ConfigError, match="unknown option"):
        make_executor("ray", num_workers=2)


def test_ray_without_a_cluster_at_auto_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    assert not ray.is_initialized(), "a previous test left Ray running"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(NasdetError, match="cannot start or reach Ray at auto: ConnectionError"):
        make_executor("ray", address="auto")


# -- Ray -------------------------------------------------------------------------------------


# ray_local: conftest.py (one local instance per module)


def test_ray_two_workers_commit_each_outcome_to_the_store(ray_local: Any, tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    ids = [store.add("search", f"g{i}", cost={"params": 1000 * i}).id for i in range(6)]

    def tasks() -> Iterator[Task]:  # claims each record only when a worker slot is free
        for i, rid in enumerate(ids):
            assert store.claim(rid, worker="ray-test")
            yield Task(rid, {"value": i, "sleep_s": 1.0, "fail": i == 3})

    with make_executor("ray") as executor:  # uses the running instance
        assert isinstance(executor, RayExecutor) and executor.max_workers == 2
        seen = []
        for outcome in _run_checking_lookahead(executor, sleep_task, tasks()):
            seen.append(outcome.record_id)
            if outcome.ok:
                res = outcome.result
                extra = {"start": res["start"], "end": res["end"]}
                store.finish(outcome.record_id, {"mAP": res["value"] / 100}, extra=extra)
            else:
                assert outcome.traceback and "in sleep_task" in outcome.traceback
                store.fail(outcome.record_id, outcome.error or "?", outcome.traceback)
    assert ray_local.is_initialized(), "the executor shut down a Ray instance it did not start"

    assert sorted(seen) == ids  # none lost, none twice
    records = store.records("search")
    assert [r.status for r in records] == ["done"] * 3 + ["failed"] + ["done"] * 2
    assert records[3].error == "ValueError: asked to fail (value 3)"
    assert "ValueError: asked to fail (value 3)" in records[3].extra["traceback"]
    assert [r.metrics["mAP"] for r in records if r.status == "done"] == [0, 0.02, 0.04, 0.08, 0.1]
    spans = [(r.extra["start"], r.extra["end"]) for r in records if r.status == "done"]
    overlapping = [
        (a, b) for a, b in itertools.combinations(spans, 2) if a[0] < b[1] and b[0] < a[1]
    ]
    assert overlapping, f"no two tasks ran at the same time: {spans}"


def test_task_threads_are_the_tasks_cpus() -> None:
    assert task_threads({"CPU": 1.0}) == 1 and task_threads({"CPU": 2.0, "GPU": 1.0}) == 2
    assert task_threads({"CPU": 0.5}) == 1  # a fraction of a CPU still runs one thread
    assert task_threads({}) is None and task_threads({"GPU": 1.0}) is None


def test_a_ray_task_runs_as_many_threads_as_it_has_cpus(ray_local: Any) -> None:
    """Workers inherit the driver's OMP_NUM_THREADS (simulated here through the task's
    runtime_env): a 1-CPU task still runs torch with 1 thread, not 2 on its one CPU."""
    env = {"env_vars": {"OMP_NUM_THREADS": "2"}}
    with RayExecutor(max_workers=1, num_cpus_per_task=1, runtime_env=env) as executor:
        (outcome,) = executor.run(threads_task, [Task(1)])
    assert outcome.ok, outcome.error
    assert outcome.result == {"threads": 1, "omp": "2"}


def test_ray_worker_crash_is_a_failed_outcome(ray_local: Any) -> None:
    executor = RayExecutor(max_workers=2)
    tasks = [Task(1, {"crash": True}), Task(2, {"value": 5})]
    outcomes = {o.record_id: o for o in executor.run(sleep_task, tasks)}
    executor.close()
    assert outcomes[2].ok and outcomes[2].result["value"] == 10
    assert not outcomes[1].ok and outcomes[1].error
    assert "\n" not in outcomes[1].error and outcomes[1].traceback
    assert outcomes[1].error.startswith(("WorkerCrashedError", "RayTaskError")), outcomes[1].error


def test_ray_rejects_local_functions_and_missing_gpus(ray_local: Any) -> None:
    executor = RayExecutor()
    assert executor.max_workers == 2  # the instance's 2 CPUs, 1 per task
    with pytest.raises(TypeError, match="module-level"):
        executor.run(lambda p: p, [Task(1, {})])
    with pytest.raises(ConfigError, match="0 GPU"):
        RayExecutor(num_gpus_per_task=1)
    assert RayExecutor(num_cpus_per_task=0.5).max_workers == 4


def test_ray_closing_the_run_early_stops_pulling_tasks(ray_local: Any) -> None:
    executor = RayExecutor(max_workers=2)
    counted = _Counted([Task(1, {}), Task(2, {"sleep_s": 60}), Task(3, {})])
    outcomes = executor.run(sleep_task, counted)
    assert next(outcomes).record_id == 1
    outcomes.close()  # cancels task 2 (ray.cancel force=True); task 3 is never pulled
    assert counted.pulled == 2


def test_lost_node_tells_a_node_loss_from_other_ray_errors() -> None:
    import ray
    import ray.exceptions as errors

    died = errors.NodeDiedError(
        "Task failed because the node it was running on is dead or unavailable. Node IP: "
        "10.0.0.2, node ID: 39e0e534c48e82038df4647f8b98f74f. This can happen if ..."
    )
    assert lost_node(ray, died) == "node 39e0e534c48e82038df4647f8b98f74f at 10.0.0.2"
    assert lost_node(ray, errors.ObjectLostError("ab" * 28, None, "")) == "a lost node"
    actor = errors.ActorDiedError()
    actor.error_msg = "The actor died because its node has died. Node Id: 5f3a9c01d2e4b6a8"
    assert lost_node(ray, actor) == "node 5f3a9c01d2e4b6a8"
    # a candidate's own crash, a dead owner, a cancelled task: not node losses
    assert lost_node(ray, errors.WorkerCrashedError()) is None
    assert lost_node(ray, errors.OwnerDiedError("ab" * 28, None, "")) is None
    assert lost_node(ray, errors.TaskCancelledError()) is None
    assert lost_node(ray, errors.ActorDiedError()) is None


def test_a_refused_token_is_named() -> None:
    from ray.exceptions import AuthenticationError

    try:
        try:
            raise AuthenticationError("RPC error: InvalidAuthToken: token is missing")
        except AuthenticationError as inner:
            raise ConnectionError("Failed to connect to Ray cluster") from inner
    except ConnectionError as exc:
        assert _needs_token(exc)
    assert not _needs_token(ConnectionError("Failed to connect to Ray cluster"))
