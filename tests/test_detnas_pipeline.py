"""`nasdet run` with a DetNAS config end to end on tiny data: steps, export/reload equality,
constraints (feasible and impossible), resume after a kill, config errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from _torchrun import run_torchrun
from conftest import tiny_config, tiny_supernet_model

import nasdet
from nasdet.cli import main
from nasdet.data import make_digits_classification
from nasdet.errors import ConfigError
from nasdet.methods import load_run_config
from nasdet.methods.detnas import steps as detnas
from nasdet.methods.detnas.config import DetNASRunConfig
from nasdet.methods.detnas.scoring import load_supernet
from nasdet.methods.detnas.space import ShuffleNetCode
from nasdet.search.records import RecordStore

LOSE_RANK = Path(__file__).with_name("_lose_rank.py")


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    return make_digits_classification(root, per_class_train=4, per_class_val=2, size=32, seed=0)


def detnas_config(digits_root: Path, cls_root: Path, **search: object) -> dict:
    cfg = tiny_config(digits_root, epochs=1)
    cfg["method"] = "detnas"
    cfg["data"]["search_fraction"] = 0.25
    cfg["model"] = tiny_supernet_model()
    cfg["supernet_pretrain"] = {"epochs": 1, "data": str(cls_root), "batch_size": 16}
    cfg["supernet_train"] = {"epochs": 1}
    cfg["evolution_search"] = {
        "num_candidates": 4,
        "top_k": 2,
        "num_mutation": 2,
        "num_crossover": 1,
        "max_epochs": 2,
        "calibrate_samples": 8,
        **search,
    }
    cfg["subnet_train"] = {"epochs": 1, "baseline": True}
    return cfg


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "detnas.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained_supernet(
    digits_root: Path, cls_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A run directory whose supernet_train step is done (trained once for the module)."""
    tmp = tmp_path_factory.mktemp("supernet")
    cfg = detnas_config(digits_root, cls_root)
    cfg["pipeline"] = ["supernet_train"]
    assert main(["-q", "run", str(_write(tmp, cfg)), "--out", str(tmp / "run")]) == 0
    return tmp / "run"


def _copy_run(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def test_detnas_pipeline_end_to_end(digits_root: Path, cls_root: Path, tmp_path: Path) -> None:
    cfg = detnas_config(digits_root, cls_root)
    cfg["evolution_search"]["constraints"] = {"backbone": {"max_params": 40_000}}
    path = _write(tmp_path, cfg)
    out = tmp_path / "run"
    assert main(["-q", "run", str(path), "--out", str(out)]) == 0
    store = RecordStore(out / "records.sqlite")
    scored = store.records("evolution_search", status="done")
    assert 4 <= len(scored) <= 8  # 2 generations of 4, duplicates never re-scored
    assert len({r.genotype for r in scored}) == len(scored)
    assert {r.extra["generation"] for r in scored} == {0, 1}
    for rec in scored:  # the constraint holds, both backbone and detector costs are recorded
        assert rec.cost["backbone_params"] <= 40_000 and rec.cost["params"] > 0
        assert 0.0 <= rec.metrics["mAP"] <= 1.0
    result = json.loads((out / "result.json").read_text())
    # with a cost limit, selection 'auto' is 'best': the highest mAP, ties to the lower
    # backbone_flops (the second objective)
    # subnet_train trained the chosen subnet and (baseline: true) the hand-crafted
    # ShuffleNetV2 of the same depths, unless the search picked exactly that one
    from nasdet.methods.detnas.space import handcrafted

    trained = store.records("subnet_train", status="done")
    roles = {r.extra["role"]: r for r in trained}
    top = max(scored, key=lambda r: (r.metrics["mAP"], -r.cost["backbone_flops"]))
    hand = str(handcrafted(ShuffleNetCode.parse(top.genotype).depths))
    assert set(roles) == ({"searched"} if top.genotype == hand else {"searched", "baseline"})
    assert len(trained) == len(roles)
    assert (roles["searched"].genotype, roles["searched"].parent_id) == (top.genotype, top.id)
    assert result["record"] == roles["searched"].id
    assert "baseline" not in roles or roles["baseline"].genotype == hand
    winner = nasdet.load_model(result["model"])
    assert winner.backbone.body.__class__.__name__ == "ShuffleNetV2Backbone"
    assert (out / "report.html").is_file()
    # the chosen subnet was exported as a standalone detector and as a genotype file
    best = top
    step_dir = out / "output" / "evolution_search"
    code = ShuffleNetCode.from_yaml((step_dir / "best_subnet.yaml").read_text())
    assert str(code) == best.genotype
    assert (step_dir / f"subnet_{best.id}.pth").is_file()

    # rerunning finds everything done: nothing is scored or trained again
    before = [(r.id, r.status, r.finished_at) for r in store.records()]
    assert main(["-q", "run", str(path), "--out", str(out)]) == 0
    assert [(r.id, r.status, r.finished_at) for r in store.records()] == before


def test_exported_subnet_reproduces_the_supernet_path(
    digits_root: Path, cls_root: Path, tmp_path: Path, trained_supernet: Path
) -> None:
    cfg = detnas_config(digits_root, cls_root)
    cfg["pipeline"] = ["supernet_train"]
    run_cfg = load_run_config(_write(tmp_path, cfg))
    assert isinstance(run_cfg, DetNASRunConfig)
    out = _copy_run(trained_supernet, tmp_path)
    # the step is done: it returns the trained file without training again
    supernet_path = detnas.supernet_train(run_cfg, RecordStore(out / "records.sqlite"), out)
    assert supernet_path == out / "output" / "supernet_train" / "supernet.pth"
    supernet, data, _ = load_supernet(str(supernet_path), json.dumps(detnas.base_config(run_cfg)))
    code = ShuffleNetCode.parse("3-5x-7x-3")
    supernet.backbone.body.set_active_subnet(code)
    from nasdet.models.io import save_model
    from nasdet.search.supernet import export_subnet

    model, arch = export_subnet(supernet, run_cfg.model, code, len(data.categories) + 1)
    file = save_model(
        tmp_path / "sub.pth",
        model,
        architecture=arch.model_dump(mode="json"),
        categories=data.categories,
        cat_ids=data.cat_ids,
    )
    reloaded = nasdet.load_model(file)
    images = [data.val[i][0] for i in range(3)]
    supernet.eval()
    with torch.no_grad():
        feats_a = supernet.backbone(torch.stack(images))
        feats_b = reloaded.backbone(torch.stack(images))
        dets_a, dets_b = supernet(images), reloaded(images)
    for k in feats_a:
        torch.testing.assert_close(feats_a[k], feats_b[k])
    for a, b in zip(dets_a, dets_b, strict=True):
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])
    # the exported file has no supernet parameters: only the chosen units
    assert sum(p.numel() for p in reloaded.parameters()) < sum(
        p.numel() for p in supernet.parameters()
    )


def test_impossible_constraints_fail_in_one_line(
    digits_root: Path,
    cls_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    trained_supernet: Path,
) -> None:
    cfg = detnas_config(digits_root, cls_root)
    cfg["pipeline"] = ["supernet_train", "evolution_search"]
    cfg["evolution_search"]["constraints"] = {"input_size": 96, "max_flops": 1000}
    path = _write(tmp_path, cfg)
    out = _copy_run(trained_supernet, tmp_path)
    # the trained run had other constraints: a resume is refused, naming the changed keys
    assert main(["-q", "run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "evolution_search.constraints.max_flops" in err
    argv = ["-q", "run", str(path), "--out", str(out), "--restart-from", "evolution_search"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "flops" in err and "loosen" in err
    assert RecordStore(tmp_path / "run" / "records.sqlite").count("evolution_search") == 0


def test_killed_search_resumes_without_rescoring(
    digits_root: Path,
    cls_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    trained_supernet: Path,
) -> None:
    cfg = detnas_config(digits_root, cls_root)
    cfg["pipeline"] = ["supernet_train", "evolution_search"]
    path = _write(tmp_path, cfg)
    out = _copy_run(trained_supernet, tmp_path)
    calls: list[str] = []
    real = detnas.score_subnet

    def dying(payload: dict) -> dict:
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(payload["genotype"])
        return real(payload)

    monkeypatch.setattr(detnas, "score_subnet", dying)
    assert main(["-q", "run", str(path), "--out", str(out)]) == 130
    store = RecordStore(out / "records.sqlite")
    first = {r.genotype for r in store.records("evolution_search", status="done")}
    assert first == set(calls)
    calls.clear()
    monkeypatch.setattr(detnas, "score_subnet", lambda p: calls.append(p["genotype"]) or real(p))
    assert main(["-q", "run", str(path), "--out", str(out)]) == 0
    assert not first & set(calls)  # nothing finished before the kill was scored again
    done = store.records("evolution_search", status="done")
    assert len({r.genotype for r in done}) == len(done) >= 4


def test_detnas_config_errors(digits_root: Path, cls_root: Path, tmp_path: Path) -> None:
    cfg = detnas_config(digits_root, cls_root)
    cfg["model"]["backbone"] = {"name": "resnet18"}
    with pytest.raises(ConfigError, match="shufflenet_supernet"):
        load_run_config(_write(tmp_path, cfg))
    cfg = detnas_config(digits_root, cls_root)
    cfg["evolution_search"]["num_candidate"] = 3
    with pytest.raises(ConfigError, match="did you mean 'num_candidates'"):
        load_run_config(_write(tmp_path, cfg))
    cfg["method"] = "detnass"
    with pytest.raises(ConfigError, match="unknown method"):
        load_run_config(_write(tmp_path, cfg))


def ddp_config(digits_root: Path, cls_root: Path) -> dict:
    """``detnas_config`` for the torchrun tests: supernet_train for 2 epochs of 3 steps per
    process (batches of 4), with a checkpoint every 2 steps (in both epochs' middle)."""
    cfg = detnas_config(digits_root, cls_root)
    cfg["supernet_train"] = {"epochs": 2}
    cfg["train"].update(batch_size=4, checkpoint_every=2)
    return cfg


@pytest.fixture(scope="module")
def ddp_supernet(
    digits_root: Path, cls_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The config and the run directory of an undisturbed ``torchrun --nproc_per_node 2 -m nasdet
    run ... --steps supernet_train`` (gloo)."""
    tmp = tmp_path_factory.mktemp("ddp")
    path, out = _write(tmp, ddp_config(digits_root, cls_root)), tmp / "run"
    proc = run_torchrun(["-m", "nasdet", *_supernet_args(path, out)], tmp)
    assert proc.returncode == 0, proc.report()  # every rank's own output in full
    return path, out


def _supernet_args(path: Path, out: Path) -> list[str]:
    return ["-q", "run", str(path), "--out", str(out), "--steps", "supernet_train"]


def test_supernet_train_under_torchrun(ddp_supernet: tuple[Path, Path], tmp_path: Path) -> None:
    """DDP with 2 CPU processes (gloo): the supernet step runs and writes one supernet; the
    other steps are refused under torchrun with one line."""
    path, out = ddp_supernet
    all_steps = ["-m", "nasdet", "-q", "run", str(path), "--out", str(tmp_path / "all")]
    refused = run_torchrun(all_steps, tmp_path)
    assert refused.returncode not in (0, None), refused.report()
    assert any("--steps supernet_train" in err for err in refused.stderr), refused.report()
    store = RecordStore(out / "records.sqlite")
    assert [r.status for r in store.records("supernet_train")] == ["done"]
    supernet = nasdet.load_model(out / "output" / "supernet_train" / "supernet.pth")
    assert type(supernet.backbone.body).__name__ == "ShuffleNetV2Supernet"
    checkpoint = torch.load(out / "output" / "supernet_train" / "checkpoint.pt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["epoch_step"], checkpoint["step"]) == (2, 0, 6)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng_per_rank"]) == 2
    assert not any(k.startswith("module.") for k in checkpoint["model"])


def test_torchrun_restarts_a_lost_rank_to_the_same_weights(
    ddp_supernet: tuple[Path, Path], tmp_path: Path
) -> None:
    """``torchrun --max-restarts 1``: in the first attempt rank 1 SIGKILLs itself before step 5
    (global, from 0: epoch 2's last step), after the checkpoint of step 3 (in epoch 2 after its
    step 1) and step 4 trained past it. torchrun stops rank 0 and starts both again; they resume
    from that checkpoint, skip the epoch's first batch, train steps 4 and 5 again, and end with
    exactly the undisturbed run's weights, optimizer state, RNG states and losses.

    Exact (``torch.equal``), not close: on the CPU every operation is deterministic, the data
    order and the paths depend only on (seed, epoch, rank, step), each rank's RNG state is
    restored, and DDP's all-reduce of 2 ranks adds two numbers (the same sum in either order,
    whatever buckets the restarted DDP builds)."""
    path, straight = ddp_supernet
    out, mark = tmp_path / "run", tmp_path / "lost"
    lose = [str(LOSE_RANK), "1", "5", str(mark)]
    proc = run_torchrun([*lose, *_supernet_args(path, out)], tmp_path, max_restarts=1)
    assert proc.returncode == 0, proc.report()
    assert mark.read_text() == "rank 1 killed itself at step 5\n", proc.report()
    assert proc.attempts == 2, proc.report()
    step_dir = out / "output" / "supernet_train"
    log = (out / "nasdet.log").read_text()
    assert "attempt 1 joins under its own store prefix" in log
    assert f"resuming {step_dir / 'checkpoint.pt'}: in epoch 2 after step 1 of 3" in log

    ca, cb = (
        torch.load(run / "output" / "supernet_train" / "checkpoint.pt", weights_only=True)
        for run in (straight, out)
    )
    a, b = _tensors(ca), _tensors(cb)
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert [e["loss"] for e in ca["history"]] == [e["loss"] for e in cb["history"]]
    ma, mb = (
        nasdet.load_model(run / "output" / "supernet_train" / "supernet.pth").state_dict()
        for run in (straight, out)
    )
    assert [k for k in ma if not torch.equal(ma[k], mb[k])] == []
    la, lb = (
        [r.metrics["train_loss"] for r in RecordStore(run / "records.sqlite").records()]
        for run in (straight, out)
    )
    assert la == lb


def _tensors(obj: object, key: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint, by its path of keys."""
    if isinstance(obj, torch.Tensor):
        return {key: obj}
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    else:
        return {}
    return {p: t for k, v in items for p, t in _tensors(v, f"{key}/{k}").items()}
