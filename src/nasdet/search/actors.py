"""Actor executors: workers that set up once (load a supernet) and then score many candidates.

An :class:`Executor` runs a stateless ``fn(payload)`` per task; a supernet-based search
(Once-for-All, aw_nas's ``trainer_cfg.parallelism``) wants each worker to load the supernet
once and keep it. An :class:`ActorExecutor` does that: each of its ``max_workers`` workers
runs ``state = setup(setup_payload)`` once, then ``fn(state, payload)`` for each task it is
given::

    with RayActorExecutor(4, setup=load_supernet, setup_payload={"weights": path}) as executor:
        for outcome in executor.run(score_subnet, tasks):
            ...  # commit outcome; the freed actor gets the next task of ``tasks`` meanwhile

:meth:`ActorExecutor.run` has :meth:`Executor.run`'s contract (lazy task pulling, one in flight
per worker, outcomes as they finish, an exception in ``fn`` is a failed outcome) and each
:class:`Outcome` carries ``worker`` (the worker's index, 0 to ``max_workers - 1``) and
``started``/``finished`` (unix seconds, measured inside the worker around ``fn``), from which
:func:`worker_summary` tells busy time from idle gaps.

An exception in ``setup`` is not a candidate's failure: it propagates from :meth:`run` (from a
Ray actor, a :class:`~nasdet.errors.NasdetError` as itself, anything else as
:class:`~nasdet.errors.WorkFailed` naming it; the traceback is logged).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Self

from nasdet.errors import ConfigError, NasdetError, WorkFailed
from nasdet.search.executors import (
    NodeLosses,
    Outcome,
    Task,
    call_timed,
    error_line,
    live_resources,
    log_failure,
    lost_node,
    start_ray,
)

__all__ = [
    "ActorExecutor",
    "ActorFn",
    "InProcessActorExecutor",
    "RayActorExecutor",
    "SetupFn",
    "worker_summary",
]

logger = logging.getLogger(__name__)

SetupFn = Callable[[dict[str, Any]], Any]
ActorFn = Callable[[Any, dict[str, Any]], dict[str, Any]]


class ActorExecutor(ABC):
    """Runs ``fn(state, payload)`` on many tasks with :attr:`max_workers` long-lived workers, each
    holding the ``state`` its one-time ``setup`` returned. Use as a context manager (or call
    :meth:`close`) to release the workers."""

    max_workers: int

    @abstractmethod
    def run(self, fn: ActorFn, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """Evaluate ``fn(state, task.payload)`` for every task; yield outcomes as they finish.

        Exactly one task is in flight per worker while ``tasks`` lasts; the next task is pulled
        for a worker only after the caller has seen the outcome that freed it, so ``tasks`` may be
        a generator that chooses its next candidate from the record store. Closing the iterator
        early stops the tasks in flight (Ray: their actors are killed and replaced on the next
        run).
        """

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release the workers; the executor is not used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class InProcessActorExecutor(ActorExecutor):
    """One worker (index 0) in the calling process: ``setup`` runs at the first :meth:`run`,
    its state is kept for later runs, tasks run one after another."""

    def __init__(self, setup: SetupFn | None = None, setup_payload: dict[str, Any] | None = None):
        self.max_workers = 1
        self._setup = setup
        self._setup_payload = dict(setup_payload or {})
        self._state: Any = None
        self._ready = setup is None

    def run(self, fn: ActorFn, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """See :meth:`ActorExecutor.run`."""
        for task in tasks:
            if not self._ready:
                self._state = self._setup(dict(self._setup_payload)) if self._setup else None
                self._ready = True
            outcome = call_timed(functools.partial(fn, self._state), task, 0)
            if not outcome.ok:
                log_failure(outcome)
            yield outcome


class _ActorWorker:
    """The body of one Ray actor (wrapped by ``ray.remote`` when the executor starts)."""

    def __init__(
        self,
        index: int,
        setup: SetupFn | None,
        payload: dict[str, Any],
        threads: int,
        gpu: int | None,
    ) -> None:
        import ray

        self.index, self.threads, self.gpu = index, threads, gpu
        self.node = ray.get_runtime_context().get_node_id()
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read by torch if setup imports it
        self._pin()
        self.failure: tuple[str, str, BaseException | None] | None = None
        self.state: Any = None
        try:
            self.state = setup(payload) if setup else None
        except Exception as exc:  # noqa: BLE001 - reported by ready(), raised by the driver
            self.failure = (error_line(exc), traceback.format_exc(), _picklable(exc))
        self._threads()

    def _pin(self) -> None:
        """Show this actor only its own GPU (before CUDA starts; again before each task, as Ray
        may restore the variable between calls)."""
        if self.gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(self.gpu)

    def _threads(self) -> None:
        torch = sys.modules.get("torch")  # set only if imported: importing it costs seconds
        if torch is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def ready(self) -> tuple[int, tuple[str, str, BaseException | None] | None, str]:
        """``(pid, None, node id)`` once set up, ``(pid, (error line, traceback, exception),
        node id)`` if setup failed."""
        return os.getpid(), self.failure, self.node

    def score(self, fn: ActorFn, task: Task) -> Outcome:
        self._pin()
        self._threads()
        if self.failure is not None:
            line, text, _ = self.failure
            return Outcome(task.record_id, False, {}, line, text, self.index, node=self.node)
        outcome = call_timed(functools.partial(fn, self.state), task, self.index)
        return dataclasses.replace(outcome, node=self.node)


def _picklable(exc: BaseException) -> BaseException | None:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - some exceptions do not survive pickling
        return None
    return exc


def _unreachable(ray: Any) -> type[BaseException] | tuple[()]:
    """Ray's error for an actor that cannot be reached for now (Ray >= 2.30; ``()`` before:
    ``isinstance`` with it is always false)."""
    return getattr(ray.exceptions, "ActorUnavailableError", ())


def actor_share(
    nodes: list[dict[str, Any]],
    num_actors: int,
    num_cpus: float | None = None,
    num_gpus: float = 0,
) -> tuple[float, float]:
    """The CPUs and GPUs each of ``num_actors`` actors asks for on the cluster whose nodes are
    ``nodes`` (``ray.nodes()``). ``num_cpus`` None: the live nodes' CPUs shared equally, but
    never more than the largest live node has (an actor runs on one node; a node that just
    died may still be counted, see :func:`live_resources`).

    Raises:
        ConfigError: the actors do not fit the live nodes' CPUs or GPUs, one actor's CPUs fit
            no single node, or (``num_cpus`` None) no live node has a CPU.
    """
    cpus, gpus, largest = live_resources(nodes)
    share = min(cpus / num_actors, largest) if num_cpus is None else float(num_cpus)
    no_cpu = num_cpus is None and largest <= 0  # nowhere to run: not 0-CPU actors on the head
    if no_cpu or num_actors * share > cpus + 1e-9 or share > largest + 1e-9 or num_gpus > gpus:
        raise ConfigError(
            f"executor: {num_actors} actors with {share:g} CPU and {num_gpus:g} GPU each do not "
            f"fit the Ray cluster ({cpus:g} CPUs, at most {largest:g} on one node, {gpus:g} "
            "GPUs); lower num_actors or the per-actor resources"
        )
    return share, float(num_gpus)


class RayActorExecutor(ActorExecutor):
    """``num_actors`` Ray actors, each set up once, scoring one task at a time.

    Args:
        num_actors: workers (aw_nas ``trainer_cfg.parallelism``); :attr:`max_workers`.
        setup: ``setup(setup_payload) -> state``, run once in each actor (load the supernet);
            ``None``: the state is ``None``. Module level (importable by name on the workers).
        setup_payload: plain data ``setup`` needs (paths, config dict).
        num_cpus_per_actor: Ray CPUs each actor reserves; default: the live nodes' CPUs divided
            by ``num_actors``, so the actors share the cores, capped at the largest node's CPUs
            (:func:`actor_share`). Each actor sets ``OMP_NUM_THREADS``
            before ``setup`` and ``torch.set_num_threads`` (once torch is imported) to
            ``max(1, floor(num_cpus_per_actor))``, i.e. ``cores // num_actors`` by default.
        num_gpus_per_actor: Ray GPUs each actor reserves (fractions allowed; Ray then sets
            ``CUDA_VISIBLE_DEVICES``).
        gpu_ids: aw_nas ``dispatcher_cfg.gpu_ids``: when given and the cluster has GPUs, actor
            ``i`` sees only GPU ``gpu_ids[i % len(gpu_ids)]`` (its ``CUDA_VISIBLE_DEVICES`` is set
            before ``setup`` and before each task; ids are those of the actor's node, so meant
            for one machine). Ignored, with a warning, when the cluster has no GPU.
        address, runtime_env: as for :class:`~nasdet.search.executors.RayExecutor`.
        max_reruns: how often a task lost with its node runs again (as
            :class:`~nasdet.search.executors.RayExecutor`'s): it goes to the next actor free,
            before any new task, and the log names the lost node and the re-run record.
        start_timeout: seconds to wait, while no task runs, for an actor to be placed and set
            up before the run fails (a cluster that lost the nodes the actors need).
        node_timeout: seconds to wait for Ray to declare an actor's node dead after the actor
            became unreachable in the middle of a task (``ActorUnavailableError``: a lost
            connection, which a node loss begins with); the driver waits meanwhile. Not
            declared dead by then: the task is a failed outcome.

    A dead actor is replaced by a new one (set up again). When it died with its node, its task
    runs again elsewhere (up to ``max_reruns`` times); otherwise (a crash, killed) the task is a
    failed outcome. A replacement that no node has room for does not hold the run up: the other
    actors take the tasks, and the run ends when the tasks are done. Actors are created at
    once, so setup runs while the driver prepares the first tasks; the first task goes to
    whichever actor is ready first.

    Raises:
        ConfigError: ray is not installed, a count is out of range, or the actors need more CPUs
            or GPUs than the cluster has.
        NasdetError: the cluster at ``address`` cannot be reached.
    """

    def __init__(
        self,
        num_actors: int,
        setup: SetupFn | None = None,
        setup_payload: dict[str, Any] | None = None,
        *,
        num_cpus_per_actor: float | None = None,
        num_gpus_per_actor: float = 0,
        gpu_ids: Sequence[int] | None = None,
        address: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        max_reruns: int = 2,
        start_timeout: float = 600.0,
        node_timeout: float = 120.0,
    ) -> None:
        if num_actors < 1:
            raise ConfigError(f"executor: num_actors must be >= 1, got {num_actors}")
        if (num_cpus_per_actor is not None and num_cpus_per_actor < 0) or num_gpus_per_actor < 0:
            raise ConfigError(
                "executor: num_cpus_per_actor and num_gpus_per_actor must be >= 0, got "
                f"{num_cpus_per_actor}, {num_gpus_per_actor}"
            )
        if max_reruns < 0 or start_timeout <= 0 or node_timeout < 0:
            raise ConfigError(
                "executor: max_reruns and node_timeout must be >= 0 and start_timeout > 0, got "
                f"{max_reruns}, {node_timeout}, {start_timeout}"
            )
        _check_module_level(setup, "setup")
        self.max_workers = int(num_actors)
        self.max_reruns, self.start_timeout = int(max_reruns), float(start_timeout)
        self.node_timeout = float(node_timeout)
        self._nodes: dict[int, str] = {}  # actor index -> the id of the node it runs on
        self._setup, self._setup_payload = setup, dict(setup_payload or {})
        self._ray, self._started = start_ray(address, runtime_env)
        nodes = self._ray.nodes()
        self.num_cpus_per_actor, self.num_gpus_per_actor = actor_share(
            nodes, num_actors, num_cpus_per_actor, num_gpus_per_actor
        )
        gpus = live_resources(nodes)[1]
        self.gpu_ids = list(gpu_ids) if gpu_ids and gpus > 0 else None
        if gpu_ids and gpus == 0:
            logger.warning("gpu_ids %s ignored: the Ray cluster has no GPU", list(gpu_ids))
        self.threads = max(1, int(self.num_cpus_per_actor))
        self._actors: list[Any] = [None] * num_actors
        self._ready: set[int] = set()
        for i in range(num_actors):
            self._spawn(i)
        logger.info(
            "Ray actor executor: %d actor(s), %g CPU (%d torch thread(s)) and %g GPU each%s",
            num_actors,
            self.num_cpus_per_actor,
            self.threads,
            self.num_gpus_per_actor,
            f", GPUs {self.gpu_ids}" if self.gpu_ids else "",
        )

    def _spawn(self, i: int) -> None:
        gpu = self.gpu_ids[i % len(self.gpu_ids)] if self.gpu_ids else None
        remote = self._ray.remote(_ActorWorker).options(
            num_cpus=self.num_cpus_per_actor, num_gpus=self.num_gpus_per_actor, max_restarts=0
        )
        self._actors[i] = remote.remote(i, self._setup, self._setup_payload, self.threads, gpu)
        self._ready.discard(i)

    def _kill(self, i: int) -> None:
        if self._actors[i] is not None:
            self._ray.kill(self._actors[i], no_restart=True)
        self._actors[i] = None
        self._ready.discard(i)
        self._nodes.pop(i, None)

    def run(self, fn: ActorFn, tasks: Iterable[Task]) -> Iterator[Outcome]:
        """See :meth:`ActorExecutor.run`. ``fn`` must be module level (importable by name).

        Raises:
            TypeError: ``fn`` is a lambda or a nested function.
            RuntimeError: the executor is closed.
        """
        if not self._ray.is_initialized() or not self._actors:
            raise RuntimeError("this RayActorExecutor is closed")
        _check_module_level(fn, "the task function")
        return self._run(fn, iter(tasks))

    def _run(self, fn: ActorFn, task_iter: Iterator[Task]) -> Iterator[Outcome]:
        ray = self._ray
        fn_ref = ray.put(fn)  # pickled once, resolved by each call
        pending: dict[Any, tuple[int, Task | None]] = {}  # ref -> (actor, task; None: ready())
        lost = NodeLosses(self.max_reruns)
        exhausted = False

        def dispatch(i: int) -> None:
            nonlocal exhausted
            if lost.requeued:  # lost with its node: before any new task
                task: Task | None = lost.requeued.popleft()
            elif exhausted:
                return
            else:
                task = next(task_iter, None)
            if task is None:
                exhausted = True
                return
            pending[self._actors[i].score.remote(fn_ref, task)] = (i, task)

        def probe(i: int) -> None:
            if self._actors[i] is None:
                self._spawn(i)
            pending[self._actors[i].ready.remote()] = (i, None)

        def idle() -> list[int]:  # set up, and neither scoring nor starting
            return sorted(self._ready - {i for i, _ in pending.values()})

        try:
            for i in range(self.max_workers):
                dispatch(i) if i in self._ready else probe(i)
            while pending:
                running = any(task is not None for _, task in pending.values())
                if not running and exhausted and not lost.requeued:
                    break  # no task left for the actors still starting
                ready, _ = ray.wait(
                    list(pending), num_returns=1, timeout=None if running else self.start_timeout
                )
                if not ready:
                    raise WorkFailed(
                        f"executor: no Ray actor could start within {self.start_timeout:g} s "
                        "and none is running a task; the cluster has no room left for them "
                        f"({self.num_cpus_per_actor:g} CPU and {self.num_gpus_per_actor:g} GPU "
                        "each): add nodes, or run fewer actors"
                    )
                i, task = pending.pop(ready[0])
                if task is None:
                    self._check_ready(ready[0], i)
                    dispatch(i)
                    continue
                outcome, died, node = self._collect(ready[0], i, task)
                if died:
                    self._kill(i)
                if lost.rerun(task, node):
                    probe(i)  # a new actor where the node has room; the task to whoever is free
                    for j in idle():
                        dispatch(j)
                    continue
                lost.ran_again(outcome)
                if not outcome.ok:
                    log_failure(outcome)
                yield outcome  # the caller commits it before the freed actor gets a new task
                if died:
                    if not exhausted or lost.requeued:
                        probe(i)
                else:
                    dispatch(i)
        finally:
            for _ref, (i, task) in pending.items():  # the caller stopped early, or an error
                if task is not None:
                    logger.warning(
                        "stopping record %d, still running on actor %d", task.record_id, i
                    )
                    self._kill(i)  # actor tasks cannot be cancelled by force: replaced next run

    def _check_ready(self, ref: Any, i: int) -> None:
        ray = self._ray
        try:
            pid, failure, node = ray.get(ref)
        except ray.exceptions.RayError as exc:
            self._kill(i)
            raise WorkFailed(f"executor: actor {i} could not start: {error_line(exc)}") from None
        if failure is not None:
            line, text, exc = failure
            logger.error("setup of actor %d failed:\n%s", i, text.rstrip())
            self._kill(i)
            if isinstance(exc, NasdetError):
                raise exc
            raise WorkFailed(f"executor: setup of actor {i} failed: {line}")
        self._ready.add(i)
        self._nodes[i] = node
        logger.info("actor %d (pid %d, node %s) is set up", i, pid, node)

    def _collect(self, ref: Any, i: int, task: Task) -> tuple[Outcome, bool, str | None]:
        """The task's outcome, whether its actor died, and the node it was lost with (``None``:
        not lost)."""
        ray = self._ray
        try:
            return ray.get(ref), False, None
        except ray.exceptions.RayError as exc:  # actor died, lost object, cancelled...
            died = isinstance(exc, ray.exceptions.RayActorError)  # the actor is replaced
            failed = Outcome(task.record_id, False, {}, error_line(exc), str(exc), i)
            node = lost_node(ray, exc)
            if node is None and isinstance(exc, _unreachable(ray)):
                node = self._dead_node(i)
            return failed, died, node

    def _dead_node(self, i: int) -> str | None:
        """After actor ``i`` became unreachable: its node as ``"node <id> at <ip>"`` once Ray
        declares it dead, waiting up to :attr:`node_timeout`; ``None`` when the actor turns out
        to have died alone (a crash) or answers again, or its node stays alive."""
        ray, node = self._ray, self._nodes.get(i)
        if node is None:
            return None
        logger.info("actor %d became unreachable: waiting for Ray to tell whether its node died", i)
        unreachable = _unreachable(ray)
        deadline = time.monotonic() + self.node_timeout
        while time.monotonic() < deadline:
            info = next((n for n in ray.nodes() if n.get("NodeID") == node), None)
            if info is None or not info.get("Alive", True):
                ip = (info or {}).get("NodeManagerAddress")
                return f"node {node}" + (f" at {ip}" if ip else "")
            try:
                ray.get(self._actors[i].ready.remote(), timeout=1.0)
                return None  # it answers: not lost
            except ray.exceptions.GetTimeoutError:
                continue
            except ray.exceptions.RayActorError as exc:
                if not isinstance(exc, unreachable):
                    return lost_node(ray, exc)  # dead: its death cause names a lost node, or not
            time.sleep(0.5)
        logger.warning(
            "actor %d became unreachable, but Ray still reports its node %s alive after %g s: "
            "its task counts as failed",
            i,
            node,
            self.node_timeout,
        )
        return None

    def close(self) -> None:
        """Kill the actors; shut Ray down if this executor started it."""
        if self._ray.is_initialized():
            for i in range(len(self._actors)):
                self._kill(i)
        self._actors = []
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            logger.info("Ray shut down")
        self._started = False


def _check_module_level(fn: Callable[..., Any] | None, what: str) -> None:
    name = getattr(fn, "__qualname__", "") if fn is not None else ""
    if "<" in name:  # <lambda>, f.<locals>.g
        raise TypeError(
            f"RayActorExecutor needs a module-level {what}, got {name!r}; define it at the top "
            "level of an importable module"
        )


def worker_summary(outcomes: Iterable[Outcome]) -> dict[int, dict[str, float]]:
    """Per worker index, from the outcomes' ``started``/``finished`` (unix seconds; outcomes
    without them are left out): ``tasks``; ``busy_s``, the seconds inside the task function;
    ``idle_s`` and ``max_gap_s``, the total and longest gap between one task's end and the
    worker's next start (commit, proposal and dispatch: the time a worker waits); ``span_s``,
    first start to last end."""
    spans: dict[int, list[tuple[float, float]]] = {}
    for o in outcomes:
        if o.started is not None and o.finished is not None:
            spans.setdefault(-1 if o.worker is None else o.worker, []).append(
                (o.started, o.finished)
            )
    out: dict[int, dict[str, float]] = {}
    for worker, times in sorted(spans.items()):
        times.sort()
        gaps = [max(0.0, s - f) for (_, f), (s, _) in zip(times, times[1:], strict=False)]
        out[worker] = {
            "tasks": len(times),
            "busy_s": sum(f - s for s, f in times),
            "idle_s": sum(gaps),
            "max_gap_s": max(gaps, default=0.0),
            "span_s": times[-1][1] - times[0][0],
        }
    return out
