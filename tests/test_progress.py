"""Progress on a terminal (rich live view) and off it (log lines), with a search step whose
candidates run nested batch bars; no timing assertions (the plain lines are forced every tenth
with ``NASDET_PROGRESS_INTERVAL=0``, or held back with a long interval)."""

from __future__ import annotations

import io
import logging
import os
import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rich.console import Console

from nasdet import progress
from nasdet.cli import main
from nasdet.errors import ConfigError
from nasdet.progress import Bar, progress_mode, track
from nasdet.search.driver import Proposal, add_root, run_search
from nasdet.search.executors import InProcessExecutor
from nasdet.search.records import RecordStore

SIZES = [3, 8, 5]


def lines_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def small_search(tmp_path: Path, seen: list[str] | None = None) -> None:
    """A step of 3 candidates (mAP grows with size, params too), each "training" 4 batches
    under a nested bar; ``seen`` gets the live view's text after each candidate's batches."""
    store = RecordStore(tmp_path / "records.sqlite")
    add_root(store, "s", "g1", metrics={"mAP": 0.1}, cost={"params": 1000.0},
             weights_path="root.pth", payload={"size": 1})  # fmt: skip

    def propose(store: RecordStore, rng: random.Random) -> Proposal | None:
        for size in SIZES:
            if store.find("s", f"g{size}") is None:
                return Proposal(f"g{size}", None, {"size": size}, cost={"params": 1000.0 * size})
        return None

    def evaluate(payload: dict) -> dict:
        bar = track(range(4), "epoch 1/1")
        for i in bar:
            bar.set_postfix(loss="0.500")
            if seen is not None and i == 3:  # the view while the last batch runs
                progress.VIEW.refresh()
                seen.append(CONSOLE_FILE.getvalue())
        size = payload["size"]
        return {"metrics": {"mAP": size / (size + 10.0)}, "cost": {"params": 1000.0 * size},
                "weights_path": payload["out"]}  # fmt: skip

    kwargs = {"propose": propose, "evaluate": evaluate, "executor": InProcessExecutor()}
    run_search(store, "s", tmp_path / "s", max_sample=3, objectives=["mAP", "params"], **kwargs)


CONSOLE_FILE = io.StringIO()


def test_plain_lines_say_candidate_k_of_n_with_eta_best_and_pareto(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NASDET_PROGRESS", "plain")
    monkeypatch.setenv("NASDET_PROGRESS_INTERVAL", "0")
    with caplog.at_level(logging.INFO):
        small_search(tmp_path)
    lines = lines_of(caplog, "nasdet.search.progress")
    assert [line.split(",")[0] for line in lines] == [
        f"s: candidate {k} of 3 finished" for k in (1, 2, 3)
    ]
    assert all(re.search(r", elapsed \d+s, ETA \d+s$", line) for line in lines)
    # g3 (mAP 0.23, 3k params) and g8 (0.44, 8k) beside the root (0.1, 1k); then g5 joins
    assert ", best mAP 0.2308, params 1,000, Pareto 2," in lines[0]
    assert ", best mAP 0.4444, params 1,000, Pareto 3," in lines[1]
    assert ", Pareto 4," in lines[2]
    batches = lines_of(caplog, "nasdet.progress")  # the nested bars: one line per tenth
    assert [b.split(", elapsed")[0] for b in batches[:4]] == [
        f"epoch 1/1: {k} of 4 ({25 * k} %)" for k in (1, 2, 3, 4)
    ]
    assert all(re.search(r", elapsed \d+s, ETA \d+s$", line) for line in batches)
    assert len(batches) == 12


def test_plain_lines_are_sparse(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.setenv("NASDET_PROGRESS", "plain")
    monkeypatch.setenv("NASDET_PROGRESS_INTERVAL", "0")
    with caplog.at_level(logging.INFO):
        for _ in track(range(1000), "evaluate"):
            pass
    lines = lines_of(caplog, "nasdet.progress")
    assert [line.split(":")[1].split("(")[0].strip() for line in lines] == [
        f"{k} of 1000" for k in range(100, 1001, 100)
    ]  # at most ten lines a bar, however many items
    caplog.clear()
    monkeypatch.setenv("NASDET_PROGRESS_INTERVAL", "3600")
    with caplog.at_level(logging.INFO):
        for _ in track(range(1000), "evaluate"):
            pass
    assert lines_of(caplog, "nasdet.progress") == []  # shorter than the interval: no line
    monkeypatch.setenv("NASDET_PROGRESS", "off")
    with caplog.at_level(logging.INFO):
        small_search_free = list(track(range(5), "x", total=5))
    assert small_search_free == list(range(5))
    assert lines_of(caplog, "nasdet.progress") == []


def test_rich_view_shows_step_k_of_n_best_pareto_and_the_batch_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NASDET_PROGRESS", "rich")
    CONSOLE_FILE.seek(0)
    CONSOLE_FILE.truncate()
    monkeypatch.setattr(
        progress.VIEW, "console", Console(force_terminal=True, file=CONSOLE_FILE, width=160)
    )
    seen: list[str] = []
    small_search(tmp_path, seen)
    first, second = seen[0], seen[1][len(seen[0]) :]
    assert "s: candidate 1 of 3" in first and "epoch 1/1" in first and "loss=0.500" in first
    assert "s: candidate 2 of 3" in second
    assert "best mAP 0.2308 · params 1,000 · Pareto 2" in second
    assert "3/4" in second  # the batch bar
    assert progress.VIEW.rows == 0 and not progress.VIEW.live  # the view closed with the step


def test_rich_bars_from_threads_and_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers of one process add and remove rows at once; a loop that raises closes its bar."""
    monkeypatch.setenv("NASDET_PROGRESS", "rich")
    out = io.StringIO()
    monkeypatch.setattr(progress.VIEW, "console", Console(force_terminal=True, file=out))

    def work(i: int) -> None:
        for _ in range(5):
            with Bar(f"worker {i}", 3) as bar:
                for _ in track(range(3), f"batches {i}"):
                    bar.advance()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    with pytest.raises(RuntimeError):
        for _ in track(range(3), "fails"):
            raise RuntimeError("boom")
    assert progress.VIEW.rows == 0 and not progress.VIEW.live


def test_nested_bars_off_a_terminal_in_a_worker_process(tmp_path: Path) -> None:
    """A step's bars inside a process whose stderr is no terminal (a Ray worker's is a file):
    plain mode, no crash, the lines on stderr."""
    script = (
        "import logging\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from nasdet.progress import progress_mode, track\n"
        "from nasdet.search.progress import CandidateProgress\n"
        "assert progress_mode() == 'plain', progress_mode()\n"
        "with CandidateProgress('s', 2) as step:\n"
        "    for _ in range(2):\n"
        "        for _ in track(range(10), 'epoch 1/1'):\n"
        "            for _ in track(range(2), 'BN recalibration'):\n"
        "                pass\n"
        "        step.finished('mAP 0.5', 1)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NASDET_PROGRESS", "RANK")}
    env["NASDET_PROGRESS_INTERVAL"] = "0"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "s: candidate 2 of 2 finished, best mAP 0.5, Pareto 1, elapsed" in done.stderr
    assert "epoch 1/1: 10 of 10 (100 %)" in done.stderr


def test_mode_override_and_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NASDET_PROGRESS", "OFF")
    assert progress_mode() == "off"
    monkeypatch.setenv("NASDET_PROGRESS", "fancy")
    with pytest.raises(ConfigError, match="NASDET_PROGRESS='fancy': set it to one of rich"):
        progress_mode()
    monkeypatch.delenv("NASDET_PROGRESS")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert progress_mode() == "plain"
    monkeypatch.setenv("RANK", "1")  # torchrun: rank 0 shows the progress
    assert progress_mode() == "off"


def test_cli_progress_flag_for_dataset_generation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NASDET_PROGRESS", raising=False)
    monkeypatch.setenv("NASDET_PROGRESS_INTERVAL", "0")
    argv = ["--progress", "plain", "data", "digits", "--out", str(tmp_path / "d"),
            "--train", "10", "--val", "5", "--size", "64"]  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    lines = [line.split(", elapsed")[0] for line in lines_of(caplog, "nasdet.progress")]
    assert "digits train: 10 of 10 (100 %)" in lines
    assert "digits val: 5 of 5 (100 %)" in lines
    assert "NASDET_PROGRESS" not in os.environ  # put back after the command
