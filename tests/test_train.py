"""The training loop: schedules, exact resume, divergence, model files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, tiny_supernet_model
from ddp_worker import Points, TwoBranch
from torch import nn
from torch.utils.data import Subset

import nasdet
from nasdet.config import parse_config
from nasdet.engine.train import Trainer, make_scheduler, unwrap
from nasdet.errors import CheckpointError, TrainingDiverged
from nasdet.methods.detnas.config import DetNASRunConfig
from nasdet.training import config_fingerprint, train_step


def _lrs(schedule: str, total: int, **kw: object) -> list[float]:
    return _stepped(lambda opt: make_scheduler(opt, schedule, total_iters=total, **kw), total)


def _stepped(make, total: int) -> list[float]:  # noqa: ANN001 (optimizer -> scheduler)
    """The lr of each of ``total`` steps under the scheduler ``make(optimizer)`` (lr 1)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
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


def test_cosine_restarts_back_to_peak_every_t0() -> None:
    warmup, t0 = 3, 5
    lrs = _lrs(
        "cosine_restarts", 3 + 4 * t0, warmup_iters=warmup, warmup_factor=0.1, restart_iters=t0
    )
    assert lrs[:warmup] == pytest.approx([0.1, 0.4, 0.7])
    # torch's CosineAnnealingWarmRestarts (eta_min 0): lr * (1 + cos(pi * T_cur / T_0)) / 2
    for t, lr in enumerate(lrs[warmup:]):
        assert lr == pytest.approx(0.5 * (1 + math.cos(math.pi * (t % t0) / t0))), t
    assert [lrs[warmup + k * t0] for k in range(4)] == pytest.approx([1.0] * 4)
    assert lrs[warmup + t0 - 1] < 0.1
    # without restart_iters: one cycle over the rest of the run, as cosine
    assert _lrs("cosine_restarts", 20, warmup_iters=4) == pytest.approx(
        _lrs("cosine", 20, warmup_iters=4)
    )


def test_min_lr_restart_mult_and_cosine_period_match_torch() -> None:
    """``eta_min``, ``restart_mult`` (T_mult) and ``cosine_iters`` (T_max) give torch's own
    schedulers' learning rates after the warm-up (aw_nas's mepa_scheduler keys)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, CosineAnnealingWarmRestarts

    torch_lrs = _stepped
    got = _lrs("cosine_restarts", 2 + 21, warmup_iters=2, restart_iters=3, restart_mult=2,
               eta_min=0.05)  # fmt: skip
    want = torch_lrs(lambda o: CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.05), 21)
    assert got[2:] == pytest.approx(want)
    assert min(got[2:]) > 0.05 and got[2 + 3] == pytest.approx(1.0)  # a restart after 3
    assert got[2 + 3 + 6] == pytest.approx(1.0)  # the next after 6 (T_mult 2)
    # cosine with a period shorter than the run: torch's CosineAnnealingLR goes back up
    got = _lrs("cosine", 2 + 20, warmup_iters=2, cosine_iters=5, eta_min=0.1)
    want = torch_lrs(lambda o: CosineAnnealingLR(o, T_max=5, eta_min=0.1), 20)
    assert got[2:] == pytest.approx(want)
    assert got[2 + 5] == pytest.approx(0.1) and got[2 + 10] == pytest.approx(1.0)
    # the defaults are the former schedules
    assert _lrs("cosine", 20, warmup_iters=4, eta_min=0.0) == _lrs("cosine", 20, warmup_iters=4)
    with pytest.raises(ValueError, match="restart_mult"):
        _lrs("cosine_restarts", 5, restart_mult=0)


def test_scheduler_keys_config(tmp_path: Path) -> None:
    from torch.optim.lr_scheduler import CosineAnnealingLR, CosineAnnealingWarmRestarts

    from nasdet.build import make_trainer
    from nasdet.errors import ConfigError

    base = {"epochs": 4, "batch_size": 4, "warmup_iters": 0, "tensorboard": False}
    cfg = parse_config({"train": {**base, "schedule": "cosine_restarts", "restart_epochs": 1,
                                  "restart_mult": 2, "min_lr": 0.001}})  # fmt: skip
    sched = make_trainer(TwoBranch(), Points(), cfg, tmp_path).scheduler  # 8 iters per epoch
    assert isinstance(sched, CosineAnnealingWarmRestarts)
    assert (sched.T_0, sched.T_mult, sched.eta_min) == (8, 2, 0.001)
    cfg = parse_config({"train": {**base, "cosine_epochs": 2, "min_lr": 0.01}})
    sched = make_trainer(TwoBranch(), Points(), cfg, tmp_path).scheduler
    assert isinstance(sched, CosineAnnealingLR)
    assert (sched.T_max, sched.eta_min) == (16, 0.01)
    for train, msg in (
        ({"restart_mult": 2}, "train: restart_mult is for schedule cosine_restarts, not cosine"),
        ({"schedule": "multistep", "cosine_epochs": 2},
         "train: cosine_epochs is for schedule cosine, not multistep"),
        ({"schedule": "constant", "min_lr": 0.1},
         "train: min_lr is for schedules cosine and cosine_restarts, not constant"),
        ({"lr": 0.01, "min_lr": 0.01}, "train: min_lr (0.01) must be below lr (0.01)"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            parse_config({"train": train}, source="a.yaml")
        assert str(err.value) == f"a.yaml: {msg}"


def test_restart_epochs_config(tmp_path: Path) -> None:
    from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts

    from nasdet.build import make_trainer
    from nasdet.errors import ConfigError

    def t0(train: dict, **kw: object) -> int:
        base = {"epochs": 4, "batch_size": 4, "warmup_iters": 0, "tensorboard": False}
        cfg = parse_config({"train": {**base, **train}})
        trainer = make_trainer(TwoBranch(), Points(), cfg, tmp_path, **kw)  # 8 iters per epoch
        assert isinstance(trainer.scheduler, CosineAnnealingWarmRestarts)
        return trainer.scheduler.T_0

    assert t0({"schedule": "cosine_restarts", "restart_epochs": 2}) == 16
    assert t0({"schedule": "cosine_restarts"}, restart_epochs=1) == 8  # a method's default
    assert t0({"schedule": "cosine_restarts", "restart_epochs": 3}, restart_epochs=1) == 24
    assert t0({"schedule": "cosine_restarts"}) == 32  # the whole run
    with pytest.raises(ConfigError) as err:
        parse_config({"train": {"restart_epochs": 2}}, source="a.yaml")
    assert (
        str(err.value)
        == "a.yaml: train: restart_epochs is for schedule cosine_restarts, not cosine"
    )


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


def test_resume_refuses_changed_config(
    digits_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = train_step(parse_config(tiny_config(digits_root, epochs=1)), tmp_path)
    # restarted by torchrun (--max-restarts), it resumes without --resume: nothing left to train
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    again = train_step(parse_config(tiny_config(digits_root, epochs=1)), tmp_path)
    assert again.train_seconds == first.train_seconds and again.metrics == first.metrics
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")
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


# ---------------------------------------------------------------------- step_hook


def _trainer(out: Path, *, size: int = 4, epochs: int = 1, **kw: object) -> Trainer:
    """A Trainer of ddp_worker's two-branch model on ``size`` points, batches of 4, SGD with
    momentum at a constant lr; ``kw`` goes to the Trainer (step_hook, grad_clip, ...)."""
    torch.manual_seed(0)
    model = TwoBranch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = epochs * math.ceil(size / 4)
    return Trainer(
        model=model,
        train_set=Subset(Points(), range(size)),
        optimizer=opt,
        scheduler=make_scheduler(opt, "constant", total_iters=steps),
        out_dir=out,
        epochs=epochs,
        batch_size=4,
        amp=False,
        channels_last=False,
        tensorboard=False,
        **kw,  # type: ignore[arg-type]
    )


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("clip", [None, 0.05])
def test_step_hook_halved_twice_equals_one_forward(tmp_path: Path, clip: float | None) -> None:
    def halves(model, images, targets, step):
        for _ in range(2):
            yield {k: v / 2 for k, v in model(images, targets).items()}

    plain = _trainer(tmp_path / "plain", grad_clip=clip)
    init = _weights(plain.model)
    plain.fit()
    hooked = _trainer(tmp_path / "hooked", grad_clip=clip, step_hook=halves, forwards_per_step=2)
    hooked.fit()

    a, b = _weights(plain.model), _weights(hooked.model)
    assert not torch.allclose(a["stem.weight"], init["stem.weight"])  # it trained
    for k in a:  # one clipped step on the summed gradient, not one per forward
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    assert hooked.history[0]["loss"] == pytest.approx(plain.history[0]["loss"], rel=1e-6)


def test_step_hook_backpropagates_each_forward_and_logs_the_sum(tmp_path: Path) -> None:
    yielded: list[float] = []
    grads: list[torch.Tensor | None] = []
    steps: list[int] = []

    def three(model, images, targets, step):
        steps.append(step)
        grads.append(model.stem.weight.grad)
        for k, scale in enumerate((1.0, 2.0, 3.0)):
            unwrap(model).active = k % 2
            losses = {n: v * scale for n, v in model(images, targets).items()}
            yielded.append(float(sum(losses.values()).detach()))
            yield losses
            # backpropagated before the next forward: the gradient is there, and grows
            grads.append(model.stem.weight.grad.clone())

    trainer = _trainer(tmp_path, size=8, step_hook=three, forwards_per_step=3)
    trainer.fit()

    assert steps == [0, 1]
    assert grads[0] is None and grads[4] is None  # zeroed before each step's first forward
    assert all(g is not None for g in grads[1:4] + grads[5:])
    assert not torch.equal(grads[1], grads[2]) and not torch.equal(grads[2], grads[3])
    assert all(p.grad is not None for p in trainer.model.branches.parameters())  # both branches
    per_step = [sum(yielded[:3]), sum(yielded[3:])]
    assert trainer.history[0]["loss"] == pytest.approx(sum(per_step) / 2, rel=1e-6)


def test_step_hook_count_is_checked(tmp_path: Path) -> None:
    def forwards(n: int):
        def hook(model, images, targets, step):
            for _ in range(n):
                yield model(images, targets)

        return hook

    with pytest.raises(ValueError, match="yielded 1 losses at step 0; expected 2"):
        _trainer(tmp_path / "a", step_hook=forwards(1), forwards_per_step=2).fit()
    with pytest.raises(ValueError, match="yielded more than 1 losses at step 0; expected 1"):
        _trainer(tmp_path / "b", step_hook=forwards(2), forwards_per_step=1).fit()
    with pytest.raises(ValueError, match="yielded 0 losses"):
        _trainer(tmp_path / "c", step_hook=forwards(0)).fit()
    with pytest.raises(ValueError, match="needs a step_hook"):
        _trainer(tmp_path / "d", forwards_per_step=2)


def _random_paths(model, images, targets, step):
    """Two forwards on branches drawn from the global RNG (checkpointed), weights from the step."""
    for k in range(2):
        unwrap(model).active = int(torch.randint(2, ()))
        yield {n: v * (1 + (step + k) % 3) for n, v in model(images, targets).items()}


def test_resume_with_step_hook_is_bit_for_bit(tmp_path: Path, monkeypatch) -> None:
    kw = {"size": 8, "epochs": 3, "step_hook": _random_paths, "forwards_per_step": 2}
    straight = _trainer(tmp_path / "straight", **kw)
    straight.fit()

    original = Trainer.save_checkpoint

    def save_then_die(self, epoch: int):
        path = original(self, epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "killed", **kw).fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    resumed = _trainer(tmp_path / "killed", **kw)
    resumed.fit(resume=True)

    a, b = _weights(straight.model), _weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e["loss"] for e in resumed.history] == [e["loss"] for e in straight.history]


class _Killed(Exception):
    """Raised by ``before_step`` to stop a run at a step, as a kill would."""


def test_resume_mid_epoch_is_bit_for_bit(tmp_path: Path) -> None:
    """``checkpoint_every=3`` on 4 steps per epoch (the last batch short): checkpoints inside
    both epochs; stopped at step 7 (global, from 0), the run resumes in epoch 2 after its step 2,
    skipping the batches trained on, and ends as an uninterrupted run does. The global RNG draws
    of the step hook continue from the checkpointed state."""
    kw = {"size": 14, "epochs": 2, "step_hook": _random_paths, "forwards_per_step": 2}
    straight = _trainer(tmp_path / "straight", checkpoint_every=3, **kw)
    straight.fit()

    def die_at_7(step: int) -> None:
        if step == 7:
            raise _Killed

    with pytest.raises(_Killed):
        _trainer(tmp_path / "killed", checkpoint_every=3, before_step=die_at_7, **kw).fit()
    path = tmp_path / "killed" / "checkpoint.pt"
    ck = torch.load(path, weights_only=True)
    assert (ck["epoch"], ck["epoch_step"], ck["step"], ck["iters_per_epoch"]) == (1, 2, 6, 4)
    assert [p["steps"] for p in ck["progress_per_rank"]] == [2]
    resumed = _trainer(tmp_path / "killed", checkpoint_every=3, **kw)
    resumed.fit(resume=True)

    a, b = _weights(straight.model), _weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e["loss"] for e in resumed.history] == [e["loss"] for e in straight.history]
    # the resumed run trained steps 6 and 7 only (4 and 2 points, 2 forwards each): the points of
    # the straight run's last 12 forwards
    assert resumed.model.seen == straight.model.seen[-2 * 6 :]

    # another number of processes splits the data and lays the schedule out differently: refused
    torch.save({**ck, "world_size": 2}, path)
    with pytest.raises(CheckpointError, match=r"written by 2 process\(es\), this run has 1"):
        _trainer(tmp_path / "killed", checkpoint_every=3, **kw).fit(resume=True)
    torch.save({**ck, "iters_per_epoch": 5}, path)
    with pytest.raises(CheckpointError, match="after step 2 of an epoch of 5 steps"):
        _trainer(tmp_path / "killed", checkpoint_every=3, **kw).fit(resume=True)


def test_fingerprint_leaves_out_steps_and_checkpoint_interval(digits_root: Path) -> None:
    """A supernet step killed under ``torchrun ... --steps supernet_train`` resumes in a plain
    run of the whole pipeline, and with another ``train.checkpoint_every``; other keys count."""
    def fingerprint(pipeline: list[str] | None, **train: object) -> str:
        raw = {**tiny_config(digits_root, **train), "method": "detnas", "pipeline": pipeline}
        raw["model"] = tiny_supernet_model()
        return config_fingerprint(parse_config(raw, schema=DetNASRunConfig))

    torchrun = fingerprint(["supernet_train"], checkpoint_every=2)
    assert fingerprint(None) == torchrun
    assert fingerprint(None, lr=0.5) != torchrun
    # keys added later count only when set, so that older checkpoints still resume
    assert "min_lr" not in torchrun and "cosine_epochs" not in torchrun
    assert "head_skip" not in torchrun
    assert fingerprint(None, min_lr=0.0001) != torchrun
