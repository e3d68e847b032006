"""Optimizer, per-iteration learning-rate schedule and device of a training run.

Also importable from :mod:`nasdet.engine.train`, which uses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)

from nasdet.errors import ConfigError


def make_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    backbone_lr: float | None = None,
) -> Optimizer:
    """SGD (with momentum) or AdamW over the trainable parameters. ``backbone_lr`` (optional):
    the learning rate of ``model.backbone.body`` (a detector's backbone body; 0 freezes it), the
    rest at ``lr``; schedules scale both alike."""
    params: list = [p for p in model.parameters() if p.requires_grad]
    if backbone_lr is not None:
        body = {id(p) for p in model.backbone.body.parameters()}
        if backbone_lr == 0:
            for p in model.backbone.body.parameters():
                p.requires_grad_(False)
        base = [p for p in params if id(p) in body and backbone_lr > 0]
        params = [{"params": [p for p in params if id(p) not in body]}]
        if base:
            params.append({"params": base, "lr": backbone_lr})
    if name == "sgd":
        return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def make_scheduler(
    optimizer: Optimizer,
    schedule: str,
    *,
    total_iters: int,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    restart_iters: int | None = None,
    restart_mult: int = 1,
    cosine_iters: int | None = None,
    eta_min: float = 0.0,
) -> LRScheduler:
    """A per-iteration schedule: linear warm-up from ``warmup_factor * lr`` over ``warmup_iters``
    iterations, then

    - cosine: torch's ``CosineAnnealingLR``, from ``lr`` to ``eta_min`` over ``cosine_iters``
      iterations (default: the rest of the run; a shorter one goes back up after it, as torch's
      does);
    - cosine_restarts: torch's ``CosineAnnealingWarmRestarts`` (SGDR), a cosine from ``lr`` to
      ``eta_min`` over ``restart_iters`` iterations, then back to ``lr`` and again, each cycle
      ``restart_mult`` times the one before, the cycles counted from the end of the warm-up
      (default: one cycle over the rest of the run, i.e. cosine);
    - multistep at ``milestones`` (iterations), or constant."""
    warmup = min(warmup_iters, max(total_iters - 1, 0))
    rest = max(total_iters - warmup, 1)
    for name, value in (("restart_iters", restart_iters), ("cosine_iters", cosine_iters)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if restart_mult < 1:
        raise ValueError(f"restart_mult must be >= 1, got {restart_mult}")
    if schedule == "cosine":
        main: LRScheduler = CosineAnnealingLR(
            optimizer, T_max=cosine_iters or rest, eta_min=eta_min
        )
    elif schedule == "cosine_restarts":
        main = CosineAnnealingWarmRestarts(
            optimizer, T_0=restart_iters or rest, T_mult=restart_mult, eta_min=eta_min
        )
    elif schedule == "multistep":
        main = MultiStepLR(optimizer, [max(m - warmup, 1) for m in milestones], gamma=gamma)
    elif schedule == "constant":
        main = ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        raise ValueError(
            f"schedule must be cosine, cosine_restarts, multistep or constant, got {schedule!r}"
        )
    if warmup == 0:
        return main
    ramp = LinearLR(optimizer, start_factor=warmup_factor, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available — use auto")
    return torch.device(name)
