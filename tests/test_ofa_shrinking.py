"""Progressive shrinking (nasdet.methods.ofa.shrinking) and the sandwich step hook with in-place
distillation (nasdet.methods.ofa.sandwich), on a tiny fake elastic supernet in an SSDLite."""

from __future__ import annotations

import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from nasdet.config import Strict, parse_config
from nasdet.engine.distill import distill_loss
from nasdet.engine.train import Trainer, make_scheduler
from nasdet.errors import ConfigError
from nasdet.methods.ofa.sandwich import SandwichHook, subnet_rng
from nasdet.methods.ofa.shrinking import (
    ChoiceSchedule,
    ScheduleCfg,
    default_schedule,
    phase_interval,
)
from nasdet.models import detectors
from nasdet.models.backbone import ExtraLevelsBackbone, FPNBackbone, ShapeSpec

# ---------------------------------------------------------------------- schedule parsing


class _SearchSpace(Strict):
    schedule_cfg: ScheduleCfg


class _Run(Strict):
    """The aw_nas layout: ``search_space_cfg.schedule_cfg``."""

    search_space_cfg: _SearchSpace


def _parse(schedule: dict) -> ScheduleCfg:
    raw = {"search_space_cfg": {"schedule_cfg": schedule}}
    return parse_config(raw, source="run.yaml", schema=_Run).search_space_cfg.schedule_cfg


def test_seed_example_kernel_schedule() -> None:
    cfg = _parse({"kernel_choice": {"boundary": [1, 81], "value": [[7], [7, 5, 3]]}})
    sched = cfg.kernel_choice
    assert all(sched.value_at(e) == [7] for e in range(1, 81))
    assert all(sched.value_at(e) == [7, 5, 3] for e in (81, 82, 500))
    assert cfg.choices_at(80) == {"ks": [7], "e": None, "d": None}
    assert cfg.choices_at(81) == {"ks": [7, 5, 3], "e": None, "d": None}
    with pytest.raises(ValueError, match="1-based"):
        sched.value_at(0)
    # aw_nas writes `type: value` on each schedule
    typed = _parse({"depth_choice": {"type": "value", "boundary": [1], "value": [[4, 3]]}})
    assert typed.choices_at(9)["d"] == [4, 3]


KEY = "run.yaml: search_space_cfg.schedule_cfg"


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        (
            {"boundary": [2, 81], "value": [[7], [7, 5, 3]]},
            "kernel_choice.boundary: must start at epoch 1 (got [2, 81])",
        ),
        ({"boundary": [], "value": []}, "kernel_choice.boundary: must start at epoch 1 (got [])"),
        (
            {"boundary": [1, 81, 41], "value": [[7], [7, 5], [7, 5, 3]]},
            "kernel_choice.boundary: epochs must be strictly increasing (got [1, 81, 41])",
        ),
        (
            {"boundary": [1, 81, 81], "value": [[7], [7, 5], [7, 5, 3]]},
            "kernel_choice.boundary: epochs must be strictly increasing (got [1, 81, 81])",
        ),
        (
            {"boundary": [1, 81], "value": [[7]]},
            "kernel_choice.value: 1 lists for 2 boundaries [1, 81]: one list per boundary epoch",
        ),
        (
            {"boundary": [1, 81], "value": [[7], []]},
            "kernel_choice.value: entry 2 is empty: each needs at least one choice",
        ),
        (
            {"boundary": [1], "value": [[7, 7]]},
            "kernel_choice.value: entry 1 repeats a choice (got [7, 7])",
        ),
        ({"boundary": [1]}, "kernel_choice.value: required key is missing"),
        (
            {"boundary": [1], "value": [[7]], "boundaries": [1]},
            "kernel_choice.boundaries: unknown key — did you mean 'boundary'?",
        ),
    ],
)
def test_bad_schedule_is_one_line_naming_the_key(choice: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse({"kernel_choice": choice})
    assert str(err.value) == f"{KEY}.{message}"


def test_unknown_choice_key() -> None:
    with pytest.raises(ConfigError, match=r"schedule_cfg.width_choic: unknown key"):
        _parse({"width_choic": {"boundary": [1], "value": [[6]]}})


def test_values_outside_the_space() -> None:
    cfg = _parse(
        {
            "kernel_choice": {"boundary": [1, 81], "value": [[7], [7, 5, 3]]},
            "expand_choice": {"boundary": [1, 3], "value": [[6], [6, 8]]},
        }
    )
    cfg.check_space([3, 5, 7], [3, 4, 6, 8], [2, 3, 4])
    with pytest.raises(ConfigError) as err:
        cfg.check_space([3, 5, 7], [3, 4, 6], [2, 3, 4])
    assert str(err.value) == (
        "search_space_cfg.schedule_cfg.expand_choice.value: [8] not among the supernet's expand "
        "ratios [3, 4, 6] (got [6, 8])"
    )
    with pytest.raises(ConfigError, match=r"^supernet_train.schedule.kernel_choice.value: \[7\]"):
        cfg.check_space([3, 5], [3, 4, 6, 8], [2, 3, 4], key="supernet_train.schedule")


# ---------------------------------------------------------------------- default schedule


def test_default_schedule_follows_ofa_order_and_budgets() -> None:
    cfg = default_schedule(590, [3, 5, 7], [3, 4, 6], [2, 3, 4])
    # 180 full, 120 elastic kernel, depth 25 + 120, expand 25 + 120: OFA's epochs exactly
    expected = {
        1: ([7], [6], [4]),
        181: ([7, 5, 3], [6], [4]),
        301: ([7, 5, 3], [6], [4, 3]),
        326: ([7, 5, 3], [6], [4, 3, 2]),
        446: ([7, 5, 3], [6, 4], [4, 3, 2]),
        471: ([7, 5, 3], [6, 4, 3], [4, 3, 2]),
    }
    starts = sorted(expected)
    for i, start in enumerate(starts):
        end = starts[i + 1] - 1 if i + 1 < len(starts) else 590
        for epoch in (start, end):
            c = cfg.choices_at(epoch)
            assert (c["ks"], c["e"], c["d"]) == expected[start], epoch
    assert phase_interval(cfg) == 5  # gcd of 180, 120, 25, 120, 25


@pytest.mark.parametrize("epochs", [1, 2, 3, 6, 7, 12, 30])
def test_default_schedule_fits_any_length(epochs: int) -> None:
    cfg = default_schedule(epochs, [3, 5, 7], [3, 4, 6], [2, 3, 4])
    last = cfg.choices_at(epochs)
    full = {"ks": [7, 5, 3], "e": [6, 4, 3], "d": [4, 3, 2]}
    assert all(last[k] in (None, full[k]) for k in full)  # everything elastic at the end
    for key in ("kernel_choice", "expand_choice", "depth_choice"):
        sched = getattr(cfg, key)
        assert sched is None or sched.boundary[-1] <= epochs
    if epochs >= 6:  # every phase has at least one epoch, the first is the full network
        assert cfg.choices_at(1) == {"ks": [7], "e": [6], "d": [4]}
        keys = ("kernel_choice", "expand_choice", "depth_choice")
        assert [len(getattr(cfg, k).boundary) for k in keys] == [2, 3, 3]


def test_default_schedule_skips_fixed_dimensions_and_phase_interval() -> None:
    cfg = default_schedule(20, [3], [6], [2, 3, 4])
    assert cfg.kernel_choice is None and cfg.expand_choice is None
    assert cfg.depth_choice.value == [[4], [4, 3], [4, 3, 2]]
    aw_nas = ScheduleCfg(
        kernel_choice=ChoiceSchedule(boundary=[1, 81], value=[[7, 5], [7, 5, 3]]),
        expand_choice=ChoiceSchedule(boundary=[1, 161, 241], value=[[6], [6, 4], [6, 4, 3]]),
        depth_choice=ChoiceSchedule(boundary=[1, 321, 401], value=[[4], [4, 3], [4, 3, 2]]),
    )
    assert phase_interval(aw_nas) == 80  # aw_nas's T_0
    assert phase_interval(ScheduleCfg()) is None


# ---------------------------------------------------------------------- a fake elastic supernet


class ElasticBlock(nn.Module):
    """``x + project(depthwise_k(expand_e(x)))``, weights at the largest k and e, sliced."""

    def __init__(self, c: int, k_max: int, e_max: int) -> None:
        super().__init__()
        self.expand = nn.Parameter(torch.randn(c * e_max, c, 1, 1) * 0.3)
        self.dw = nn.Parameter(torch.randn(c * e_max, 1, k_max, k_max) * 0.3)
        self.project = nn.Parameter(torch.randn(c, c * e_max, 1, 1) * 0.3)

    def forward(self, x: Tensor, k: int, e: int) -> Tensor:
        m, s = x.shape[1] * e, (self.dw.shape[-1] - k) // 2
        h = F.relu(F.conv2d(x, self.expand[:m]))
        h = F.relu(F.conv2d(h, self.dw[:m, :, s : s + k, s : s + k], padding=k // 2, groups=m))
        return x + F.conv2d(h, self.project[:, :m])


class FakeElasticBody(nn.Module):
    """Two stages (c3: 16 ch, stride 8; c4: 24 ch, stride 16) of up to ``max(d_list)`` elastic
    blocks; genotype: ``((d, k, e), (d, k, e))``. Records the genotype of every forward and
    the lists of every ``set_choices``."""

    def __init__(self, ks_list=(3, 5), e_list=(1, 2), d_list=(1, 2)) -> None:
        super().__init__()
        self.ks_list, self.e_list, self.d_list = list(ks_list), list(e_list), list(d_list)
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        widths = [(8, 16), (16, 24)]
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in widths)
        self.stages = nn.ModuleList(
            nn.ModuleList(ElasticBlock(b, max(ks_list), max(e_list)) for _ in range(max(d_list)))
            for _, b in widths
        )
        self.feature_info = [ShapeSpec(16, 8), ShapeSpec(24, 16)]
        self.out_channels = [16, 24]
        self.set_choices()
        self.set_max_net()
        self.seen: list[tuple] = []
        self.choice_calls: list[dict] = []

    def set_choices(self, ks=None, e=None, d=None) -> None:
        """``None`` keeps the current list (the full one at first), as the OFA body's."""
        cur = getattr(self, "choices", {"ks": self.ks_list, "e": self.e_list, "d": self.d_list})
        new = {"ks": ks, "e": e, "d": d}
        self.choices = {k: list(cur[k] if new[k] is None else new[k]) for k in cur}
        if hasattr(self, "choice_calls"):
            self.choice_calls.append(dict(self.choices))

    def _pick(self, pick) -> tuple:
        c = self.choices
        return tuple((pick(c["d"]), pick(c["ks"]), pick(c["e"])) for _ in self.stages)

    def sample_active_subnet(self, rng: random.Random) -> tuple:
        self.genotype = self._pick(rng.choice)
        return self.genotype

    def set_max_net(self) -> None:
        self.genotype = self._pick(max)

    def set_min_net(self) -> None:
        self.genotype = self._pick(min)

    def set_active_subnet(self, genotype: tuple) -> None:
        self.genotype = tuple(genotype)

    def active_genotype(self) -> tuple:
        return self.genotype

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        self.seen.append(self.genotype)
        out = OrderedDict()
        x = F.relu(self.stem(x))
        for name, down, blocks, (d, k, e) in zip(
            ("c3", "c4"), self.downs, self.stages, self.genotype, strict=True
        ):
            x = F.relu(down(x))
            for block in blocks[:d]:
                x = block(x, k, e)
            out[name] = x
        return out


def tiny_supernet_ssdlite(**body: Any) -> nn.Module:
    """SSDLite (64 px, 2 classes + background) on the fake supernet plus one extra level."""
    torch.manual_seed(0)
    backbone = ExtraLevelsBackbone(FakeElasticBody(**body), [16])
    return detectors.ssd(backbone, 3, size=64, lite=True)


class Boxes(Dataset):
    """``n`` random 64 px images with one box each."""

    def __init__(self, n: int = 4) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        g = torch.Generator().manual_seed(i)
        x0, y0 = (int(v) for v in torch.randint(0, 30, (2,), generator=g))
        target = {
            "boxes": torch.tensor([[x0, y0, x0 + 24.0, y0 + 28.0]]),
            "labels": torch.tensor([1 + i % 2]),
        }
        return torch.rand(3, 64, 64, generator=g), target


def _batch(n: int = 2) -> tuple[list[Tensor], list[dict]]:
    items = [Boxes(n)[i] for i in range(n)]
    return [a for a, _ in items], [b for _, b in items]


FULL = ScheduleCfg()


# ---------------------------------------------------------------------- the sandwich hook


def test_sandwich_order_and_distillation() -> None:
    model = tiny_supernet_ssdlite()
    model.train()
    body = model.backbone.body
    hook = SandwichHook(FULL, steps_per_epoch=4, num_random=2)
    assert hook.forwards_per_step == 4
    losses = list(hook(model, *_batch(), step=3))
    assert len(losses) == 4 and len(body.seen) == 4
    assert body.seen[0] == ((2, 5, 2), (2, 5, 2))  # largest
    assert body.seen[1] == ((1, 3, 1), (1, 3, 1))  # smallest
    assert "loss_kd" not in losses[0]
    assert all("loss_kd" in x for x in losses[1:])
    assert float(losses[1]["loss_kd"].detach()) > 0  # a smaller student differs from its teacher
    assert all(torch.isfinite(sum(x.values())) for x in losses)
    # students keep the task losses too
    assert set(losses[1]) == set(losses[0]) | {"loss_kd"}


def test_kd_loss_is_zero_for_the_teacher_itself() -> None:
    model = tiny_supernet_ssdlite()
    model.train()
    one = ScheduleCfg(  # one choice each: the smallest and random subnets are the largest
        kernel_choice=ChoiceSchedule(boundary=[1], value=[[5]]),
        expand_choice=ChoiceSchedule(boundary=[1], value=[[2]]),
        depth_choice=ChoiceSchedule(boundary=[1], value=[[2]]),
    )
    losses = list(SandwichHook(one, steps_per_epoch=1, num_random=1)(model, *_batch(), step=0))
    assert len(set(model.backbone.body.seen)) == 1
    assert [float(x["loss_kd"].detach()) for x in losses[1:]] == [0.0, 0.0]


def test_no_sandwich_no_distill() -> None:
    model = tiny_supernet_ssdlite()
    model.train()
    plain = SandwichHook(FULL, steps_per_epoch=1, num_random=1, sandwich=False)
    assert plain.forwards_per_step == 1
    (losses,) = list(plain(model, *_batch(), step=0))
    assert "loss_kd" not in losses
    no_kd = SandwichHook(FULL, steps_per_epoch=1, num_random=0, distill=False)
    assert all("loss_kd" not in x for x in no_kd(model, *_batch(), step=0))
    with pytest.raises(ValueError, match="num_random must be >= 1 without"):
        SandwichHook(FULL, steps_per_epoch=1, num_random=0, sandwich=False)


def test_random_subnets_depend_on_seed_and_step_only() -> None:
    def subnets(seed: int, step: int) -> list[tuple]:
        body = FakeElasticBody(ks_list=(3, 5, 7), e_list=(1, 2, 3), d_list=(1, 2))
        hook = SandwichHook(FULL, steps_per_epoch=1, num_random=3, seed=seed)
        for k in range(hook.num_random):
            body.sample_active_subnet(subnet_rng(seed, step, k))
            body.forward(torch.zeros(1, 3, 32, 32))
        return body.seen

    random.seed(1)
    a = subnets(0, 7)
    random.seed(2)  # the global RNG plays no part
    assert subnets(0, 7) == a
    assert subnets(1, 7) != a
    assert len({g for step in range(6) for g in subnets(0, step)}) > 3


def test_hook_samples_the_same_subnets_for_a_step() -> None:
    runs = []
    for _ in range(2):
        model = tiny_supernet_ssdlite()
        model.train()
        list(SandwichHook(FULL, steps_per_epoch=2, num_random=2, seed=3)(model, *_batch(), 5))
        runs.append(model.backbone.body.seen)
    assert runs[0] == runs[1]
    body = FakeElasticBody()  # the random ones are subnet_rng(seed, step, k)'s draws
    assert runs[0][2:] == [body.sample_active_subnet(subnet_rng(3, 5, k)) for k in range(2)]


def test_choices_follow_the_schedule_by_epoch() -> None:
    model = tiny_supernet_ssdlite()
    model.train()
    body = model.backbone.body
    sched = ScheduleCfg(kernel_choice=ChoiceSchedule(boundary=[1, 2], value=[[5], [5, 3]]))
    hook = SandwichHook(sched, steps_per_epoch=2, num_random=0)
    images, targets = _batch()
    for step in range(3):  # epochs 1, 1, 2
        list(hook(model, images, targets, step))
    assert [c["ks"] for c in body.choice_calls[-3:]] == [[5], [5], [5, 3]]
    assert [c["d"] for c in body.choice_calls[-3:]] == [[1, 2]] * 3  # no schedule: full list
    smallest = body.seen[1::2]
    assert [g[0][1] for g in smallest] == [5, 5, 3]


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_sigmoid_heads(detector: str) -> None:
    torch.manual_seed(0)
    backbone = FPNBackbone(FakeElasticBody(), 32, "none")
    model = getattr(detectors, detector)(backbone, 3, min_size=64, max_size=64).train()
    hook = SandwichHook(FULL, steps_per_epoch=1, num_random=1, kind="sigmoid")
    losses = list(hook(model, *_batch(), step=0))
    assert len(losses) == 3 and "loss_kd" not in losses[0]
    # RetinaNet's head starts almost constant (weights std 0.01): its KD is ~0, not below
    assert all(float(x["loss_kd"].detach()) > -1e-6 for x in losses[1:])
    assert all(torch.isfinite(sum(x.values())) for x in losses)


def test_distill_loss_sigmoid_and_shapes() -> None:
    torch.manual_seed(0)
    t = {"cls_logits": torch.randn(2, 5, 4), "bbox_regression": torch.randn(2, 5, 4)}
    s = {k: v + 0.5 * torch.randn_like(v) for k, v in t.items()}
    for kind in ("softmax", "sigmoid"):
        assert float(distill_loss(t, t, kind)) == 0.0
        assert float(distill_loss(s, t, kind)) > 0
    # softmax: OFA's soft-target cross entropy minus the teacher's entropy
    p = F.softmax(t["cls_logits"], -1)
    ce = -(p * F.log_softmax(s["cls_logits"], -1)).sum(-1).mean()
    entropy = -(p * p.log()).sum(-1).mean()
    box = F.smooth_l1_loss(s["bbox_regression"], t["bbox_regression"], reduction="none")
    expected = ce - entropy + box.sum(-1).mean()
    torch.testing.assert_close(distill_loss(s, t, "softmax", "all"), expected)
    # foreground (the default): the box term averaged over anchors weighted by the teacher's
    # foreground probability (1 - its class-0 probability)
    fg = 1 - p[..., 0]
    expected_fg = ce - entropy + (fg * box.sum(-1)).sum() / fg.sum()
    torch.testing.assert_close(distill_loss(s, t, "softmax"), expected_fg)
    # sigmoid: the binary KL per class, whose gradient is sigmoid(student) - sigmoid(teacher)
    logits = s["cls_logits"].clone().requires_grad_()
    zero_box = {"bbox_regression": t["bbox_regression"]}
    (grad,) = torch.autograd.grad(
        distill_loss({"cls_logits": logits, **zero_box}, t, "sigmoid"), logits
    )
    torch.testing.assert_close(grad * 10, torch.sigmoid(logits) - torch.sigmoid(t["cls_logits"]))
    with pytest.raises(ValueError, match="differ in shape"):
        distill_loss({k: v[:, :3] for k, v in s.items()}, t, "softmax")
    with pytest.raises(ValueError, match="boxes must be"):
        distill_loss(s, t, "softmax", "background")  # type: ignore[arg-type]


def test_distill_boxes_weighted_by_the_teachers_foreground() -> None:
    # sigmoid: an anchor's weight is the teacher's highest class probability
    cls = torch.tensor([[[9.0, -9.0], [-9.0, -9.0]]])  # anchor 0 foreground, anchor 1 not
    t = {"cls_logits": cls, "bbox_regression": torch.ones(1, 2, 4)}
    s = {"cls_logits": cls, "bbox_regression": torch.ones(1, 2, 4)}
    s["bbox_regression"][0, 1] = 3.0  # wrong on the background anchor only: almost free
    assert float(distill_loss(s, t, "sigmoid")) < 1e-3
    assert float(distill_loss(s, t, "sigmoid", "all")) == pytest.approx(4 * 1.5 / 2)
    s["bbox_regression"][0, 0] = 3.0  # wrong on the foreground anchor: the full smooth L1
    w = torch.sigmoid(torch.tensor([9.0, -9.0]))
    expected = float((w * 4 * 1.5).sum() / w.sum())
    assert float(distill_loss(s, t, "sigmoid")) == pytest.approx(expected)


@pytest.mark.parametrize("boxes", ["foreground", "all"])
def test_distill_never_pushes_a_relu_box_output_below_a_teacher_zero(boxes: str) -> None:
    """FCOS's box output is ReLU'd: where the teacher's is 0 the student gets no box gradient
    (a one-sided push down killed every FCOS box output in DetNAS's sandwich training)."""
    pre = torch.tensor([[[0.5, 2.0, 1.0, 1.0]]], requires_grad=True)
    teacher = {"cls_logits": torch.zeros(1, 1, 3), "bbox_regression": torch.tensor(
        [[[0.0, 1.0, 0.0, 1.0]]])}  # fmt: skip
    student = {"cls_logits": torch.zeros(1, 1, 3), "bbox_regression": F.relu(pre)}
    (grad,) = torch.autograd.grad(distill_loss(student, teacher, "sigmoid", boxes), pre)
    assert grad[0, 0, 0] == 0 and grad[0, 0, 2] == 0  # teacher 0: no target
    assert grad[0, 0, 1] > 0 and grad[0, 0, 3] == 0  # 2 vs 1 pulled down; 1 vs 1 at rest


def test_trainer_fit_with_the_hook_reaches_every_parameter(tmp_path: Path) -> None:
    model = tiny_supernet_ssdlite()
    hook = SandwichHook(
        default_schedule(2, [3, 5], [1, 2], [1, 2]), steps_per_epoch=2, num_random=1
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = Trainer(
        model=model,
        train_set=Boxes(4),
        optimizer=opt,
        scheduler=make_scheduler(opt, "cosine_restarts", total_iters=4, restart_iters=2),
        out_dir=tmp_path,
        epochs=2,
        batch_size=2,
        amp=False,
        channels_last=False,
        tensorboard=False,
        step_hook=hook,
        forwards_per_step=hook.forwards_per_step,
    )
    history = trainer.fit()
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    body = model.backbone.body
    assert len(body.seen) == 4 * 3
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(p.grad.abs().sum() > 0 for p in body.parameters())


def test_aw_nas_width_choice_is_the_expand_choice() -> None:
    cfg = ScheduleCfg.model_validate(
        {"width_choice": {"type": "value", "boundary": [1, 161, 241],
                          "value": [[6], [6, 4], [6, 4, 3]]}}  # fmt: skip
    )
    assert cfg.choices_at(200)["e"] == [6, 4]
    with pytest.raises(ValidationError, match="set one"):
        ScheduleCfg.model_validate(
            {"width_choice": {"boundary": [1], "value": [[6]]},
             "expand_choice": {"boundary": [1], "value": [[6]]}}  # fmt: skip
        )
