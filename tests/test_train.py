"""The training loop: schedules, exact resume, divergence, model files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from torch import nn

import nasdet
from nasdet.config import parse_config
from nasdet.engine.train import make_scheduler
from nasdet.errors import CheckpointError, TrainingDiverged
from nasdet.training import train_step


def _lrs(schedule: str, total: int, **kw: object) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, schedule, total_iters=total, **kw)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_then_cosine() -> None:
    lrs = _lrs("cosine", 20, warmup_iters=4, warmup_factor=0.1)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[2] == pytest.approx(0.1 + 0.9 * 2 / 4)
    assert lrs[4] == pytest.approx(1.0)
    # cosine over the remaining 16 iterations
    assert lrs[12] == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


def test_multistep_milestones_are_iterations() -> None:
    lrs = _lrs("multistep", 10, milestones=[6, 8], gamma=0.1)
    assert lrs[:6] == pytest.approx([1.0] * 6)
    assert lrs[6:8] == pytest.approx([0.1] * 2)
    assert lrs[8:] == pytest.approx([0.01] * 2)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_resume_after_kill_is_bit_for_bit(digits_root: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = parse_config(tiny_config(digits_root))
    straight = train_step(cfg, tmp_path / "straight")

    # Kill the second run right after the first epoch's checkpoint is written.
    from nasdet.engine import train as train_mod

    original = train_mod.Trainer.save_checkpoint

    def save_then_die(self, epoch: int):
        path = original(self, epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(train_mod.Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_step(cfg, tmp_path / "killed")
    monkeypatch.setattr(train_mod.Trainer, "save_checkpoint", original)
    resumed = train_step(cfg, tmp_path / "killed", resume=True)

    a, b = _state(straight.model_path), _state(resumed.model_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics == straight.metrics


def test_resume_refuses_changed_config(digits_root: Path, tmp_path: Path) -> None:
    train_step(parse_config(tiny_config(digits_root, epochs=1)), tmp_path)
    with pytest.raises(CheckpointError, match="different settings"):
        train_step(parse_config(tiny_config(digits_root, epochs=1, lr=0.5)), tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train_step(parse_config(tiny_config(digits_root)), tmp_path / "empty", resume=True)


def test_nan_loss_names_step_and_checkpoint(digits_root: Path, tmp_path: Path, monkeypatch) -> None:
    from torchvision.models.detection import FCOS

    calls = {"n": 0}
    forward = FCOS.forward

    def poisoned(self, images, targets=None):
        out = forward(self, images, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:  # epoch 2 (4 iterations per epoch), iteration 2
                out["classification"] = out["classification"] * float("nan")
        return out

    monkeypatch.setattr(FCOS, "forward", poisoned)
    with pytest.raises(TrainingDiverged) as err:
        train_step(parse_config(tiny_config(digits_root)), tmp_path)
    msg = str(err.value)
    assert "epoch 2, iteration 2 (step 6" in msg
    assert f"{tmp_path / 'checkpoint.pt'} (after epoch 1)" in msg
    assert "\n" not in msg


def test_model_file_round_trip(digits_root: Path, tmp_path: Path) -> None:
    result = train_step(parse_config(tiny_config(digits_root, epochs=1)), tmp_path)
    model = nasdet.load_model(result.model_path)
    assert not model.training
    assert model.categories == [str(d) for d in range(10)]
    image = torch.rand(3, 96, 96)
    trained = torch.load(result.model_path, weights_only=True)["state_dict"]
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        a, b = model([image]), model([image])
    assert torch.equal(a[0]["boxes"], b[0]["boxes"])
    assert result.metrics.keys() >= {"mAP", "AP50", "AR100"}
    assert 0.0 <= result.metrics["mAP"] <= 1.0


def test_load_model_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="not a nasdet model file"):
        nasdet.load_model(bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot be read as a weights file"):
        nasdet.load_model(junk)
    with pytest.raises(CheckpointError, match="not found"):
        nasdet.load_model(tmp_path / "missing.pt")
