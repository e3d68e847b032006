"""Executors: evaluate search candidates one per worker, in this process or on a Ray cluster.

A search hands an executor a function ``fn(payload) -> result`` and an iterable of
:class:`Task` (a record id and a JSON-ready payload: config dict, genotype string, paths; never
modules). The executor keeps at most ``max_workers`` tasks in flight, pulls the next task only when
a slot frees (so a lazy iterable can choose its next candidate after seeing results) and yields one
:class:`Outcome` per task as it finishes, in any order. The driver process owns the record store
and commits each outcome as it arrives::

    with make_executor("ray", address="auto", num_gpus_per_task=1) as executor:
        for outcome in executor.run(evaluate_candidate, tasks):
            if outcome.ok:
                store.finish(outcome.record_id, outcome.result["metrics"])
            else:
                store.fail(outcome.record_id, outcome.error)

An exception inside ``fn`` (or a crashed Ray worker) becomes ``Outcome(ok=False, error=...,
traceback=...)``: a one-line error and the full traceback text (also logged at DEBUG level). It
never stops the run: the caller decides what a failure means.

A task lost with its Ray node (the node died or left the cluster while the task ran, or its
result was lost with the node) is no candidate's failure: :class:`RayExecutor` runs it again on
the nodes that are left (up to ``max_reruns`` times, then it is a failed outcome) and logs which
node was lost and which record is re-run. Every task still gives exactly one outcome.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from pydantic import Field

from nasdet.config import Strict
from nasdet.errors import ConfigError, NasdetError

__all__ = [
    "Executor",
    "InProcessExecutor",
    "Outcome",
    "RayExecutor",
    "Task",
    "TaskFn",
    "ExecutorSettings",
    "make_executor",
]

logger = logging.getLogger(__name__)

TaskFn = Callable[[dict[str, Any]], dict[str, Any]]
_MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Task:
    """One candidate to evaluate.

    Attributes:
        record_id: the candidate's record in the driver's record store.
        payload: plain JSON-ready data ``fn`` needs (config dict, genotype string, paths).
    """

    record_id: int
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What evaluating one :class:`Task` gave.

    Attributes:
        record_id: the task's record id.
        ok: ``fn`` returned a dict (``True``) or failed (``False``).
        result: ``fn``'s return value (metrics, cost, weights path...); empty when failed.
        error: ``"ExceptionType: message"`` on one line when failed, else ``None``.
        traceback: the full traceback text when failed (for a crashed Ray worker, Ray's error
            text), else ``None``.
        worker: index of the worker that ran it (actor executors, see
            :mod:`nasdet.search.actors`), else ``None``.
        started, finished: unix time in seconds when ``fn`` started and returned, measured where
            it ran (``None`` when it never ran, e.g. a crashed Ray worker).
        node: the id of the Ray node that ran it (:class:`RayExecutor`), else ``None``.
    """

    record_id: int
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    worker: int | None = None
    started: float | None = None
    finished: float | None = None
    node: str | None = None


def error_line(exc: BaseException) -> str:
    """``"Type: message"`` of an exception on one line (whitespace collapsed, at most 500 chars)."""
    message = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return line if len(line) <= _MAX_ERROR_CHARS else line[: _MAX_ERROR_CHARS - 1] + "…"


def call_timed(fn: Callable[[dict[str, Any]], Any], task: Task, worker: int | None) -> Outcome:
    """Run ``fn(payload)`` on a task where the worker runs; its outcome, timed (``started``,
    ``finished``: :func:`time.time` around the call), with the traceback text when it failed."""
    started = time.time()
    try:
        result = fn(dict(task.payload))
        if not isinstance(result, Mapping):
            raise TypeError(f"the task function returned {type(result).__name__}, not a dict")
        return Outcome(
            task.record_id, True, dict(result), worker=worker, started=started, finished=time.time()
        )
    except Exception as exc:  # noqa: BLE001 - any failure of one candidate is its outcome
        return Outcome(
            task.record_id,
            False,
            {},
            error_line(exc),
            traceback.format_exc(),
            worker=worker,
            started=started,
            finished=time.time(),
        )


def log_failure(outcome: Outcome) -> None:
    """Log a failed outcome: a warning line, and its traceback at DEBUG level."""
    logger.warning("record %d failed: %s", outcome.record_id, outcome.error)
    if outcome.traceback:
        logger.debug("record %d traceback:\n%s", outcome.record_id, outcome.traceback)


class Executor(ABC):
    """Runs a task function on many tasks, at most :attr:`max_workers` at a time.

    Use as a context manager (or call :meth:`close`) to release its workers.
    """

    max_workers: int

    @abstractmethod
    def run(self, fn: TaskFn, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """Evaluate ``fn(task.payload)`` for every task; yield outcomes as they finish.

        Tasks are pulled from ``tasks`` only when a worker slot is free (never more than
        :attr:`max_workers` ahead of the outcomes yielded), so ``tasks`` may be a generator that
        looks at the record store to choose its next candidate. Closing the returned iterator
        early (or an exception in the driver) cancels the tasks still in flight; their records
        stay as the caller left them (``running``, if it claimed them).

        Args:
            fn: a function of the payload dict returning a JSON-ready result dict. For
                :class:`RayExecutor` it must be picklable: defined at module level.
            tasks: the tasks, possibly lazy.
        """

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release workers; the executor is not used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class InProcessExecutor(Executor):
    """Runs each task in the calling process, one after another (``max_workers`` is 1)."""

    def __init__(self) -> None:
        self.max_workers = 1

    def run(self, fn: TaskFn, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """See :meth:`Executor.run`; tasks run in order, each outcome before the next pull."""
        for task in tasks:
            outcome = call_timed(fn, task, None)
            if not outcome.ok:
                log_failure(outcome)
            yield outcome


def _ray_call(fn: TaskFn, task: Task) -> Outcome:
    """The Ray task: :func:`call_timed` on a worker (module level, so workers import it by name),
    with the worker's node id. Torch's intra-op threads are the task's CPUs (see
    :func:`task_threads`)."""
    import ray

    context = ray.get_runtime_context()
    threads = task_threads(context.get_assigned_resources())
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return dataclasses.replace(call_timed(fn, task, None), node=context.get_node_id())


def task_threads(assigned: Mapping[str, float]) -> int | None:
    """Intra-op threads for a Ray task holding ``assigned`` resources: its CPUs (at least 1), or
    ``None`` (leave torch's) for a task that reserved none. Ray sets ``OMP_NUM_THREADS`` to a
    task's CPUs only when the driver's environment does not set it, and workers inherit the
    driver's: without this, two 1-CPU tasks started from a shell with ``OMP_NUM_THREADS=2``
    would each run 2 threads on their 1 CPU (measured: several times slower on 2 cores)."""
    cpus = assigned.get("CPU", 0)
    return max(1, int(cpus)) if cpus > 0 else None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "executor 'ray' needs the ray package: pip install 'ray[default]'"
        ) from None
    return ray


_NODE_ID = re.compile(r"node[ _]?id[:=]?\s*([0-9a-f]{8,})", re.IGNORECASE)
_NODE_IP = re.compile(r"(?:node ip|\bip)[:=]?\s*([0-9a-f.:]*[0-9a-f])", re.IGNORECASE)
_NODE_DEATH = re.compile(r"\bnode\b[^.]{0,40}\b(?:dead|died)\b", re.IGNORECASE)


def lost_node(ray: Any, exc: BaseException) -> str | None:
    """The node whose loss made a task fail, as ``"node <id> at <ip>"`` (``"a lost node"`` when
    Ray's error does not name it), or ``None`` when ``exc`` is not a node loss.

    A node loss is a ``NodeDiedError`` (the node running the task died), an ``ObjectLostError``
    itself (every copy of the task's result was on nodes that are gone; not its subclasses, such
    as a dead owner) or an actor error whose message says that the actor's node died.
    """
    text = str(exc)
    died = getattr(ray.exceptions, "NodeDiedError", ())  # Ray >= 2.10
    node_error = isinstance(exc, died) or type(exc) is ray.exceptions.ObjectLostError
    actor_node = isinstance(exc, ray.exceptions.RayActorError) and bool(_NODE_DEATH.search(text))
    if not (node_error or actor_node):
        return None
    node_id, ip = _NODE_ID.search(text), _NODE_IP.search(text)
    if node_id is None:
        return "a lost node"
    return f"node {node_id.group(1)}" + (f" at {ip.group(1)}" if ip else "")


def start_ray(address: str | None, runtime_env: dict[str, Any] | None) -> tuple[Any, bool]:
    """The ``ray`` module, initialised: the instance already running in this process if there is
    one, else a new local instance (no dashboard) or the cluster at ``address``.

    Returns:
        ``(ray, started)``: ``started`` is ``True`` when this call initialised Ray (then
        ``runtime_env`` went to ``ray.init``; otherwise it was not used).

    Raises:
        ConfigError: ray is not installed.
        NasdetError: the cluster at ``address`` cannot be reached.
    """
    ray = _import_ray()
    if ray.is_initialized():
        logger.info("using the Ray instance already initialised in this process")
        return ray, False
    where = address or "a local instance"
    try:
        local = {} if address else {"include_dashboard": False}  # no web UI to start
        ray.init(address=address, runtime_env=runtime_env, **local)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if _needs_token(exc):
            raise NasdetError(
                f"executor: the Ray cluster at {where} uses token authentication and refused "
                "this process; run nasdet with RAY_AUTH_MODE=token and the cluster's token in "
                "~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN)"
            ) from None
        reason = error_line(exc).rstrip(".")
        raise NasdetError(
            f"executor: cannot start or reach Ray at {where}: {reason}; start a cluster "
            "with 'ray start --head' or fix the executor address"
        ) from None
    logger.info("Ray started at %s", where)
    return ray, True


def live_resources(nodes: list[dict[str, Any]]) -> tuple[float, float, float]:
    """The CPUs and GPUs of the live nodes in ``nodes`` (``ray.nodes()``), and the most CPUs
    one live node has: ``(cpus, gpus, largest)``.

    ``ray.cluster_resources()`` can still count a node that just died (or list it alive until
    Ray's health check notices), so a per-actor share computed from it alone may exceed what
    any remaining node holds; callers cap a share at ``largest``.
    """
    alive = [n.get("Resources") or {} for n in nodes if n.get("Alive")]
    cpus = sum(float(r.get("CPU", 0)) for r in alive)
    gpus = sum(float(r.get("GPU", 0)) for r in alive)
    largest = max((float(r.get("CPU", 0)) for r in alive), default=0.0)
    return cpus, gpus, largest


def _needs_token(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is Ray refusing a missing token."""
    while exc is not None:
        if type(exc).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class RayExecutor(Executor):
    """Runs each task as a Ray task, one candidate per worker, on a cluster or a local instance.

    Args:
        address: an existing cluster (``"auto"`` on a cluster node, ``"ray://host:10001"`` for
            Ray Client), or ``None`` for a local instance on this machine (or the cluster named
            by ``RAY_ADDRESS``, as ``ray.init`` does). Ignored when Ray is already initialised in
            this process (that instance is used, and left running on :meth:`close`).
        max_workers: tasks in flight at once; default: the cluster's GPU count divided by
            ``num_gpus_per_task`` when that is above 0, else its CPU count divided by
            ``num_cpus_per_task`` (at least 1).
        num_cpus_per_task, num_gpus_per_task: Ray resources each task reserves (fractions
            allowed; Ray sets ``CUDA_VISIBLE_DEVICES`` for GPU tasks).
        runtime_env: Ray runtime environment (``working_dir``, ``pip``, ``env_vars``...); given to
            ``ray.init`` when this executor starts Ray, else to each task.
        max_retries: how often Ray reruns a task whose worker died (0: a crash is a failed
            outcome at once).
        max_reruns: how often nasdet runs a task again that was lost with its node (see the
            module docstring); it goes to the front of the queue and runs on a node that is left.

    Raises:
        ConfigError: ray is not installed, a resource count is negative, or the tasks need GPUs
            the cluster does not have (pass ``max_workers`` to wait for an autoscaler instead).
        NasdetError: the cluster at ``address`` cannot be reached.
    """

    def __init__(
        self,
        address: str | None = None,
        max_workers: int | None = None,
        num_cpus_per_task: float = 1,
        num_gpus_per_task: float = 0,
        runtime_env: dict[str, Any] | None = None,
        *,
        max_retries: int = 0,
        max_reruns: int = 2,
    ) -> None:
        if min(num_cpus_per_task, num_gpus_per_task, max_retries, max_reruns) < 0:
            raise ConfigError(
                "executor: num_cpus_per_task, num_gpus_per_task, max_retries and max_reruns must "
                f"be >= 0, got {num_cpus_per_task}, {num_gpus_per_task}, {max_retries}, "
                f"{max_reruns}"
            )
        if max_workers is not None and max_workers < 1:
            raise ConfigError(f"executor: max_workers must be >= 1, got {max_workers}")
        self.num_cpus_per_task = float(num_cpus_per_task)
        self.num_gpus_per_task = float(num_gpus_per_task)
        self.max_retries = int(max_retries)
        self.max_reruns = int(max_reruns)
        self._ray, self._started = start_ray(address, runtime_env)
        self._task_runtime_env = None if self._started else runtime_env
        self.max_workers = max_workers or self._default_max_workers()
        logger.info(
            "Ray executor: %d worker(s), %g CPU and %g GPU per task",
            self.max_workers,
            self.num_cpus_per_task,
            self.num_gpus_per_task,
        )

    def _default_max_workers(self) -> int:
        cpus, gpus, _ = live_resources(self._ray.nodes())
        if self.num_gpus_per_task > 0:
            if gpus < self.num_gpus_per_task:
                raise ConfigError(
                    f"executor: num_gpus_per_task is {self.num_gpus_per_task:g} but the Ray "
                    f"cluster has {gpus:g} GPU(s); set num_gpus_per_task: 0, or max_workers to "
                    "wait for GPUs an autoscaler adds"
                )
            return max(1, int(gpus // self.num_gpus_per_task))
        cpus = max(cpus, 1.0)
        if self.num_cpus_per_task == 0:
            return int(cpus)
        return max(1, int(cpus // self.num_cpus_per_task))

    def run(self, fn: TaskFn, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """See :meth:`Executor.run`. A worker that dies gives a failed outcome for its task; a
        task lost with its node runs again (up to ``max_reruns`` times).

        Raises:
            TypeError: ``fn`` is a lambda or a nested function (it must be importable by name).
            RuntimeError: the executor is closed.
        """
        ray = self._ray
        if not ray.is_initialized():
            raise RuntimeError("this RayExecutor is closed (Ray is not initialised)")
        name = getattr(fn, "__qualname__", "")
        if "<" in name:  # <lambda>, f.<locals>.g
            raise TypeError(
                f"RayExecutor needs a module-level task function, got {name!r}; define it at the "
                "top level of an importable module"
            )
        return self._run(fn, iter(tasks))

    def _run(self, fn: TaskFn, task_iter: Iterator[Task]) -> Iterator[Outcome]:
        ray = self._ray
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus_per_task,
            "num_gpus": self.num_gpus_per_task,
            "max_retries": self.max_retries,
        }
        if self._task_runtime_env is not None:
            options["runtime_env"] = self._task_runtime_env
        remote = ray.remote(_ray_call).options(**options)
        fn_ref = ray.put(fn)  # pickled once, resolved by each task
        pending: dict[Any, Task] = {}
        lost = NodeLosses(self.max_reruns)

        def fill() -> None:
            while len(pending) < self.max_workers:
                task = lost.requeued.popleft() if lost.requeued else next(task_iter, None)
                if task is None:
                    return
                pending[remote.remote(fn_ref, task)] = task

        try:
            fill()
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    task = pending.pop(ref)
                    outcome, node = self._collect(ref, task)
                    if lost.rerun(task, node):
                        continue
                    lost.ran_again(outcome)
                    if not outcome.ok:
                        log_failure(outcome)
                    yield outcome
                fill()  # after the driver has seen the outcome
        finally:
            for ref, task in pending.items():  # the caller stopped early, or an error
                logger.warning("cancelling record %d, still running", task.record_id)
                ray.cancel(ref, force=True)  # kills the worker: frees its GPU memory at once

    def _collect(self, ref: Any, task: Task) -> tuple[Outcome, str | None]:
        """The task's outcome, and the node it was lost with (``None``: not lost)."""
        ray = self._ray
        try:
            return ray.get(ref), None
        except ray.exceptions.RayError as exc:  # worker crash, lost node or object, cancelled...
            failed = Outcome(task.record_id, False, {}, error_line(exc), str(exc))
            return failed, lost_node(ray, exc)

    def close(self) -> None:
        """Shut Ray down if this executor started it (an instance found running is left)."""
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            logger.info("Ray shut down")
        self._started = False


class NodeLosses:
    """The tasks of one run that were lost with their Ray node: which run again, in what order,
    and the log lines that say so (each lost node once, each re-run task once per re-run)."""

    def __init__(self, max_reruns: int) -> None:
        self.max_reruns = max_reruns
        self.requeued: deque[Task] = deque()  # run before any new task
        self.reruns: dict[int, int] = {}  # record id -> re-runs so far
        self.nodes: set[str] = set()  # the lost nodes already logged

    def rerun(self, task: Task, node: str | None) -> bool:
        """Queue ``task`` to run again if it was lost with ``node`` and has re-runs left; whether
        it was queued (when not, its outcome is the caller's to yield)."""
        if node is None:
            return False
        if node not in self.nodes:
            self.nodes.add(node)
            logger.warning("Ray %s was lost: the tasks that ran on it run again elsewhere", node)
        done = self.reruns.get(task.record_id, 0)
        if done >= self.max_reruns:
            logger.warning(
                "record %d was lost with %s %d time(s): not run again (max_reruns %d)",
                task.record_id,
                node,
                done + 1,
                self.max_reruns,
            )
            return False
        self.reruns[task.record_id] = done + 1
        self.requeued.append(task)
        logger.warning(
            "re-running record %d, lost with %s (re-run %d of at most %d)",
            task.record_id,
            node,
            done + 1,
            self.max_reruns,
        )
        return True

    def ran_again(self, outcome: Outcome) -> None:
        """Log where a re-run task ran and how it ended (nothing for a task run once)."""
        if outcome.record_id in self.reruns:
            logger.warning(
                "record %d ran again on node %s after its node was lost: %s",
                outcome.record_id,
                outcome.node or "?",
                "done" if outcome.ok else f"failed ({outcome.error})",
            )


class ExecutorSettings(Strict):
    """The executor keys of a search step's config section (one schema for every method)."""

    executor: Literal["inprocess", "ray"] = Field(
        "inprocess", description="inprocess: one candidate at a time here; ray: Ray workers"
    )
    address: str | None = Field(None, description="Ray cluster address (None: local instance)")
    workers: int | None = Field(None, ge=1, description="candidates evaluated at once (Ray)")
    gpus_per_worker: float = Field(0.0, ge=0.0, description="GPUs each Ray worker reserves")

    def make_executor(self) -> Executor:
        """The executor these settings describe (enter it to release its workers at the end)."""
        if self.executor == "inprocess":
            return make_executor("inprocess")
        return make_executor(
            "ray",
            address=self.address,
            max_workers=self.workers,
            num_gpus_per_task=self.gpus_per_worker,
        )

    @staticmethod
    def keys(section: str) -> tuple[str, ...]:
        """Dotted keys of these settings under ``section``: they may change on resume."""
        return tuple(f"{section}.{k}" for k in ExecutorSettings.model_fields)


def make_executor(kind: Literal["inprocess", "ray"], **kwargs: Any) -> Executor:
    """The executor named by a config's ``executor:`` value.

    Args:
        kind: ``"inprocess"`` (no options) or ``"ray"`` (options of :class:`RayExecutor`).
        **kwargs: the executor's options.

    Raises:
        ConfigError: an unknown kind, or options ``"inprocess"`` does not take.
    """
    if kind == "inprocess":
        if kwargs:
            raise ConfigError(
                f"executor 'inprocess' takes no options, got {', '.join(sorted(kwargs))}"
            )
        return InProcessExecutor()
    if kind == "ray":
        known = set(inspect.signature(RayExecutor).parameters)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigError(
                f"executor 'ray': unknown option(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        return RayExecutor(**kwargs)
    raise ConfigError(f"unknown executor {kind!r}; use 'inprocess' or 'ray'")
