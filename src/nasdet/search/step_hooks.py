"""Trainer step hooks that train a weight-sharing supernet detector with several forwards per
optimizer step (:attr:`nasdet.engine.train.Trainer.step_hook`).

- :class:`SandwichHook`: the sandwich rule (BigNAS / Once-for-All): on the same batch, the
  largest subnet, the smallest and ``num_random`` random ones, optionally with in-place
  distillation from the largest subnet's head outputs;
- :class:`StrictFairHook`: FairNAS's strict fairness: ``m`` forwards (``m`` choices per block)
  in which every choice of every block runs exactly once.

Both read the supernet through a small protocol (:class:`SandwichSupernet`,
:class:`FairSupernet`) that a method provides, by default the detector's ``backbone.body``
itself; a method whose body does not speak it passes ``supernet=``, a function of the plain
detector returning an adapter. Whatever they draw is a function of ``(seed, step)`` only (a
string seed, hashed with SHA-512 whatever ``PYTHONHASHSEED`` is), so every DDP rank and a
resumed run draw the same subnets.

Contract with the Trainer: pass ``forwards_per_step`` (its DDP ``no_sync`` needs the count) and
``find_unused_parameters=True`` under DDP (each forward leaves weights unused). After a step the
supernet keeps the last forward's subnet active: an ``evaluate`` callback must activate the
subnet it scores.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from torch import Tensor, nn

from nasdet.engine.distill import HEAD_KEYS, KDKind, distill_loss
from nasdet.engine.train import unwrap


class SandwichSupernet(Protocol):
    """What :class:`SandwichHook` needs of the supernet."""

    def set_max_net(self) -> None:
        """Activate the largest subnet."""

    def set_min_net(self) -> None:
        """Activate the smallest subnet."""

    def sample_active_subnet(self, rng: random.Random) -> Any:
        """Activate a subnet drawn with ``rng``; returns its genotype."""


class FairSupernet(Protocol):
    """What :class:`StrictFairHook` needs of the supernet: ``num_blocks`` blocks of
    ``num_choices`` choices each."""

    num_blocks: int
    num_choices: int

    def set_block_choices(self, choices: Sequence[int]) -> None:
        """Activate the subnet whose block ``b`` runs choice ``choices[b]`` (0-based)."""


def backbone_body(net: nn.Module) -> Any:
    """The supernet of a detector as the hooks read it by default: ``net.backbone.body``."""
    return net.backbone.body


def subnet_rng(seed: int, step: int, k: int, prefix: str = "nasdet.subnet") -> random.Random:
    """The generator random subnet ``k`` of global step ``step`` is drawn with: a function of
    ``(prefix, seed, step, k)`` only (a string seed is hashed with SHA-512, independent of
    ``PYTHONHASHSEED``)."""
    return random.Random(f"{prefix}/{seed}/{step}/{k}")


class SandwichHook:
    """The sandwich rule as a Trainer ``step_hook``.

    At global step ``step`` (from 0), after :meth:`prepare` ``(supernet, step)`` (a no-op here;
    Once-for-All restricts the choices to its progressive-shrinking phase), the forwards are, with
    ``sandwich``, the largest subnet (``set_max_net``), the smallest (``set_min_net``) and then
    ``num_random`` random ones; without, ``num_random`` random ones. Random subnet ``k`` is drawn
    with :func:`subnet_rng` ``(seed, step, k, rng_prefix)``.

    In-place distillation (``distill``, with ``sandwich`` only: the teacher is the largest
    subnet's forward of the same step): the largest subnet's loss dict is its task losses; every
    other forward's is its task losses plus ``loss_kd = kd_ratio * distill_loss(student head,
    teacher head, kind)``. The head outputs are read with a forward hook on ``model.head`` during
    the ordinary training forward: torchvision's SSD, RetinaNet and FCOS heads return
    ``cls_logits`` [B, A, C] and ``bbox_regression`` [B, A, 4]. ``kind``: ``"softmax"`` for SSD's
    softmax classifier, ``"sigmoid"`` for RetinaNet / FCOS.
    """

    def __init__(
        self,
        *,
        num_random: int = 2,
        sandwich: bool = True,
        distill: bool = True,
        kd_ratio: float = 1.0,
        seed: int = 0,
        kind: KDKind = "softmax",
        rng_prefix: str = "nasdet.subnet",
        supernet: Callable[[nn.Module], SandwichSupernet] = backbone_body,
    ) -> None:
        if num_random < 0 or (not sandwich and num_random < 1):
            raise ValueError(
                f"num_random must be >= {0 if sandwich else 1} "
                f"{'with' if sandwich else 'without'} the sandwich rule, got {num_random}"
            )
        if kd_ratio < 0:
            raise ValueError(f"kd_ratio must be >= 0, got {kd_ratio}")
        if kind not in ("softmax", "sigmoid"):
            raise ValueError(f"kind must be 'softmax' or 'sigmoid', got {kind!r}")
        self.num_random = num_random
        self.sandwich = sandwich
        self.distill = distill and sandwich
        self.kd_ratio = kd_ratio
        self.seed = seed
        self.kind: KDKind = kind
        self.rng_prefix = rng_prefix
        self.supernet = supernet

    @property
    def forwards_per_step(self) -> int:
        """Forwards (loss dicts yielded) per step: ``2 + num_random`` with the sandwich rule."""
        return self.num_random + (2 if self.sandwich else 0)

    def prepare(self, supernet: Any, step: int) -> None:
        """Called before the forwards of global step ``step``; override to restrict the
        choices (a schedule)."""

    def __call__(
        self, model: nn.Module, images: list[Tensor], targets: list[dict[str, Any]], step: int
    ) -> Iterator[dict[str, Tensor]]:
        body = self.supernet(unwrap(model))
        self.prepare(body, step)
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
            body.sample_active_subnet(subnet_rng(self.seed, step, k, self.rng_prefix))
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
        head_module = getattr(unwrap(model), "head", None)
        if not isinstance(head_module, nn.Module):
            raise ValueError(
                f"{type(unwrap(model)).__name__} has no .head: in-place distillation needs a "
                "one-stage detector (SSD, RetinaNet, FCOS) — set distill off for this detector"
            )
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


def fair_permutations(seed: int, step: int, num_blocks: int, num_choices: int) -> list[list[int]]:
    """The strict-fair order of global step ``step``: one independent random permutation of
    ``range(num_choices)`` per block (``perm[b][i]``: block ``b``'s choice in forward ``i``),
    a function of ``(seed, step)`` only."""
    rng = random.Random(f"nasdet.strict_fair/{seed}/{step}")
    return [rng.sample(range(num_choices), num_choices) for _ in range(num_blocks)]


class StrictFairHook:
    """FairNAS's strict-fair sampling as a Trainer ``step_hook``.

    Each optimizer step runs ``num_choices`` (``m``) forwards on the same batch; in forward ``i``
    block ``b`` runs choice ``perm[b][i]`` of :func:`fair_permutations` ``(seed, step, ...)``, so
    over one step every choice of every block is trained exactly once, and the Trainer
    accumulates the ``m`` gradients into one optimizer step. Every block must have the same
    number of choices (checked at the first step against the supernet's ``num_choices``).
    """

    def __init__(
        self,
        num_choices: int,
        *,
        seed: int = 0,
        supernet: Callable[[nn.Module], FairSupernet] = backbone_body,
    ) -> None:
        if num_choices < 1:
            raise ValueError(f"num_choices must be >= 1, got {num_choices}")
        self.num_choices = num_choices
        self.seed = seed
        self.supernet = supernet

    @property
    def forwards_per_step(self) -> int:
        """Forwards (loss dicts yielded) per step: the number of choices per block."""
        return self.num_choices

    def __call__(
        self, model: nn.Module, images: list[Tensor], targets: list[dict[str, Any]], step: int
    ) -> Iterator[dict[str, Tensor]]:
        body = self.supernet(unwrap(model))
        if body.num_choices != self.num_choices:
            raise ValueError(
                f"the supernet has {body.num_choices} choices per block, the strict-fair hook "
                f"was made for {self.num_choices}"
            )
        perms = fair_permutations(self.seed, step, body.num_blocks, self.num_choices)
        for i in range(self.num_choices):
            body.set_block_choices([perm[i] for perm in perms])
            yield model(images, targets)
