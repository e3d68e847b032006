"""``nasdet compare``: paired statistics, identical budgets, resume, dataset checks, and the
command end to end on two tiny architectures x two seeds."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_config
from scipy import stats as scipy_stats
from torch import nn

from nasdet.cli import main
from nasdet.compare.inputs import make_plan, parse_seeds
from nasdet.compare.run import STEP, TRAIN_LOG
from nasdet.compare.stats import paired_difference, spread
from nasdet.errors import ConfigError, DataError
from nasdet.models.io import save_model
from nasdet.search.records import RECORDS_FILENAME, RecordStore

A = [0.412, 0.398, 0.405, 0.421]
B = [0.401, 0.399, 0.392, 0.409]
SEEDS = [0, 1, 2, 3]


def test_spread_is_mean_and_sample_std() -> None:
    s = spread(A)
    assert s.mean == pytest.approx(np.mean(A), abs=1e-15)
    assert s.std == pytest.approx(np.std(A, ddof=1), abs=1e-15)
    assert s.n == 4
    one = spread([0.5])
    assert (one.mean, one.std, one.n) == (0.5, None, 1)


def test_paired_difference_matches_scipy() -> None:
    d = paired_difference(A, B, SEEDS)
    direct = scipy_stats.ttest_rel(A, B)
    diffs = np.subtract(A, B)
    assert d.seeds == SEEDS
    assert d.mean == pytest.approx(diffs.mean(), abs=1e-15)
    assert d.std == pytest.approx(diffs.std(ddof=1), abs=1e-15)
    assert d.t == pytest.approx(direct.statistic, rel=1e-12)
    assert d.p == pytest.approx(direct.pvalue, rel=1e-12)
    # by hand: t = mean / (std / sqrt(n))
    assert d.t == pytest.approx(diffs.mean() / (diffs.std(ddof=1) / math.sqrt(4)), rel=1e-12)
    swapped = paired_difference(B, A, SEEDS)
    assert swapped.mean == pytest.approx(-d.mean) and swapped.t == pytest.approx(-d.t)
    assert swapped.p == pytest.approx(d.p)


def test_paired_difference_undefined_cases_are_none() -> None:
    one = paired_difference([0.4], [0.3], [7])
    assert one.mean == pytest.approx(0.1) and (one.std, one.t, one.p) == (None, None, None)
    same = paired_difference([0.5, 0.75], [0.25, 0.5], [0, 1])  # exact: no spread at all
    assert (same.mean, same.std, same.t, same.p) == (0.25, 0.0, None, None)
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.1], [0, 1])


# -- inputs: identical budgets, one dataset ---------------------------------------------------


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _configs(tmp: Path, digits_root: Path, **b_train: object) -> tuple[Path, Path]:
    a = tiny_config(digits_root, epochs=1)
    b = tiny_config(digits_root, **{"epochs": 1, **b_train})
    b["model"]["fcos_num_convs"] = 1  # another architecture
    return _write(tmp / "a.yaml", a), _write(tmp / "b.yaml", b)


def test_budgets_that_differ_are_refused_naming_the_keys(tmp_path: Path, digits_root: Path) -> None:
    a, b = _configs(tmp_path, digits_root, epochs=2, lr=0.01)
    with pytest.raises(ConfigError, match=r"train\.epochs, train\.lr") as err:
        make_plan([str(a), str(b)], [0])
    assert "--budget" in str(err.value) and "\n" not in str(err.value)


def test_an_explicit_budget_wins_and_lists_what_it_replaced(
    tmp_path: Path, digits_root: Path
) -> None:
    a, b = _configs(tmp_path, digits_root, epochs=2)
    plan = make_plan([str(a), f"two={b}"], [0, 1], budget_path=a)
    assert [x.label for x in plan.architectures] == ["a", "two"]
    assert plan.architectures[0].overridden == []
    assert plan.architectures[1].overridden == ["train.epochs"]
    cfg = plan.config_for(plan.architectures[1], 1)
    assert (cfg.train.epochs, cfg.seed, cfg.model.fcos_num_convs) == (1, 1, 1)


def test_input_size_is_part_of_the_budget(tmp_path: Path, digits_root: Path) -> None:
    a, b = _configs(tmp_path, digits_root)
    raw = yaml.safe_load(b.read_text())
    raw["model"]["min_size"] = raw["model"]["max_size"] = 64
    _write(b, raw)
    with pytest.raises(ConfigError, match=r"model\.max_size, model\.min_size"):
        make_plan([str(a), str(b)], [0])
    plan = make_plan([str(a), str(b)], [0], budget_path=a)
    assert plan.architectures[1].model["min_size"] == 96


def test_another_dataset_cannot_be_compared(tmp_path: Path, digits_root: Path) -> None:
    a, b = _configs(tmp_path, digits_root)
    raw = yaml.safe_load(b.read_text())
    raw["data"]["root"] = str(tmp_path / "other-digits")
    _write(b, raw)
    for budget in (None, a):  # --budget or not
        with pytest.raises(DataError, match=r"another dataset .*data\.root"):
            make_plan([str(a), str(b)], [0], budget_path=budget)
    other = save_model(
        tmp_path / "other" / "model.pt",
        nn.Linear(1, 1),
        architecture=tiny_config(digits_root)["model"],
        categories=["cat", "dog"],
        cat_ids=[1, 2],
    )
    with pytest.raises(DataError, match=r"model\.pt: cannot be compared .*other categories"):
        make_plan([str(a), str(other)], [0])


def test_labels_must_be_distinct_and_seeds_parse(tmp_path: Path, digits_root: Path) -> None:
    a, _ = _configs(tmp_path, digits_root)
    with pytest.raises(ConfigError, match="labelled 'a'"):
        make_plan([str(a), str(a)], [0])
    with pytest.raises(ConfigError, match="at least two"):
        make_plan([str(a)], [0])
    assert parse_seeds("3,1", None) == [3, 1] and parse_seeds(None, 2) == [0, 1]
    assert parse_seeds(None, None) == [0, 1, 2]
    for bad in ("1,1", "x"):
        with pytest.raises(ConfigError):
            parse_seeds(bad, None)


# -- the command end to end, resume ------------------------------------------------------------


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> dict:
    """``nasdet compare`` of two tiny FCOS (one config given a label) x seeds 0, 1."""
    tmp = tmp_path_factory.mktemp("compare")
    a, b = _configs(tmp, digits_root)
    out = tmp / "out"
    argv = ["-q", "compare", str(a), f"slim={b}", "--seeds", "0,1", "--out", str(out)]
    assert main(argv) == 0
    return {"out": out, "argv": argv, "a": a, "b": b}


def _finished(out: Path) -> dict[str, float]:
    with RecordStore(out / RECORDS_FILENAME) as store:
        return {r.genotype: r.finished_at for r in store.records(STEP)}


def test_cli_writes_compare_json_and_report(compared: dict) -> None:
    out = compared["out"]
    summary = json.loads((out / "compare.json").read_text())
    assert summary["schema"] == 1 and summary["complete"] and summary["seeds"] == [0, 1]
    assert summary["budget"]["source"] == str(compared["a"])
    assert summary["budget"]["train"]["epochs"] == 1
    archs = {a["label"]: a for a in summary["architectures"]}
    assert list(archs) == ["a", "slim"]
    for arch in archs.values():
        assert [r["status"] for r in arch["runs"]] == ["done", "done"]
        maps = [r["metrics"]["mAP"] for r in arch["runs"]]
        assert arch["metrics"]["mAP"]["mean"] == pytest.approx(np.mean(maps))
        assert arch["metrics"]["mAP"]["std"] == pytest.approx(np.std(maps, ddof=1))
        assert {"AP50", "AP75"} <= set(arch["metrics"])
        assert arch["cost"]["params"] > 0 and arch["cost"]["flops"] > 0
        assert "latency_ms" not in arch["cost"]
        assert Path(arch["runs"][0]["model"]).is_file()
    assert archs["slim"]["cost"]["params"] < archs["a"]["cost"]["params"]
    (pair,) = summary["pairs"]
    assert (pair["a"], pair["b"], pair["metric"], pair["seeds"]) == ("a", "slim", "mAP", [0, 1])
    direct = paired_difference(
        [r["metrics"]["mAP"] for r in archs["a"]["runs"]],
        [r["metrics"]["mAP"] for r in archs["slim"]["runs"]],
        [0, 1],
    )
    assert pair["mean"] == pytest.approx(direct.mean) and pair["t"] == direct.t
    page = (out / "report.html").read_text()
    assert "Paired differences of mAP" in page and "std) vs flops" in page  # a plotly title
    assert page.count('class="plotly-graph-div"') == 2  # against flops and params
    assert "slim" in page and summary["failed"] == []


def test_each_training_has_its_log_and_the_command_logs_to_nasdet_log(compared: dict) -> None:
    """``-q`` keeps INFO off the terminal, not out of the files."""
    out = compared["out"]
    for label in ("a", "slim"):
        for seed in (0, 1):
            text = (out / "runs" / label / f"seed{seed}" / TRAIN_LOG).read_text()
            assert "epoch 1/1  loss" in text and "val mAP" in text, (label, seed)
            assert "trained 1 epochs" in text
    log = (out / "nasdet.log").read_text()
    assert f"[4/4] training slim seed 1 (log: {out / 'runs' / 'slim' / 'seed1' / TRAIN_LOG})" in log
    assert "slim seed 1: mAP" in log


def test_rerun_trains_nothing(compared: dict, capsys: pytest.CaptureFixture) -> None:
    before = _finished(compared["out"])
    assert len(before) == 4
    assert main(compared["argv"]) == 0
    assert _finished(compared["out"]) == before
    assert "trained now: 0" in capsys.readouterr().out


def test_a_killed_training_is_redone(compared: dict, capsys: pytest.CaptureFixture) -> None:
    out = compared["out"]
    before = _finished(out)
    with sqlite3.connect(out / RECORDS_FILENAME) as db:  # as a kill mid-training leaves it
        db.execute(
            "UPDATE records SET status = 'running', finished_at = NULL WHERE genotype = ?",
            ("slim seed=1",),
        )
    assert main(compared["argv"]) == 0
    after = _finished(out)
    assert "trained now: 1" in capsys.readouterr().out
    assert after["slim seed=1"] > before["slim seed=1"]
    assert {k: v for k, v in after.items() if k != "slim seed=1"} == {
        k: v for k, v in before.items() if k != "slim seed=1"
    }


def test_a_resume_with_other_inputs_is_refused(
    compared: dict, capsys: pytest.CaptureFixture
) -> None:
    argv = [*compared["argv"][:-4], "--seeds", "0,1,2", "--out", str(compared["out"])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "started with other inputs (seeds changed)" in err and "\n" not in err


def test_a_model_file_is_an_architecture(compared: dict) -> None:
    model = compared["out"] / "runs" / "slim" / "seed0" / "model.pt"
    plan = make_plan([str(compared["a"]), str(model)], [0])
    arch = plan.architectures[1]
    assert (arch.label, arch.kind) == ("seed0", "model file")
    assert arch.model == plan.config_for(arch, 0).model.model_dump(mode="json")
    assert arch.model["fcos_num_convs"] == 1


def test_a_failed_training_exits_1_without_verdict(
    tmp_path: Path, digits_root: Path, capsys: pytest.CaptureFixture
) -> None:
    a, b = _configs(tmp_path, digits_root)
    raw = yaml.safe_load(b.read_text())
    raw["model"]["fpn_channels"] = 16  # FCOS's GroupNorm(32) refuses it when the model is built
    _write(b, raw)
    out = tmp_path / "out"
    assert main(["-q", "compare", str(a), str(b), "--num-seeds", "1", "--out", str(out)]) == 1
    assert "1 training(s) failed (b seed 0); no verdict" in capsys.readouterr().err
    summary = json.loads((out / "compare.json").read_text())
    assert summary["pairs"] == [] and not summary["complete"]
    assert summary["failed"][0]["label"] == "b" and "GroupNorm" in summary["failed"][0]["error"]
    text = (out / "runs" / "b" / "seed0" / TRAIN_LOG).read_text()
    assert "failed: ValueError" in text and "Traceback" in text and "GroupNorm" in text


# -- on Ray workers ----------------------------------------------------------------------------


def test_ray_workers_train_at_once_and_failures_are_recorded(
    ray_local: object, tmp_path: Path, digits_root: Path, capsys: pytest.CaptureFixture
) -> None:
    """Two Ray workers: two trainings run at the same time (the second is claimed before the
    first is committed), the driver alone commits each result, and a training that fails on a
    worker is that record's failure with the worker's error: exit 1, no verdict."""
    a, b = _configs(tmp_path, digits_root)
    raw = yaml.safe_load(b.read_text())
    raw["model"]["fpn_channels"] = 16  # GroupNorm(32) refuses it on the worker
    _write(b, raw)
    out = tmp_path / "out"
    argv = ["-q", "compare", str(a), str(b), "--seeds", "0,1", "--out", str(out),
            "--executor", "ray", "--workers", "2"]  # fmt: skip
    assert main(argv) == 1
    assert "2 training(s) failed (b seed 0, b seed 1); no verdict" in capsys.readouterr().err
    with RecordStore(out / RECORDS_FILENAME) as store:
        recs = {r.genotype: r for r in store.records(STEP)}
    assert {k: r.status for k, r in recs.items()} == {
        "a seed=0": "done", "a seed=1": "done", "b seed=0": "failed", "b seed=1": "failed"
    }  # fmt: skip
    assert "GroupNorm" in recs["b seed=0"].error and "Traceback" in recs["b seed=0"].extra[
        "traceback"]  # fmt: skip
    first, second = sorted((recs["a seed=0"], recs["a seed=1"]), key=lambda r: r.started_at)
    assert second.started_at < first.finished_at  # both were in flight at once
    for seed in (0, 1):
        assert Path(recs[f"a seed={seed}"].weights_path).is_file()
        assert recs[f"a seed={seed}"].metrics["mAP"] >= 0
        text = (out / "runs" / "a" / f"seed{seed}" / TRAIN_LOG).read_text()  # from the worker
        assert "epoch 1/1  loss" in text and "val mAP" in text
        text = (out / "runs" / "b" / f"seed{seed}" / TRAIN_LOG).read_text()
        assert "failed: " in text and "GroupNorm" in text
    summary = json.loads((out / "compare.json").read_text())
    assert summary["pairs"] == [] and [f["label"] for f in summary["failed"]] == ["b", "b"]


def test_executor_flags_without_ray_are_refused(
    tmp_path: Path, digits_root: Path, capsys: pytest.CaptureFixture
) -> None:
    a, b = _configs(tmp_path, digits_root)
    out = tmp_path / "out"
    assert main(["-q", "compare", str(a), str(b), "--out", str(out), "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--workers, --address and --gpus-per-worker need --executor ray" in err
    assert "\n" not in err and not out.exists()
