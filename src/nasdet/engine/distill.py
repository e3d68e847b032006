"""Knowledge distillation between two detectors' raw head outputs (the generic part of
Once-for-All's in-place distillation and of distilling from a baseline).

torchvision's SSD, RetinaNet and FCOS heads return ``{"cls_logits": [B, A, C],
"bbox_regression": [B, A, 4]}``; :func:`distill_loss` compares two of them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

KDKind = Literal["softmax", "sigmoid"]
BoxWeighting = Literal["foreground", "all"]
HEAD_KEYS = ("cls_logits", "bbox_regression")


def distill_loss(
    student: dict[str, Tensor],
    teacher: dict[str, Tensor],
    kind: KDKind,
    boxes: BoxWeighting = "foreground",
) -> Tensor:
    """The distillation loss of a student head's raw outputs against the (detached) teacher's,
    both ``{"cls_logits": [B, A, C], "bbox_regression": [B, A, 4]}``; a scalar, 0 when the
    outputs are equal.

    - classification, ``"softmax"`` (SSD): KL(teacher || student) of the softmax over classes,
      summed over classes and averaged over the B*A anchors. It is Once-for-All's soft-target
      cross entropy minus the teacher's entropy: the same gradient, but 0 at equality;
    - classification, ``"sigmoid"`` (RetinaNet, FCOS): per-class binary cross entropy against
      the teacher's sigmoid probabilities minus the teacher's own, i.e. the binary KL per class
      (gradient ``sigmoid(student) - sigmoid(teacher)``), summed over classes and averaged over
      anchors;
    - boxes: smooth L1 (beta 1) between the ``bbox_regression`` outputs, summed over the 4
      coordinates; with ``boxes="foreground"`` (the default) averaged over the anchors weighted
      by the teacher's foreground probability (``"softmax"``: 1 minus its class-0 background
      probability, torchvision SSD's convention; ``"sigmoid"``: its highest class probability),
      with ``"all"`` averaged over all anchors alike (the loss before 6b6c284). A detector trains
      its box output on matched (foreground) anchors only, so the teacher's boxes elsewhere
      carry little information. Coordinates the teacher outputs as exactly 0 are left out.

    Computed in float32 (under autocast the head may give float16).
    """
    s_cls, t_cls = student["cls_logits"].float(), teacher["cls_logits"].float()
    s_box, t_box = student["bbox_regression"].float(), teacher["bbox_regression"].float()
    if s_cls.shape != t_cls.shape or s_box.shape != t_box.shape:
        raise ValueError(
            f"student and teacher head outputs differ in shape (cls_logits {tuple(s_cls.shape)} "
            f"vs {tuple(t_cls.shape)}): distillation needs the same anchors for every subnet"
        )
    anchors = max(s_cls.shape[:-1].numel(), 1)
    if boxes not in ("foreground", "all"):
        raise ValueError(f"boxes must be 'foreground' or 'all', got {boxes!r}")
    if kind == "softmax":
        t_log = F.log_softmax(t_cls, -1)
        fg = 1 - t_log[..., 0].exp()
        cls = F.kl_div(F.log_softmax(s_cls, -1), t_log, reduction="sum", log_target=True)
    elif kind == "sigmoid":  # element by element: no cancellation between two large sums
        q = torch.sigmoid(t_cls)
        fg = q.amax(-1)
        cls = (
            q * (F.logsigmoid(t_cls) - F.logsigmoid(s_cls))
            + (1 - q) * (F.logsigmoid(-t_cls) - F.logsigmoid(-s_cls))
        ).sum()
    else:
        raise ValueError(f"kind must be 'softmax' or 'sigmoid', got {kind!r}")
    # a coordinate the teacher outputs as exactly 0 (FCOS's ReLU) gives no target: its
    # pre-activation may be anywhere below 0, and the student, whose own ReLU stops any push
    # upward, would only ever be pushed down (measured: every FCOS box output dead within ~20
    # steps of DetNAS's sandwich training). SSD's and RetinaNet's linear outputs are never 0.
    box = (F.smooth_l1_loss(s_box, t_box, reduction="none") * (t_box != 0)).sum(-1)
    if boxes == "all":
        return (cls + box.sum()) / anchors
    weight = fg.detach()
    box_mean = (weight * box).sum() / weight.sum().clamp_min(torch.finfo(weight.dtype).tiny)
    return cls / anchors + box_mean
