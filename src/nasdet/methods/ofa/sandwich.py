"""The sandwich rule with in-place distillation: the Trainer ``step_hook`` that trains an elastic
supernet detector.

Each optimizer step runs, on the same batch, the largest subnet of the current phase, the
smallest, and ``num_random`` random ones (BigNAS / Once-for-All with in-place distillation):
every forward's loss is backpropagated by the Trainer at once, the gradients accumulate, one
optimizer step follows. The choices sampled from follow the progressive-shrinking schedule
(:class:`~nasdet.methods.ofa.shrinking.ScheduleCfg`) of the step's epoch.

The supernet is the detector's ``backbone.body`` and honours the elastic protocol
(:class:`ElasticBody`). The detector head's raw outputs are read with a forward hook on
``model.head`` during the ordinary training forward (which still returns the task losses):
torchvision's SSD, RetinaNet and FCOS heads return ``cls_logits`` [B, A, C] and
``bbox_regression`` [B, A, 4].
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, Protocol

from torch import Tensor, nn

from nasdet.engine.distill import HEAD_KEYS, KDKind, distill_loss
from nasdet.engine.train import unwrap
from nasdet.methods.ofa.shrinking import ScheduleCfg


class ElasticBody(Protocol):
    """What :class:`SandwichHook` needs of the supernet backbone body."""

    def set_choices(
        self, ks: list[int] | None = None, e: list[int] | None = None, d: list[int] | None = None
    ) -> None:
        """Restrict the lists sampling and ``set_max_net`` / ``set_min_net`` draw from
        (``None``: leave that list as it is; the hook restricts only scheduled choices, so an
        unscheduled one stays the full list)."""

    def sample_active_subnet(self, rng: random.Random) -> Any:
        """Activate a subnet drawn with ``rng`` from the current lists; returns its genotype."""

    def set_max_net(self) -> None:
        """Activate the largest subnet of the current lists."""

    def set_min_net(self) -> None:
        """Activate the smallest subnet of the current lists."""

    def set_active_subnet(self, genotype: Any) -> None:
        """Activate the subnet ``genotype`` names."""

    def active_genotype(self) -> Any:
        """The genotype of the active subnet."""


def subnet_rng(seed: int, step: int, k: int) -> random.Random:
    """The generator random subnet ``k`` of global step ``step`` is drawn with: a function of
    ``(seed, step, k)`` only (a string seed is hashed with SHA-512, independent of
    ``PYTHONHASHSEED``), so every DDP rank and a resumed run draw the same subnets."""
    return random.Random(f"nasdet.ofa.subnet/{seed}/{step}/{k}")


class SandwichHook:
    """The Trainer ``step_hook`` for an elastic supernet detector.

    At global step ``step`` (from 0) the supernet's lists are set from ``schedule`` for epoch
    ``step // steps_per_epoch + 1`` (``steps_per_epoch``: the Trainer's iterations per epoch,
    i.e. ``len`` of its loader). With ``sandwich`` the step's forwards are the largest subnet of
    those lists, the smallest, then ``num_random`` random ones; without, ``num_random`` random
    ones (Once-for-All's plain sampling; 1 for one subnet per step). Random subnet ``k`` is drawn
    with :func:`subnet_rng` ``(seed, step, k)`` only.

    In-place distillation (``distill``, with ``sandwich`` only: the teacher is the largest
    subnet's forward of the same step; without the sandwich there is no teacher and no
    ``loss_kd``): the largest subnet's loss dict is its task losses; every other forward's is its
    task losses plus ``loss_kd = kd_ratio * distill_loss(student head, teacher head, kind)``, as
    Once-for-All's student loss is cross entropy + ``kd_ratio`` * KD. ``kind``: ``"softmax"``
    for SSD's softmax classifier, ``"sigmoid"`` for RetinaNet / FCOS.

    Pass :attr:`forwards_per_step` to the Trainer (its DDP ``no_sync`` needs the count), and
    ``find_unused_parameters=True`` under DDP (smaller subnets leave weights unused). After a
    step the supernet keeps the last random subnet active: an ``evaluate`` callback must
    activate the subnet it scores.
    """

    def __init__(
        self,
        schedule: ScheduleCfg,
        steps_per_epoch: int,
        *,
        num_random: int = 2,
        sandwich: bool = True,
        distill: bool = True,
        kd_ratio: float = 1.0,
        seed: int = 0,
        kind: KDKind = "softmax",
    ) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if num_random < 0 or (not sandwich and num_random < 1):
            raise ValueError(
                f"num_random must be >= {0 if sandwich else 1} "
                f"{'with' if sandwich else 'without'} the sandwich rule, got {num_random}"
            )
        if kd_ratio < 0:
            raise ValueError(f"kd_ratio must be >= 0, got {kd_ratio}")
        if kind not in ("softmax", "sigmoid"):
            raise ValueError(f"kind must be 'softmax' or 'sigmoid', got {kind!r}")
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        self.num_random = num_random
        self.sandwich = sandwich
        self.distill = distill and sandwich
        self.kd_ratio = kd_ratio
        self.seed = seed
        self.kind: KDKind = kind

    @property
    def forwards_per_step(self) -> int:
        """Forwards (loss dicts yielded) per step: ``2 + num_random`` with the sandwich rule."""
        return self.num_random + (2 if self.sandwich else 0)

    def epoch_of(self, step: int) -> int:
        """The 1-based epoch of global step ``step`` (from 0)."""
        return step // self.steps_per_epoch + 1

    def __call__(
        self, model: nn.Module, images: list[Tensor], targets: list[dict[str, Any]], step: int
    ) -> Iterator[dict[str, Tensor]]:
        net = unwrap(model)
        body: ElasticBody = net.backbone.body
        body.set_choices(**self.schedule.choices_at(self.epoch_of(step)))
        teacher: dict[str, Tensor] | None = None
        if self.sandwich:
            body.set_max_net()
            losses, head = self._forward(model, images, targets)
            if self.distill:
                teacher = {k: head[k].detach() for k in HEAD_KEYS}
            yield losses
            body.set_min_net()
            yield self._student(model, images, targets, teacher)
        for k in range(self.num_random):
            body.sample_active_subnet(subnet_rng(self.seed, step, k))
            yield self._student(model, images, targets, teacher)

    def _student(
        self,
        model: nn.Module,
        images: list[Tensor],
        targets: list[dict[str, Any]],
        teacher: dict[str, Tensor] | None,
    ) -> dict[str, Tensor]:
        losses, head = self._forward(model, images, targets)
        if teacher is None:
            return losses
        return {**losses, "loss_kd": self.kd_ratio * distill_loss(head, teacher, self.kind)}

    def _forward(
        self, model: nn.Module, images: list[Tensor], targets: list[dict[str, Any]]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``model(images, targets)`` (the task losses) and, when distilling, the head's raw
        outputs of that forward."""
        if not self.distill:
            return model(images, targets), {}
        head_module = unwrap(model).head
        captured: dict[str, Tensor] = {}

        def keep(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, dict) or any(k not in output for k in HEAD_KEYS):
                got = sorted(output) if isinstance(output, dict) else type(output).__name__
                raise ValueError(
                    f"{type(module).__name__} returned {got}: in-place distillation needs a head "
                    f"returning a dict with {', '.join(HEAD_KEYS)} (torchvision's SSD, RetinaNet "
                    "and FCOS heads do) — set distill off for this detector"
                )
            captured.update({k: output[k] for k in HEAD_KEYS})

        handle = head_module.register_forward_hook(keep)
        try:
            losses = model(images, targets)
        finally:
            handle.remove()
        if not captured:
            raise ValueError("the detector's forward did not run model.head: cannot distill")
        return losses, captured
