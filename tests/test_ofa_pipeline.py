"""`nasdet run` with an OFA config end to end on tiny data: the three steps, the exported
subnet, config errors with the seed's keys, the once-for-all converter, DDP supernet training."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from _torchrun import run_torchrun
from conftest import tiny_config
from test_ofa_nets import _ofa_mbv3_w1_state

import nasdet
from nasdet.cli import main
from nasdet.errors import ConfigError
from nasdet.methods import load_run_config
from nasdet.methods.ofa.space import OFAGenotype
from nasdet.search.records import RecordStore

SCHEDULE = {
    "kernel_choice": {"boundary": [1, 2], "value": [[7], [7, 5, 3]]},
    "expand_choice": {"boundary": [1, 2], "value": [[6], [6, 4, 3]]},
    "depth_choice": {"boundary": [1, 2], "value": [[4], [4, 3, 2]]},
}


def ofa_config(digits_root: Path, **search: object) -> dict:
    cfg = tiny_config(digits_root, epochs=1)
    cfg["method"] = "ofa"
    cfg["model"] = {
        "detector": "ssdlite",
        "backbone": {"name": "ofa_supernet", "width_mult": 0.25, "levels": [4, 5]},
        "ssd_extra_channels": [32],
        "min_size": 64,
        "max_size": 64,
    }
    cfg["supernet_train"] = {
        "epochs": 2,
        "search_space_cfg": {"schedule_cfg": copy.deepcopy(SCHEDULE)},
        "evaluator_cfg": {"batch_size": 8, "data_portion": [0.0, 0.75, 0.25]},
        "num_random": 1,
    }
    cfg["search"] = {
        "trainer_cfg": {"num_epochs": 1, "parallelism": 1},
        "population_size": 4,
        "calibrate_samples": 8,
        **search,
    }
    cfg["final_train"] = {"final_trainer_cfg": {"epochs": 1}, "baseline": "uniform"}
    return cfg


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "ofa.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ofa_pipeline_end_to_end(digits_root: Path, tmp_path: Path) -> None:
    cfg = ofa_config(digits_root, constraints={"max_flops": 40e6})
    out = tmp_path / "run"
    assert main(["-q", "run", str(_write(tmp_path, cfg)), "--out", str(out)]) == 0
    store = RecordStore(out / "records.sqlite")
    assert [r.status for r in store.records("supernet_train")] == ["done"]
    scored = store.records("search", status="done")
    assert len(scored) == 4 + 1 * 3  # the population, then one generation's children
    assert all(r.cost["flops"] <= 40e6 for r in scored)
    finals = {r.extra["role"]: r for r in store.records("final_train")}
    assert set(finals) == {"searched", "baseline"}
    assert finals["baseline"].genotype == str(
        OFAGenotype(ks=(3,) * 20, e=(4,) * 20, d=(3,) * 5).canonical()
    )
    result = json.loads((out / "result.json").read_text())
    model = nasdet.load_model(out / "model.pt")  # the subnet loads without the supernet
    assert type(model.backbone.body).__name__ == "OFASubnetBackbone"
    assert result["metrics"]["mAP"] == finals["searched"].metrics["mAP"]
    best = json.loads((out / "output" / "search" / "best_subnet.json").read_text())
    assert set(best) == {"ks", "e", "d"} and len(best["ks"]) == 20


def test_schedule_errors_are_one_line(digits_root: Path, tmp_path: Path) -> None:
    cfg = ofa_config(digits_root)
    cfg["supernet_train"]["search_space_cfg"]["schedule_cfg"]["kernel_choice"] = {
        "boundary": [2, 81],
        "value": [[7], [7, 5, 3]],
    }
    with pytest.raises(ConfigError, match=r"kernel_choice\.boundary: must start at epoch 1") as e:
        load_run_config(_write(tmp_path, cfg))
    assert "\n" not in str(e.value)
    cfg = ofa_config(digits_root)
    cfg["supernet_train"]["search_space_cfg"]["schedule_cfg"]["kernel_choice"]["value"] = [[9]]
    cfg["supernet_train"]["search_space_cfg"]["schedule_cfg"]["kernel_choice"]["boundary"] = [1]
    with pytest.raises(ConfigError, match="kernel_choice.value") as e:
        load_run_config(_write(tmp_path, cfg))
    assert "\n" not in str(e.value)


def test_mepa_scheduler_forms(digits_root: Path, tmp_path: Path) -> None:
    """aw_nas's own OFA example (``{type: CosineAnnealingLR, T_max: 80, eta_min: 0.0}``) and the
    warm-restarts form with ``T_mult``/``eta_min`` map onto the supernet step's schedule."""
    from nasdet.methods.ofa.steps import supernet_config

    def train(**sched: object):  # noqa: ANN202
        cfg = ofa_config(digits_root)
        cfg["supernet_train"]["evaluator_cfg"]["mepa_scheduler"] = sched
        return supernet_config(load_run_config(_write(tmp_path, cfg))).train

    t = train(type="CosineAnnealingLR", T_max=80, eta_min=0.0)
    assert (t.schedule, t.cosine_epochs, t.min_lr, t.restart_epochs) == ("cosine", 80, 0.0, None)
    t = train(type="CosineAnnealingWarmRestarts", T_mult=2, eta_min=0.001)
    assert (t.schedule, t.restart_epochs, t.restart_mult, t.min_lr) == (
        "cosine_restarts", 1, 2, 0.001)  # T_0: the schedule's phase interval (1 epoch)  # fmt: skip
    assert train().schedule == "cosine_restarts" and train().min_lr == 0.0
    # the scheduler's new keys at their defaults leave the resume fingerprint as it was
    from nasdet.training import config_fingerprint

    plain = config_fingerprint(load_run_config(_write(tmp_path, ofa_config(digits_root))))
    assert "eta_min" not in plain and "T_max" not in plain
    for sched, msg in (
        ({"type": "CosineAnnealingLR", "T_0": 5}, "T_0 is for CosineAnnealingWarmRestarts"),
        ({"T_max": 5}, "T_max is for CosineAnnealingLR"),
        ({"type": "StepLR"}, "mepa_scheduler.type"),
        ({"eta_min": 1.0}, r"eta_min \(1.0\) must be below mepa_optimizer.lr"),
    ):
        with pytest.raises(ConfigError, match=msg) as e:
            train(**sched)
        assert "\n" not in str(e.value) and "mepa_scheduler" in str(e.value)


def test_data_portion_sets_the_search_split(digits_root: Path, tmp_path: Path) -> None:
    cfg = load_run_config(_write(tmp_path, ofa_config(digits_root)))
    assert cfg.data.search_fraction == 0.25
    bad = ofa_config(digits_root)
    bad["data"]["search_fraction"] = 0.1
    with pytest.raises(ConfigError, match="data_portion"):
        load_run_config(_write(tmp_path, bad))
    bad = ofa_config(digits_root)
    bad["supernet_train"]["evaluator_cfg"]["data_portion"] = [0.1, 0.8, 0.1]
    with pytest.raises(ConfigError, match="data_portion"):
        load_run_config(_write(tmp_path, bad))


def test_final_train_from_a_pasted_ofa_genotype_needs_no_search(
    digits_root: Path, tmp_path: Path
) -> None:
    g = {"ks": [3, 5, 7, 3] * 5, "e": [3, 4, 6, 4] * 5, "d": [2, 3, 4, 2, 3]}
    cfg = ofa_config(digits_root)
    cfg["pipeline"] = ["final_train"]
    cfg["final_train"] = {
        "final_model_cfg": {"backbone_cfg": {"genotypes": g}},
        "final_trainer_cfg": {"epochs": 1, "freeze_base_net": True, "base_net_lr": 0.0},
        "baseline": None,
    }
    out = tmp_path / "run"
    assert main(["-q", "run", str(_write(tmp_path, cfg)), "--out", str(out)]) == 0
    (rec,) = RecordStore(out / "records.sqlite").records("final_train")
    assert rec.genotype == str(OFAGenotype.from_dict(g).canonical())


def test_convert_ofa_checkpoint_then_export(tmp_path: Path) -> None:
    ckpt = tmp_path / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save({"state_dict": _ofa_mbv3_w1_state(older_naming=False)}, ckpt)
    supernet = tmp_path / "supernet.pt"
    args = ["-q", "convert", "ofa-mbv3", str(ckpt), "--out", str(supernet), "--min-size", "64"]
    assert main(args) == 0
    genotype = '{"ks": [3, 5, 7, 3] * 5}'  # not valid JSON: a one-line error, exit 2
    assert main(["-q", "export", str(supernet), "--genotype", genotype, "--out", "x"]) == 2
    g = json.dumps({"ks": [5] * 20, "e": [4] * 20, "d": [3] * 5})
    sub = tmp_path / "sub.pt"
    assert main(["-q", "export", str(supernet), "--genotype", g, "--out", str(sub)]) == 0
    model = nasdet.load_model(sub)
    body = model.backbone.body
    assert type(body).__name__ == "OFASubnetBackbone"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    w = state["blocks.1.conv.point_linear.conv.conv.weight"]  # stage 1 block 0, projection
    mine = body.state_dict()["blocks.1.conv.point_linear.conv.weight"]
    assert torch.equal(mine, w[:, : mine.shape[1]])


def test_supernet_train_under_torchrun(digits_root: Path, tmp_path: Path) -> None:
    """DDP with 2 CPU processes (gloo): progressive shrinking with the sandwich rule runs, every
    rank trains the same subnets (else DDP's all-reduce would mismatch), one supernet is written;
    the search is refused under torchrun."""
    cfg = ofa_config(digits_root)
    path = _write(tmp_path, cfg)
    out = tmp_path / "run"
    # every rank: `nasdet run` of all the steps is refused, then `--steps supernet_train` runs
    script = Path(__file__).with_name("_refused_then_run.py")
    args = [str(script), "supernet_train", "-q", "run", str(path), "--out", str(out)]
    proc = run_torchrun(args, tmp_path)
    assert proc.returncode == 0, proc.report()
    for err in proc.stderr:
        assert "nasdet: error: under torchrun only supernet_train runs" in err, proc.report()
        assert "refused: exit status 2" in err, proc.report()
    store = RecordStore(out / "records.sqlite")
    assert [r.status for r in store.records("supernet_train")] == ["done"]
    supernet = nasdet.load_model(out / "output" / "supernet_train" / "supernet.pth")
    assert type(supernet.backbone.body).__name__ == "OFAMobileNetV3Supernet"
    checkpoint = torch.load(out / "output" / "supernet_train" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
