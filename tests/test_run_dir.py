"""``nasdet status`` and ``nasdet report`` on a run directory, also while another process writes
to its record store."""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nasdet import pipeline
from nasdet.cli import main
from nasdet.method import MethodResult
from nasdet.search import RecordStore, RecordStoreError

CONFIG = {
    "method": "spnas",
    "serial": {"search_algorithm": {"max_sample": 6, "objective_keys": ["mAP", "params"]}},
}
WRITER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute(
    "INSERT INTO records (step, genotype, status, created_at) VALUES ('serial', 'x', 'pending', 0)"
)
print("holding", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def _set_times(path: Path, rid: int, started: float, finished: float | None, worker: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE records SET started_at = ?, finished_at = ?, worker = ? WHERE id = ?",
            (started, finished, worker, rid),
        )
    conn.close()


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A run mid-step: ``serial`` has a root, 2 done (10 s each, workers a and b), one running
    for 4 s (worker a) and one pending, of a budget of 6."""
    out = tmp_path / "run"
    store = RecordStore(out / "records.sqlite")
    (out / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    now = time.time()
    root = store.add("serial", "root", extra={"root": True})
    store.claim(root.id)
    store.finish(root.id, {"mAP": 0.2}, "w0.pt", cost={"params": 100})
    for genotype, m_ap, params, worker in (("g1", 0.3, 80, "a"), ("g2", 0.25, 50, "b")):
        rec = store.add("serial", genotype, parent_id=root.id)
        store.claim(rec.id)
        store.finish(rec.id, {"mAP": m_ap}, f"{genotype}.pt", cost={"params": params})
        _set_times(store.path, rec.id, now - 30, now - 20, worker)
    running = store.add("serial", "g3", parent_id=root.id)
    store.claim(running.id)
    _set_times(store.path, running.id, now - 4, None, "a")
    store.add("serial", "g4", parent_id=root.id)
    store.close()
    return out


def test_status_reads_while_another_process_writes(run_dir: Path, capsys) -> None:
    db = run_dir / "records.sqlite"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "holding"  # its write transaction is open
        before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()}
        assert main(["status", str(run_dir), "--json"]) == 0
        after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()}
        assert writer.poll() is None  # still holding the write lock
    finally:
        writer.communicate("go\n", timeout=30)
    assert before.keys() == after.keys()  # no -journal, no other file
    assert before["records.sqlite"] == after["records.sqlite"]
    assert before.get("records.sqlite-wal") == after.get("records.sqlite-wal")
    assert not (run_dir / "records.sqlite-journal").exists()
    status = json.loads(capsys.readouterr().out)
    assert status["schema"] == 1 and status["method"] == "spnas" and not status["finished"]
    assert status["objectives"] == ["mAP", "params"]
    assert status["current_step"] == "serial"
    (step,) = status["steps"]
    assert step["counts"] == {"pending": 1, "running": 1, "done": 3, "failed": 0, "infeasible": 0}
    assert [r["genotype"] for r in step["running"]] == ["g3"]  # not the uncommitted "x"
    assert step["running"][0]["worker"] == "a" and 3 < step["running"][0]["running_s"] < 60
    assert step["best"]["mAP"]["genotype"] == "g1" and step["best"]["params"]["value"] == 50
    # budget 6 - 3 used (2 done, 1 running; the root is no sample) = 3 left, 10 s each, 2
    # workers, and the running one has 10 s less its time so far to go
    assert step["budget"] == 6 and step["workers"] == 2 and step["mean_duration_s"] == 10
    to_go = max(10 - step["running"][0]["running_s"], 0)
    assert step["eta_s"] == pytest.approx((3 * 10 + to_go) / 2)
    assert RecordStore(db).count("serial") == 6  # the writer's record went in after all


def test_status_text_and_unknown_eta(run_dir: Path, capsys) -> None:
    with sqlite3.connect(run_dir / "records.sqlite") as conn:  # nothing timed: no ETA
        conn.execute("UPDATE records SET finished_at = NULL WHERE status = 'done'")
    conn.close()
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "spnas): in progress; objectives mAP, params" in out
    row = r"serial\s+1\s+1\s+3\s+0\s+0\s+unknown\s+mAP 0.3 \(#2\), params 50 \(#3\)"
    assert re.search(row, out)
    assert re.search(r"running: serial #4 g3 on a for \ds \(since", out)


@pytest.mark.parametrize("command", ["status", "report"])
def test_missing_run_dir_is_one_line_and_creates_nothing(
    tmp_path: Path, command: str, capsys
) -> None:
    assert main([command, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "nope") in err and "--out" in err
    assert not (tmp_path / "nope").exists()
    assert main([command, str(tmp_path)]) == 2
    assert "no records.sqlite" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_readonly_store_refuses_writes(run_dir: Path) -> None:
    store = RecordStore.open_readonly(run_dir)
    assert store.count() == 5
    with pytest.raises(RecordStoreError, match="read-only"):
        store.add("serial", "new")
    with pytest.raises(RecordStoreError, match="no record store"):
        RecordStore.open_readonly(run_dir / "missing.sqlite")
    assert not (run_dir / "missing.sqlite").exists()


def test_report_mid_run(run_dir: Path, capsys) -> None:
    db = run_dir / "records.sqlite"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    assert main(["report", str(run_dir)]) == 0
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    page = (run_dir / "report.html").read_text()
    assert capsys.readouterr().out.strip() == f"report: {run_dir / 'report.html'}"
    assert "<title>nasdet SP-NAS</title>" in page and "Step: serial" in page
    assert "no winner given" in page


def test_report_of_a_finished_run_is_the_one_the_run_wrote(run_dir: Path, capsys) -> None:
    """The end of ``nasdet run`` (pipeline) and ``nasdet report`` write the same page."""
    store = RecordStore(run_dir)
    (run_dir / "g1.pt").write_bytes(b"model")
    winner = dataclasses.replace(store.find("serial", "g1"), weights_path=str(run_dir / "g1.pt"))
    result = MethodResult(
        final=winner,
        baseline=store.find("serial", "root"),
        baseline_note="the fine-tuned start",
        report_steps=["serial"],
        objectives=["mAP", "params"],
    )
    method = type("M", (), {"title": "SP-NAS"})()
    report = pipeline._report(run_dir, method, result)
    pipeline._finish(run_dir, result, report, title="nasdet SP-NAS")
    first = report.read_text()
    report.unlink()
    assert main(["report", str(run_dir)]) == 0
    again = report.read_text()

    def unstamped(page: str) -> str:
        return re.sub(r"written [0-9: -]+", "", page)

    assert unstamped(again) == unstamped(first)
    assert "the fine-tuned start" in again and "winner: record 2" in again
