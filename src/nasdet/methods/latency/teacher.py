"""Distillation from the baseline during ``pretrain``: the Trainer ``step_hook`` that adds
``loss_kd = kd_ratio * distill_loss(student head, baseline head)`` to the task losses.

The teacher is a frozen copy of the baseline detector (eval mode, no gradient). It sees exactly
the student's input: the batch tensor the student's transform produced at this step's resolution
(captured with a forward hook), run through the teacher's backbone and head.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from nasdet.engine.distill import HEAD_KEYS, KDKind, distill_loss
from nasdet.engine.train import unwrap


class BaselineDistill:
    """``step_hook(model, images, targets, step)``: one forward, task losses plus ``loss_kd``."""

    def __init__(self, teacher: nn.Module, kd_ratio: float, kind: KDKind) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.kd_ratio, self.kind = kd_ratio, kind

    def __call__(
        self, model: nn.Module, images: list[Tensor], targets: list[dict[str, Any]], step: int
    ) -> Iterator[dict[str, Tensor]]:
        net = unwrap(model)
        seen: dict[str, Any] = {}

        def keep_input(_m: nn.Module, _a: Any, out: Any) -> None:
            seen["x"] = out[0].tensors

        def keep_head(_m: nn.Module, _a: Any, out: Any) -> None:
            seen.update({k: out[k] for k in HEAD_KEYS})

        hooks = [net.transform.register_forward_hook(keep_input),
                 net.head.register_forward_hook(keep_head)]  # fmt: skip
        try:
            losses = model(images, targets)
        finally:
            for h in hooks:
                h.remove()
        x = seen["x"]
        self.teacher.to(x.device)
        with torch.no_grad():
            head = self.teacher.head(list(self.teacher.backbone(x).values()))
        kd = distill_loss({k: seen[k] for k in HEAD_KEYS}, head, self.kind)
        yield {**losses, "loss_kd": self.kd_ratio * kd}
