"""The supernet protocol, and standalone subnets of a supernet detector.

A weight-sharing supernet backbone (DetNAS's ShuffleNetV2, OFA's elastic MobileNet...) is an
``nn.Module`` with three methods, as Once-for-All names them:

- ``set_active_subnet(genotype)``: forward runs that subnet from now on;
- ``sample_active_subnet(rng) -> genotype``: draw a subnet (``random.Random``), make it active;
- ``get_active_subnet(preserve_weight=True) -> nn.Module``: a standalone static backbone of the
  active subnet, its weights copied (sliced) from the supernet; it shares nothing with it.

Its config section is a :class:`~nasdet.config.SupernetSpec`, which parses genotypes and names
the static subnet's section. :func:`export_subnet` uses only these, for every method.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import nn

from nasdet.build import build_detector
from nasdet.config import ModelConfig, SupernetSpec
from nasdet.models.io import load_state_dict_checked
from nasdet.search.constraints import Constraints, cost_for

BODY = "backbone.body."  # where a detector keeps its backbone body (torchvision's layout)


def body_prefix(detector: nn.Module) -> str:
    """Where ``detector`` keeps its backbone body in its state dict: :data:`BODY` when its
    backbone wraps one (``backbone.body``), else ``"backbone."`` (YOLOv3 runs its body as its
    backbone)."""
    return BODY if hasattr(detector.backbone, "body") else "backbone."


@runtime_checkable
class Supernet(Protocol):
    """A backbone that holds many subnets (see the module docstring)."""

    def set_active_subnet(self, genotype: Any) -> None: ...

    def sample_active_subnet(self, rng: random.Random) -> Any: ...

    def get_active_subnet(self, preserve_weight: bool = True) -> nn.Module: ...


def supernet_spec(arch: ModelConfig) -> SupernetSpec:
    """``arch.backbone`` when it is a supernet section, else ``ValueError`` naming it."""
    if not isinstance(arch.backbone, SupernetSpec):
        raise ValueError(f"backbone {arch.backbone.name} is not a supernet")
    return arch.backbone


def _skipped_in(model: nn.Module, key: str) -> bool:
    """Whether the parameter or buffer ``key`` of the supernet detector lies, in ``model``, under
    an ``nn.Identity`` (a head conv the subnet skips): it has no place there. Any other key
    ``model`` lacks stays, so that loading still refuses it."""
    module: nn.Module | None = model
    for name in key.split(".")[:-1]:
        module = module._modules.get(name) if module is not None else None
        if module is None:
            return False
        if isinstance(module, nn.Identity):
            return True
    return False


def export_subnet(
    supernet: nn.Module, arch: ModelConfig, genotype: Any, num_classes: int
) -> tuple[nn.Module, ModelConfig]:
    """A standalone detector of ``genotype`` from a supernet detector.

    The backbone body comes from the supernet's ``get_active_subnet()`` (weights as the supernet
    holds them now, BN statistics included: recalibrate before exporting to keep the subnet's);
    neck and head are copied by name (those the subnet has: the model section is the spec's
    :meth:`~nasdet.config.SupernetSpec.subnet_model`, which may skip head convs). Leaves
    ``genotype`` active in ``supernet``.

    Args:
        supernet: a detector whose ``backbone.body`` (or ``backbone``, see :func:`body_prefix`)
            follows the :class:`Supernet` protocol.
        arch: the supernet detector's ``model`` section (``backbone`` a SupernetSpec).
        genotype: the subnet, as the spec's ``parse_genotype`` returns it.
        num_classes: classes of the detector, background included.

    Returns:
        The detector (eval mode) and its ``model`` section.
    """
    spec = supernet_spec(arch)
    prefix = body_prefix(supernet)
    body = supernet.get_submodule(prefix.rstrip("."))
    if not isinstance(body, Supernet):
        raise TypeError(f"{type(body).__name__} does not follow the supernet protocol")
    body.set_active_subnet(genotype)
    static = body.get_active_subnet(preserve_weight=True)
    sub_arch = spec.subnet_model(arch, genotype)
    model = build_detector(sub_arch, num_classes, load_weights=False)
    state = {
        k: v
        for k, v in supernet.state_dict().items()
        if not k.startswith(prefix) and not _skipped_in(model, k)
    }
    state.update({prefix + k: v for k, v in static.state_dict().items()})
    load_state_dict_checked(model, state, f"supernet (subnet {genotype})")
    return model.eval(), sub_arch


@dataclass
class SubnetCost(ABC):
    """The cost dict of a subnet's standalone detector (params and FLOPs of the detector and its
    backbone, plus what the constraints need measured: latency, training memory), cached per
    genotype string. A method subclasses it with :meth:`architecture`, the model section of the
    subnet's standalone detector. ``input_size``/``batch_size``: the run's defaults when the
    constraints set none."""

    supernet: Any
    num_classes: int
    constraints: Constraints
    input_size: int
    batch_size: int
    optimizer: str = "sgd"
    _cache: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)

    @abstractmethod
    def architecture(self, genotype: Any) -> ModelConfig:
        """The model section of ``genotype``'s standalone detector."""

    def __call__(self, genotype: Any) -> dict[str, float]:
        key = str(genotype)
        if key not in self._cache:
            arch = self.architecture(genotype)
            model = build_detector(arch, self.num_classes, load_weights=False).eval()
            self._cache[key] = cost_for(
                model,
                self.constraints,
                input_size=self.input_size,
                batch_size=self.batch_size,
                optimizer=self.optimizer,  # type: ignore[arg-type]
            )
        return self._cache[key]
