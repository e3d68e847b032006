"""`nasdet run` end to end on tiny data: outputs, lineage, resume after a kill, Ray workers."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

import nasdet
from nasdet.cli import main
from nasdet.data import make_digits_classification
from nasdet.methods import load_run_config
from nasdet.methods.spnas.space import SerialCode
from nasdet.report import lineage
from nasdet.search.driver import is_root
from nasdet.search.records import RecordStore


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    return make_digits_classification(root, per_class_train=6, per_class_val=2, size=32, seed=0)


def spnas_config(digits_root: Path, cls_root: Path, *, serial_samples: int = 3,
                 steps: list[str] | None = None, **search: object) -> dict:
    cfg = tiny_config(digits_root, epochs=1)
    cfg["data"]["search_fraction"] = 0.25
    cfg["search"] = {"epochs": 1, "block": "basic", "base_width": 8,
                     "classification_data": str(cls_root), "reignition_epochs": 1,
                     "max_reignite": 1, **search}
    cfg["fine_tune"] = {"pipe_step": {"type": "TrainPipeStep"}}
    cfg["serial"] = {
        "pipe_step": {"type": "SearchPipeStep"},
        "search_algorithm": {"type": "SpNasS", "max_sample": serial_samples,
                             "objective_keys": ["mAP", "params"], "num_mutate": 2,
                             "expend_ratio": 0.5, "add_stage_ratio": 0.2, "max_stages": 5},
        "search_space": {"hyperparameters": [
            {"key": "network.backbone.code", "type": "CATEGORY", "range": ["11-21-21-21"]}]},
        "model": {"model_desc": {"type": "FasterRCNN", "freeze_swap_keys": True,
                                 "backbone": {"type": "SerialBackbone"}}},
    }
    cfg["reignition"] = {"pipe_step": {"type": "TrainPipeStep"},
                         "models_folder": "{local_base_path}/output/serial/",
                         "trainer": {"type": "Trainer", "callbacks": "ReignitionCallback"}}
    cfg["parallel"] = {"pipe_step": {"type": "SearchPipeStep"},
                       "search_algorithm": {"type": "SpNasP", "max_sample": 2}}
    cfg["fully_train"] = {"pipe_step": {"type": "TrainPipeStep"}, "trainer": {"epochs": 1}}
    if steps is not None:
        cfg["pipeline"] = steps
    return cfg


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "spnas.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_full_pipeline_outputs(digits_root: Path, cls_root: Path, tmp_path: Path, capsys) -> None:
    path = _write(tmp_path, spnas_config(digits_root, cls_root, fully_train_baseline=True))
    out = tmp_path / "run"
    assert main(["-q", "run", str(path), "--out", str(out)]) == 0
    store = RecordStore(out / "records.sqlite")
    serial = store.records("serial")
    children = [r for r in serial if not is_root(r)]
    assert len(children) == 3
    by_id = {r.id: r for r in serial}
    for child in children:  # every mutated code is valid and differs from its parent
        assert child.status == "done"
        parent = by_id[child.parent_id]
        assert SerialCode.parse(child.genotype) != SerialCode.parse(parent.genotype)
        assert child.extra["inherited"] > 0
    for step in ("fine_tune", "serial", "reignition", "parallel"):
        rows = list(csv.DictReader((out / "output" / step / "pareto.csv").open()))
        assert rows, step
        for row in rows:
            desc = json.loads((out / "output" / step / f"desc_{row['id']}.json").read_text())
            assert desc["genotype"] == row["genotype"]
            assert Path(desc["weights_path"]).is_file()
    assert len(store.records("reignition", status="done")) == 1
    parallel = [r for r in store.records("parallel") if not is_root(r)]
    assert len(parallel) == 2 and all("|" in r.genotype for r in parallel)
    result = json.loads((out / "result.json").read_text())
    # the winner's lineage runs across steps back to the fine-tuned start
    chain = lineage(store, result["record"])
    assert chain[0].step == "fine_tune" and chain[-1].step == "fully_train"
    assert {"serial", "parallel"} <= {r.step for r in chain}
    # fully_train_baseline: the start trained from its fine_tune weights for the winner's
    # detection epochs since fine_tune (1 per trained serial / parallel candidate on its
    # lineage) plus fully_train's 1; it is the baseline of result.json and of the verdict
    start = store.records("fine_tune", status="done")[0]
    if result["winner"] != start.genotype:
        searched = [r for r in chain if r.step in ("serial", "parallel") and not is_root(r)]
        base = next(r for r in store.records("fully_train") if r.genotype == start.genotype)
        assert base.status == "done" and base.parent_id == start.id
        assert base.extra["payload"]["epochs"] == 1 + len(searched)
        assert base.extra["payload"]["parent_weights"] == start.weights_path
        assert result["baseline"]["genotype"] == start.genotype
        assert "winner's budget" in result["baseline_note"]
        assert "verdict: " in capsys.readouterr().out
    else:  # the search kept the start: nothing to compare it with
        assert [r.genotype for r in store.records("fully_train")] == [start.genotype]
    final = nasdet.load_model(result["model"])
    assert final.categories == [str(d) for d in range(10)]
    html = (out / "report.html").read_text()
    assert result["winner"].split("|")[0] in html and 'class="plotly-graph-div"' in html

    # a new run starts its parallel step from this run's serial output (the seed's models_folder)
    cfg2 = spnas_config(digits_root, cls_root, steps=["parallel"])
    cfg2["parallel"]["models_folder"] = str(out / "output" / "serial")
    cfg2["parallel"]["search_algorithm"]["max_sample"] = 1
    out2 = tmp_path / "run2"
    (tmp_path / "second").mkdir()
    assert main(["-q", "run", str(_write(tmp_path / "second", cfg2)), "--out", str(out2)]) == 0
    store2 = RecordStore(out2 / "records.sqlite")
    serial_front = list(csv.DictReader((out / "output" / "serial" / "pareto.csv").open()))
    assert sorted(r.genotype for r in store2.records("imported")) == sorted(
        row["genotype"] for row in serial_front
    )
    assert [r.status for r in store2.records("parallel") if not is_root(r)] == ["done"]
    cfg2["parallel"]["models_folder"] = str(tmp_path)  # no desc files there
    path3 = _write(tmp_path / "second", cfg2)
    assert main(["-q", "run", str(path3), "--out", str(tmp_path / "run3")]) == 2


def test_resume_after_kill_loses_and_repeats_nothing(
    digits_root: Path, cls_root: Path, tmp_path: Path, monkeypatch
) -> None:
    from nasdet.methods.spnas import candidate
    from nasdet.methods.spnas import steps as spnas

    cfg = spnas_config(digits_root, cls_root, serial_samples=3, steps=["fine_tune", "serial"])
    run = load_run_config(_write(tmp_path, cfg))
    calls: Counter[str] = Counter()
    real = candidate.evaluate_candidate

    def counting(payload: dict) -> dict:
        code = payload["architecture"]["backbone"]["code"]
        calls[code] += 1
        if sum(calls.values()) == 3:  # killed while training the second serial child
            raise KeyboardInterrupt
        return real(payload)

    monkeypatch.setattr(spnas, "evaluate_candidate", counting)
    from nasdet.pipeline import run_pipeline

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(run, tmp_path / "run")
    store = RecordStore(tmp_path / "run" / "records.sqlite")
    assert [r.status for r in store.records("serial")] == ["done", "done", "running"]
    run_pipeline(run, tmp_path / "run")
    records = store.records("serial")
    assert [r.status for r in records] == ["done"] * 4
    # the killed candidate ran twice; nothing that had finished ran again
    interrupted = records[2].genotype
    assert calls[interrupted] == 2
    assert all(n == 1 for g, n in calls.items() if g != interrupted)
    assert len(store.records("fine_tune", status="done")) == 1


def test_serial_step_on_ray_with_two_workers(
    digits_root: Path, cls_root: Path, tmp_path: Path
) -> None:
    cfg = spnas_config(digits_root, cls_root, serial_samples=2, steps=["fine_tune", "serial"],
                       executor="ray", workers=2)
    out = tmp_path / "run"
    assert main(["-q", "run", str(_write(tmp_path, cfg)), "--out", str(out)]) == 0
    store = RecordStore(out / "records.sqlite")
    children = [r for r in store.records("serial") if not is_root(r)]
    assert [r.status for r in children] == ["done", "done"]
    # with 2 workers both candidates were in flight at once: the second was claimed before
    # the first finished (with 1 worker it is claimed after). Which Ray worker process ran a
    # candidate is not recorded: the driver claims every candidate, so `worker` names it.
    assert max(r.started_at for r in children) < min(r.finished_at for r in children)
    assert len({r.worker for r in children}) == 1
    assert all(Path(r.weights_path).is_file() for r in children)
