"""The shared search loop, with fake proposals and a fake evaluator (no training)."""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from pathlib import Path

import pytest

from nasdet.errors import WorkFailed
from nasdet.search.constraints import Constraints, checker
from nasdet.search.driver import (
    Proposal,
    Propose,
    add_root,
    clean_leftovers,
    run_search,
    write_step_outputs,
)
from nasdet.search.executors import InProcessExecutor
from nasdet.search.records import RecordStore


def fake_evaluate(payload: dict) -> dict:
    """mAP grows with size; genotype 'boom' fails."""
    if payload["genotype"] == "boom":
        raise RuntimeError("candidate exploded")
    size = payload["size"]
    return {
        "metrics": {"mAP": size / (size + 10.0)},
        "cost": {"params": 1000.0 * size},
        "weights_path": payload["out"],
    }


def fixed_evaluate(payload: dict) -> dict:
    """:func:`fake_evaluate` once the cause of 'boom' is fixed: it scores like any size 0."""
    return fake_evaluate({**payload, "genotype": "fixed"})


def propose_in_order(step: str, sizes: list[int], parent_id: int) -> Propose:
    """Proposes the first size of ``sizes`` not stored yet (0 is 'boom'); ``None`` after."""

    def propose(store: RecordStore, rng: random.Random) -> Proposal | None:
        for size in sizes:
            genotype = "boom" if size == 0 else f"g{size}"
            if store.find(step, genotype) is None:
                payload = {"size": size, "genotype": genotype}
                return Proposal(genotype, parent_id, payload, cost={"params": 1000.0 * size})
        return None

    return propose


def add_g1(store: RecordStore, step: str = "s"):
    return add_root(
        store,
        step,
        "g1",
        metrics={"mAP": 1 / 11},
        cost={"params": 1000.0},
        weights_path="root.pth",
        payload={"size": 1, "genotype": "g1"},
    )


def test_run_search_records_everything(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    root = add_root(
        store,
        "s",
        "g1",
        metrics={"mAP": 1 / 11},
        cost={"params": 1000.0},
        weights_path="root.pth",
        payload={"size": 1},
    )
    sizes = iter([2, 2, 50, 3, 4])  # 2 twice: a duplicate; 50: over max_params

    def propose(store: RecordStore, rng: random.Random) -> Proposal | None:
        size = next(sizes, None)
        if size is None:
            return None
        genotype = "boom" if size == 0 else f"g{size}"
        return Proposal(
            genotype, root.id, {"size": size, "genotype": genotype}, cost={"params": 1000.0 * size}
        )

    front = run_search(
        store,
        "s",
        tmp_path / "s",
        propose=propose,
        evaluate=fake_evaluate,
        executor=InProcessExecutor(),
        max_sample=3,
        objectives=["mAP", "params"],
        check_cost=checker(Constraints(max_params=20_000)),
        max_proposal_tries=3,
    )
    by_genotype = {r.genotype: r for r in store.records("s")}
    assert set(by_genotype) == {"g1", "g2", "g50", "g3", "g4"}
    assert by_genotype["g50"].status == "infeasible"
    assert by_genotype["g50"].error == "params 50,000 > max_params 20,000"
    assert all(by_genotype[g].status == "done" for g in ("g1", "g2", "g3", "g4"))
    # larger is better and costlier here: every done record is on the front
    assert sorted(r.genotype for r in front) == ["g1", "g2", "g3", "g4"]
    rows = list(csv.DictReader((tmp_path / "s" / "pareto.csv").open()))
    assert sorted(r["genotype"] for r in rows) == ["g1", "g2", "g3", "g4"]
    assert (tmp_path / "s" / f"desc_{by_genotype['g4'].id}.json").is_file()
    # a second run finds max_sample reached and evaluates nothing more
    again = run_search(
        store,
        "s",
        tmp_path / "s",
        propose=propose,
        evaluate=fake_evaluate,
        executor=InProcessExecutor(),
        max_sample=3,
        objectives=["mAP", "params"],
    )
    assert len(again) == 4 and len(store.records("s")) == 5


def test_infeasible_proposals_do_not_use_the_budget_and_never_loop(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    root = add_root(
        store,
        "s",
        "g1",
        metrics={"mAP": 0.1},
        cost={"params": 1000.0},
        weights_path="root.pth",
        payload={"size": 1},
    )
    sizes = iter([90, 2, 91, 3])  # 90/91 over max_params: recorded, not trained, not counted

    def propose(store: RecordStore, rng: random.Random) -> Proposal | None:
        size = next(sizes, 100 + len(store.records("s")))  # afterwards: always infeasible
        return Proposal(
            f"g{size}",
            root.id,
            {"size": size, "genotype": f"g{size}"},
            cost={"params": 1000.0 * size},
        )

    run_search(
        store,
        "s",
        tmp_path / "s",
        propose=propose,
        evaluate=fake_evaluate,
        executor=InProcessExecutor(),
        max_sample=3,
        objectives=["mAP", "params"],
        check_cost=checker(Constraints(max_params=20_000)),
        max_proposal_tries=4,
    )
    status = {r.genotype: r.status for r in store.records("s")}
    assert status["g2"] == status["g3"] == "done"
    assert status["g90"] == status["g91"] == "infeasible"
    # only 2 of the 3 trainable slots could be filled: 4 infeasible in a row end the step
    assert sum(s == "done" for s in status.values()) == 3  # root + g2 + g3
    assert sum(s == "infeasible" for s in status.values()) == 2 + 4


def test_a_failed_candidate_fails_the_step_loudly_and_is_evaluated_again_on_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    root = add_g1(store)
    step_dir = tmp_path / "s"
    kwargs = {
        "propose": propose_in_order("s", [2, 0, 3], root.id),
        "executor": InProcessExecutor(),
        "max_sample": 3,
        "objectives": ["mAP", "params"],
    }
    with caplog.at_level(logging.INFO), pytest.raises(WorkFailed) as info:
        run_search(store, "s", step_dir, evaluate=fake_evaluate, **kwargs)
    boom = store.find("s", "boom")
    assert boom is not None and boom.status == "failed"
    assert str(info.value) == (
        f"s: 1 of 3 candidates failed; first: #{boom.id} boom: RuntimeError: candidate exploded "
        f"— the traceback is in the run log and in {store.path} (record {boom.id})"
    )
    assert 'raise RuntimeError("candidate exploded")' in boom.extra["traceback"]
    assert any(
        r.levelno >= logging.ERROR and "Traceback (most recent call last)" in r.getMessage()
        for r in caplog.records
    )
    assert store.find("s", "g3").status == "done"  # the candidate after the failure still ran
    rows = list(csv.DictReader((step_dir / "pareto.csv").open()))  # the done ones are kept
    assert sorted(r["genotype"] for r in rows) == ["g1", "g2", "g3"]

    caplog.clear()
    with caplog.at_level(logging.INFO):
        front = run_search(store, "s", step_dir, evaluate=fixed_evaluate, **kwargs)
    assert "s: 1 failed candidate(s) will be evaluated again" in caplog.text
    again = store.get(boom.id)
    assert again.status == "done" and again.error is None and "traceback" not in again.extra
    assert [r.genotype for r in store.records("s")] == ["g1", "g2", "boom", "g3"]  # nothing new
    assert sorted(r.genotype for r in front) == ["boom", "g1", "g2", "g3"]


def test_one_progress_line_per_finished_candidate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Off a terminal (no live view) the log says where the step stands, also after a resume."""
    store = RecordStore(tmp_path / "records.sqlite")
    root = add_g1(store)
    kwargs = {
        "propose": propose_in_order("s", [2, 0, 3], root.id),
        "executor": InProcessExecutor(),
        "max_sample": 3,
        "objectives": ["mAP", "params"],
    }

    def progress_lines() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "nasdet.search.progress" and r.levelno == logging.INFO
        ]

    with caplog.at_level(logging.INFO), pytest.raises(WorkFailed):  # "boom" (0) fails
        run_search(store, "s", tmp_path / "s", evaluate=fake_evaluate, **kwargs)
    lines = progress_lines()
    counted = [f"s: candidate {k} of 3 finished" for k in (1, 2, 3)]  # the failed one too
    assert [line.split(",")[0] for line in lines] == counted
    assert all(re.search(r", elapsed \d+s, ETA \d+s$", line) for line in lines)
    assert lines[-1].endswith("ETA 0s")
    caplog.clear()
    with caplog.at_level(logging.INFO):  # the resume evaluates "boom" again: the 3rd of 3
        run_search(store, "s", tmp_path / "s", evaluate=fixed_evaluate, **kwargs)
    assert [line.split(",")[0] for line in progress_lines()] == ["s: candidate 3 of 3 finished"]


# -- resume after a kill: the same records as an uninterrupted run ---------------------------


class Killed(BaseException):
    """Stands for SIGKILL / Ctrl-C: not an Exception, so the executor does not catch it."""


def propose_random(store: RecordStore, rng: random.Random) -> Proposal:
    """A size in 1..40 drawn from ``rng`` alone: sizes over 20 break max_params 20,000 (see
    :func:`search`) and repeats are duplicates."""
    size = rng.randint(1, 40)
    payload = {"size": size, "genotype": f"g{size}"}
    return Proposal(f"g{size}", None, payload, cost={"params": 1000.0 * size})


def propose_then_infeasible(store: RecordStore, rng: random.Random) -> Proposal:
    """Sizes 90, 2, 91, 3 by stored count, then always a new infeasible one."""
    n = len(store.records("s")) - 1  # the root is record 0
    size = [90, 2, 91, 3][n] if n < 4 else 100 + n
    payload = {"size": size, "genotype": f"g{size}"}
    return Proposal(f"g{size}", None, payload, cost={"params": 1000.0 * size})


def killed_after_infeasible(propose: Propose, k: int) -> Propose:
    """``propose``, killed when asked for a proposal right after the k-th infeasible record."""
    seen: set[int] = set()

    def killing(store: RecordStore, rng: random.Random) -> Proposal | None:
        last = store.records("s")[-1]
        if last.status == "infeasible" and last.id not in seen:
            seen.add(last.id)
            if len(seen) == k:
                raise Killed
        return propose(store, rng)

    return killing


def killed_at_evaluation(n: int):
    """:func:`fake_evaluate`, killed at its ``n``-th call."""
    calls: list[str] = []

    def evaluate(payload: dict) -> dict:
        calls.append(payload["genotype"])
        if len(calls) == n:
            raise Killed
        return fake_evaluate(payload)

    return evaluate


def search(store: RecordStore, step_dir: Path, propose: Propose, evaluate=fake_evaluate) -> None:
    run_search(
        store,
        "s",
        step_dir,
        propose=propose,
        evaluate=evaluate,
        executor=InProcessExecutor(),
        max_sample=8,
        objectives=["mAP", "params"],
        check_cost=checker(Constraints(max_params=20_000)),
        seed=7,
        max_proposal_tries=4,
    )


def stored(store: RecordStore) -> list[tuple]:
    return [(r.genotype, r.status, r.metrics, r.error) for r in store.records("s")]


@pytest.mark.parametrize(
    ("propose", "kill"),
    [
        (propose_random, ("infeasible", 1)),
        (propose_random, ("infeasible", 3)),
        (propose_random, ("evaluation", 4)),
        (propose_then_infeasible, ("infeasible", 3)),  # in the trailing run that ends the step
    ],
)
def test_a_killed_search_resumes_to_the_records_of_an_uninterrupted_one(
    tmp_path: Path, propose: Propose, kill: tuple[str, int]
) -> None:
    whole = RecordStore(tmp_path / "a.sqlite")
    add_g1(whole)
    search(whole, tmp_path / "a", propose)

    store = RecordStore(tmp_path / "b.sqlite")
    add_g1(store)
    where, k = kill
    with pytest.raises(Killed):
        if where == "infeasible":
            search(store, tmp_path / "b", killed_after_infeasible(propose, k))
        else:
            search(store, tmp_path / "b", propose, killed_at_evaluation(k))
    assert len(store.records("s")) < len(whole.records("s"))
    search(store, tmp_path / "b", propose)
    assert stored(store) == stored(whole)


# -- step outputs and leftovers --------------------------------------------------------------


def test_clean_leftovers_removes_what_killed_candidates_left_and_nothing_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    step_dir = tmp_path / "s"
    (step_dir / ".train-abc123" / "checkpoint").mkdir(parents=True)
    (step_dir / ".train-abc123" / "checkpoint" / "last.pt").write_bytes(b"x")
    (step_dir / ".model_3.pth.k2j4.tmp").write_bytes(b"half a model")
    (step_dir / ".pareto.csv.9x.tmp").write_text("id,")
    kept = ["desc_2.json", "model_2.pth", "pareto.csv", "notes.txt"]
    for name in kept:
        (step_dir / name).write_text("keep")
    (step_dir / "logs").mkdir()
    with caplog.at_level(logging.INFO):
        removed = clean_leftovers(step_dir)
    assert sorted(p.name for p in removed) == [".model_3.pth.k2j4.tmp", ".pareto.csv.9x.tmp",
                                               ".train-abc123"]  # fmt: skip
    assert sorted(p.name for p in step_dir.iterdir()) == sorted([*kept, "logs"])
    assert "s: removed 3 leftover(s) of killed candidates: .model_3.pth.k2j4.tmp" in caplog.text
    assert clean_leftovers(step_dir) == [] and clean_leftovers(tmp_path / "missing") == []


def test_every_run_rewrites_the_step_outputs_from_the_store(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    root = add_g1(store)
    step_dir = tmp_path / "s"
    kwargs = {
        "propose": propose_in_order("s", [2, 3], root.id),
        "evaluate": fake_evaluate,
        "executor": InProcessExecutor(),
        "max_sample": 2,
        "objectives": ["mAP", "params"],
    }
    front = run_search(store, "s", step_dir, **kwargs)
    # (tensorboard/: a run per candidate, written as each is committed)
    wanted = sorted(["pareto.csv", "tensorboard", *(f"desc_{r.id}.json" for r in front)])
    assert sorted(p.name for p in step_dir.iterdir()) == wanted

    # a kill after the last candidate was committed, before the outputs were (re)written
    for path in step_dir.iterdir():
        if path.is_file():
            path.unlink()
    (step_dir / ".train-x").mkdir()
    (step_dir / ".desc_9.json.abc.tmp").write_text("{")
    again = run_search(store, "s", step_dir, **kwargs)  # nothing left to evaluate
    assert [r.id for r in again] == [r.id for r in front]
    assert sorted(p.name for p in step_dir.iterdir()) == wanted
    desc = json.loads((step_dir / f"desc_{front[-1].id}.json").read_text())
    assert desc["genotype"] == "g3" and desc["metrics"] == {"mAP": 3 / 13}


def test_a_record_that_leaves_the_front_loses_its_desc_file(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "records.sqlite")
    step_dir = tmp_path / "s"
    step_dir.mkdir()
    a = add_g1(store)  # mAP 1/11 at 1,000 params
    write_step_outputs(store, "s", step_dir, ["mAP", "params"])
    assert (step_dir / f"desc_{a.id}.json").is_file()
    b = store.add("s", "g0", cost={"params": 500.0})
    store.claim(b.id)
    store.finish(b.id, {"mAP": 0.5})  # better and cheaper: a is dominated
    front = write_step_outputs(store, "s", step_dir, ["mAP", "params"])
    assert [r.id for r in front] == [b.id]
    assert sorted(p.name for p in step_dir.iterdir()) == [f"desc_{b.id}.json", "pareto.csv"]
