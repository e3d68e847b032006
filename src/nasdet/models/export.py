"""Standalone subnets of a one-shot supernet detector.

A DetNAS supernet detector (backbone ``shufflenet_supernet``) holds every candidate unit of every
block. :func:`export_subnet` turns it and a genotype into an ordinary detector whose backbone is
the static ``shufflenet_nas`` network of that genotype, with the supernet's weights copied: the
result is saved with :func:`nasdet.models.io.save_model` and loads with :func:`nasdet.load_model`
without the supernet.
"""

from __future__ import annotations

from torch import nn

from nasdet.config import ModelConfig
from nasdet.models.io import load_state_dict_checked
from nasdet.models.shufflenet import subnet_state_dict
from nasdet.spaces.shufflenet import ShuffleNetCode


def subnet_architecture(supernet: ModelConfig, code: ShuffleNetCode) -> ModelConfig:
    """The ``model`` section of the static subnet ``code`` of a supernet's ``model`` section."""
    if supernet.backbone.name != "shufflenet_supernet":
        raise ValueError(f"not a supernet architecture (backbone {supernet.backbone.name})")
    backbone = supernet.backbone.model_copy(
        update={"name": "shufflenet_nas", "code": str(code), "depths": None, "weights": None}
    )
    return supernet.model_copy(update={"backbone": backbone})


def export_subnet(
    supernet_detector: nn.Module, supernet: ModelConfig, code: ShuffleNetCode, num_classes: int
) -> tuple[nn.Module, ModelConfig]:
    """A standalone detector for ``code`` with the supernet detector's weights (BN statistics
    included, as they are in the supernet now: recalibrate before exporting to keep those of the
    subnet). Returns the detector (eval mode) and its ``model`` section."""
    from nasdet.build import build_detector

    arch = subnet_architecture(supernet, code)
    model = build_detector(arch, num_classes, load_weights=False)
    state = subnet_state_dict(supernet_detector.state_dict(), code)
    load_state_dict_checked(model, state, f"supernet (subnet {code})")
    return model.eval(), arch
