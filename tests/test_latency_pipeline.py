"""`nasdet run` with a latency config end to end on tiny data: baseline → pretrain → search →
tune, the result meeting the target, the infeasible-target error, resolution sampling,
multiresolution pretrain with search_with_resolution, tune from indices against ss_checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from nasdet.cli import main
from nasdet.errors import ConfigError
from nasdet.methods import load_run_config
from nasdet.methods.latency.common import set_resolution
from nasdet.methods.latency.steps import extracted_weights, resolution_for_step, tune_start
from nasdet.models.io import read_model_file, read_weights
from nasdet.pipeline import run_pipeline
from nasdet.search.records import RecordStore

# the tiny space at 64 px: baseline 3.604 MMAC, minimum 1.553 MMAC (every block cheapest)
TARGET = 3.0


def latency_config(digits_root: Path, **steps: object) -> dict:
    cfg = tiny_config(digits_root, epochs=1)
    cfg["method"] = "latency"
    cfg["model"] = {
        "detector": "ssdlite",
        "backbone": {"name": "mobilenet_v2", "width_mult": 0.25, "levels": [4, 5]},
        "ssd_extra_channels": [32],
        "min_size": 64,
        "max_size": 64,
    }
    cfg["latency"] = "mmac"
    cfg.update(steps)
    return cfg


def _write(tmp_path: Path, cfg: dict, name: str = "latency.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def run_dir(digits_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("latency")
    cfg = latency_config(
        digits_root,
        baseline={},
        pretrain={},
        search={"target_latency": TARGET, "epochs": 1, "max_extra_epochs": 2},
        tune={},
    )
    out = tmp / "run"
    assert main(["-q", "run", str(_write(tmp, cfg)), "--out", str(out)]) == 0
    return out


def test_pipeline_meets_the_target(run_dir: Path) -> None:
    result = json.loads((run_dir / "result.json").read_text())
    store = RecordStore(run_dir / "records.sqlite")
    tuned = store.records("tune", status="done")
    assert len(tuned) == 1 and result["record"] == tuned[0].id
    assert result["cost"]["latency_lut"] <= TARGET
    searched = store.records("search", status="done")
    assert searched[0].extra["role"] == "baseline"  # variant 0 evaluated first
    assert searched[0].extra["arch"] == [0] * 16
    assert searched[0].cost["latency_lut"] == pytest.approx(3.604, abs=1e-3)
    lut = json.loads((run_dir / "output" / "lut.json").read_text())
    assert set(lut["tables"]) == {"mmac@64"}
    meta = read_model_file(run_dir / "output" / "search" / "search_space.pt")["meta"]
    assert isinstance(meta["searched_arch"], list) and meta["resolution"] == 64
    assert tuned[0].extra["arch"] == meta["searched_arch"]
    assert store.records("baseline", status="done")[0].metrics["mAP"] >= 0
    rows = json.loads((run_dir / "output" / "search" / "choices.json").read_text())
    assert [r["variant"] for r in rows] == meta["searched_arch"]
    assert all(r["width"] == 0.0 for r in rows if r["variant"] == 6)  # skip


def test_tune_from_indices_equals_tune_from_ss_checkpoint(
    run_dir: Path, digits_root: Path, tmp_path: Path
) -> None:
    ss = run_dir / "output" / "search" / "search_space.pt"
    arch = read_model_file(ss)["meta"]["searched_arch"]
    weights = []
    for i, tune in enumerate(({"ss_checkpoint": str(ss)},
                              {"ss_checkpoint": str(ss), "searched_arch": arch})):  # fmt: skip
        cfg = load_run_config(_write(tmp_path, latency_config(digits_root, tune=tune), f"{i}.yml"))
        got, res, space_path = tune_start(cfg, tmp_path / "empty")
        assert got.to_list() == arch and res == 64 and space_path == ss
        weights.append(extracted_weights(cfg, space_path, got))
    a, b = weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the run's own tune started from these weights
    init = read_weights(run_dir / "output" / "tune" / "init_from_space.pt")
    assert all(torch.equal(init[k], a[k]) for k in a)
    bad = latency_config(digits_root, tune={"ss_checkpoint": str(ss), "searched_arch": [9] * 16})
    with pytest.raises(ConfigError, match="tune.searched_arch: .*block 0 has variants 0..5"):
        tune_start(load_run_config(_write(tmp_path, bad, "bad.yml")), tmp_path / "empty")


def test_infeasible_target_is_one_line(digits_root: Path, tmp_path: Path) -> None:
    cfg = latency_config(digits_root, pretrain={}, search={"target_latency": 1.0})
    path = _write(tmp_path, cfg)
    with pytest.raises(ConfigError, match=r"search.target_latency: 1 MMAC is below the space's "
                       r"minimum 1.553 MMAC") as e:  # fmt: skip
        run_pipeline(load_run_config(path), tmp_path / "run")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "output" / "pretrain").exists()  # before any training


def test_resolution_sampling(digits_root: Path, tmp_path: Path) -> None:
    sizes = [64, 96, 128]
    drawn = [resolution_for_step(0, i, sizes) for i in range(60)]
    assert set(drawn) == set(sizes)
    assert drawn == [resolution_for_step(0, i, sizes) for i in range(60)]  # resumable
    from nasdet.build import build_detector
    from nasdet.methods.latency.config import Model

    model = build_detector(Model.model_validate(latency_config(digits_root)["model"]), 11)
    set_resolution(model, 96)
    images, _ = model.transform([torch.rand(3, 50, 70)])
    assert images.tensors.shape[-2:] == (96, 96)
    bad = latency_config(digits_root, multiresolution_pretrain={"resolution_range": [64, 100]})
    with pytest.raises(ConfigError, match="multiresolution_pretrain.resolution_range"):
        load_run_config(_write(tmp_path, bad))


def test_multiresolution_pretrain_with_distillation_and_search_with_resolution(
    run_dir: Path, digits_root: Path, tmp_path: Path
) -> None:
    cfg = latency_config(
        digits_root,
        multiresolution_pretrain={
            "baseline_ckpt": str(run_dir / "output" / "baseline" / "model.pt"),
            "resolution_range": [64, 96],
            "distill": True,
        },
        search_with_resolution={
            "target_latency": 5.0, "epochs": 1, "resolution_range": [64, 96],
            "resolution_tolerance": 0.0,
        },
    )  # fmt: skip
    out = tmp_path / "run"
    assert main(["-q", "run", str(_write(tmp_path, cfg)), "--out", str(out)]) == 0
    store = RecordStore(out / "records.sqlite")
    recs = store.records("search_with_resolution", status="done")
    assert {r.extra["resolution"] for r in recs} == {64, 96}
    result = json.loads((out / "result.json").read_text())
    assert result["cost"]["latency_lut"] <= 5.0
    assert set(json.loads((out / "output" / "lut.json").read_text())["tables"]) == {
        "mmac@64",
        "mmac@96",
    }


def _records(out: Path) -> list[tuple]:
    store = RecordStore(out / "records.sqlite")
    return [(r.step, r.genotype, r.status, r.metrics, r.cost) for r in store.records()]


def test_search_falls_back_and_resumes_exactly_after_a_kill(
    run_dir: Path, digits_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a latency loss the argmax misses a tight target: after the extra epoch (the
    weight doubled, still 0) the search returns a feasible architecture and says how. Killed
    while scoring the second epoch's argmax (its logits not yet checkpointed), the search redoes
    that epoch from the first epoch's checkpoint and ends as the uninterrupted one."""
    from nasdet.methods.latency import search as search_mod

    space = run_dir / "output" / "pretrain" / "search_space.pt"
    search = {"target_latency": 1.6, "latency_loss_weight": 0.0, "max_extra_epochs": 1,
              "space_checkpoint": str(space)}  # fmt: skip
    path = _write(tmp_path, latency_config(digits_root, search=search))
    ref = tmp_path / "ref"
    result = run_pipeline(load_run_config(path), ref)
    assert result.final is not None and result.final.cost["latency_lut"] <= 1.6
    meta = read_model_file(ref / "output" / "search" / "search_space.pt")["meta"]
    assert meta["searched_arch"] == result.final.extra["arch"]
    assert "misses the target" in meta["how"]
    state = torch.load(ref / "output" / "search" / "search_state.pt", weights_only=True)
    assert state["epoch"] == 2  # one extra epoch was run

    score = search_mod._Scorer.__call__

    def killed(self, arch, role):  # noqa: ANN001, ANN202
        if role == "argmax epoch 2":
            raise KeyboardInterrupt
        return score(self, arch, role)

    monkeypatch.setattr(search_mod._Scorer, "__call__", killed)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_run_config(path), tmp_path / "killed")
    monkeypatch.setattr(search_mod._Scorer, "__call__", score)
    run_pipeline(load_run_config(path), tmp_path / "killed")
    assert _records(tmp_path / "killed") == _records(ref)


def test_searched_arch_option_sets_tune_and_counts_as_config(
    run_dir: Path, digits_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``nasdet run --searched-arch "[...]"`` tunes that architecture; a rerun with another one
    is a changed config (refused), the same one resumes; mistakes are one line naming it."""
    ss = run_dir / "output" / "search" / "search_space.pt"
    searched = read_model_file(ss)["meta"]["searched_arch"]
    other = [1 if searched[0] != 1 else 2, *searched[1:]]
    path = _write(tmp_path, latency_config(digits_root, tune={"ss_checkpoint": str(ss)}))
    out = tmp_path / "run"

    def run(arch: str, *extra: str, config: Path = path) -> int:
        return main(["-q", "run", str(config), "--out", str(out), "--searched-arch", arch, *extra])

    assert run(json.dumps(other)) == 0
    tuned = RecordStore(out / "records.sqlite").records("tune", status="done")
    assert [r.extra["arch"] for r in tuned] == [other]
    assert yaml.safe_load((out / "config.yaml").read_text())["tune"]["searched_arch"] == other
    capsys.readouterr()
    assert run(json.dumps(other)) == 0  # the same flag: resumes, nothing redone
    assert len(RecordStore(out / "records.sqlite").records("tune")) == 1
    assert run(json.dumps(searched)) == 2  # another architecture: the config changed
    assert "tune.searched_arch changed" in capsys.readouterr().err

    not_latency = tmp_path / "spnas.yaml"
    not_latency.write_text(yaml.safe_dump(tiny_config(digits_root, epochs=1)))
    bad = {
        "[0, x]": re.escape("--searched-arch: architecture '[0, x]' is not a list of ints"),
        json.dumps([9] * 16): "--searched-arch: .*block 0 has variants 0..5",
    }
    for arch, message in bad.items():
        assert run(arch) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and err.count("\n") == 1, err
    assert run("[0]", config=not_latency) == 2
    assert "--searched-arch is for method: latency runs" in capsys.readouterr().err
    pretrain_only = _write(tmp_path, latency_config(digits_root, pretrain={}), "p.yaml")
    assert run(json.dumps(searched), "--steps", "pretrain", config=pretrain_only) == 2
    assert "have no tune — add tune to --steps" in capsys.readouterr().err


def test_report_compares_baseline_and_searched_with_choices_and_plot(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    section = page[page.index('id="method-0"') : page.index('id="step-0"')]
    assert "Latency search: baseline vs searched" in section
    summary = page[page.index('id="summary"') : page.index('id="method-0"')]
    assert "3.604 MMAC" in summary and not re.search(r"\d ms", page)  # the LUT's unit, not ms
    comparison, blocks = section.split("<table>")[1:3]
    assert "baseline step (train)" in comparison and "tune (train)" in comparison
    for header in ("resolution (px)", "mAP", "LUT cost (MMAC)", "vs baseline", "params"):
        assert f"<th>{header}</th>" in comparison
    assert "<td>[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]</td>" in comparison
    assert '<td class="num">64</td>' in comparison and "3.6043" in comparison
    rows = json.loads((run_dir / "output" / "search" / "choices.json").read_text())
    assert blocks.count("<tr") == 1 + len(rows) == 17
    assert "baseline block (MMAC)" in blocks
    plot = '"text":"architectures visited by the search at 64 px"'  # a plotly figure's title
    assert plot in section and 'class="plotly-graph-div"' in section
    # nasdet report RUN_DIR writes the same page again, the method's sections included
    from nasdet.report.run import regenerate_report

    def strip(text: str) -> str:
        return re.sub(r"written [0-9: -]+", "", text)

    (run_dir / "report.html").unlink()
    assert strip(regenerate_report(run_dir).read_text()) == strip(page)
