"""BatchNorm statistics for weight-sharing search.

A subnet taken from a supernet (or a candidate trained for a few steps) carries running statistics
that do not match its own activations; it must be scored with statistics of its own:

- :func:`recalibrate_bn` / :func:`recalibrate_detector_bn` re-estimate the running statistics
  from a few batches (Once-for-All, SPOS): reset, then a cumulative average over the batches,
  computed by ``torch.optim.swa_utils.update_bn``; for a detector, every BatchNorm layer is
  recalibrated (backbone, FPN / extra levels and heads: SSDLite's head has BN, and so do
  RetinaNet / FCOS / Faster R-CNN heads built with a BatchNorm ``norm_layer``);
- :func:`bn_batch_stats` scores with the statistics of each batch instead, leaving the running
  statistics untouched (MMRazor's "BN in train mode").

Only ``torch.nn.modules.batchnorm._BatchNorm`` layers that track running statistics are touched
(``BatchNorm1d/2d/3d``, ``SyncBatchNorm``); ``FrozenBatchNorm2d`` holds constants and is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD

from nasdet.data import collate
from nasdet.progress import track

log = logging.getLogger(__name__)


def bn_layers(module: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``module`` that keep running statistics, in module order."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _modes(module: nn.Module) -> dict[nn.Module, bool]:
    return {m: m.training for m in module.modules()}


def _restore_modes(modes: dict[nn.Module, bool]) -> None:
    for m, training in modes.items():
        m.training = training


class _HeadDone(Exception):
    """Raised after a single-stage detector's head: what follows has no BatchNorm."""


def _raise_head_done(module: nn.Module, args: Any, output: Any) -> None:
    raise _HeadDone


class _OnlyBNTrains(nn.Module):
    """``module`` as ``update_bn`` sees it: ``train()`` switches only the BatchNorm layers (all
    other layers stay in eval mode), and ``forward(x)`` is ``module(x)``, cut short once
    ``stop_after`` (a submodule, optional) has run."""

    def __init__(self, module: nn.Module, stop_after: nn.Module | None = None) -> None:
        super().__init__()
        self.module = module
        self.stop_after = [stop_after] if stop_after is not None else []  # not a submodule

    def train(self, mode: bool = True) -> _OnlyBNTrains:
        self.training = mode
        self.module.eval()
        for bn in bn_layers(self.module):
            bn.train(mode)
        return self

    def forward(self, x: Any) -> Any:
        if not self.stop_after:
            return self.module(x)
        handle = self.stop_after[0].register_forward_hook(_raise_head_done)
        try:
            return self.module(x)
        except _HeadDone:
            return None
        finally:
            handle.remove()


def recalibrate_bn(
    module: nn.Module, batches: Iterable[Any], *, stop_after: nn.Module | None = None
) -> int:
    """Re-estimate the running statistics of every BatchNorm of ``module`` from ``batches``.

    The statistics are reset and each BN averages the batch statistics cumulatively
    (``momentum=None``): ``running_mean`` is the mean of the per-batch means and ``running_var``
    the mean of the per-batch unbiased variances, per channel (a BN called several times per
    batch, like a head shared by the levels, averages over its calls). This is what
    ``torch.optim.swa_utils.update_bn`` computes, so it does the work, but through a wrapper:
    ``update_bn`` puts the whole model in train mode and restores one flag afterwards, which
    would run dropout, lose a mix of modes, and make a torchvision detector demand targets,
    compute losses and resize at random sizes. Here only the BN layers train; every other layer
    (a detector included) stays in eval mode.

    Each batch is a Tensor (first dimension: images) or a list of image Tensors (a detector's
    input), already on the module's device; it goes through ``module(batch)`` under
    ``torch.no_grad()``, cut short once the submodule ``stop_after`` (optional) has run, and
    the output is dropped. Every module's training flag and each BN's momentum are restored
    afterwards, also on error.

    Returns the number of images seen; 0, without running the module, when it has no BatchNorm.
    """
    bns = bn_layers(module)
    if not bns:
        return 0
    modes, momenta = _modes(module), [bn.momentum for bn in bns]
    seen = 0

    def counted() -> Iterator[tuple[Any]]:
        nonlocal seen
        for batch in batches:
            seen += len(batch)
            yield (batch,)  # update_bn feeds model(batch[0]) for a tuple

    try:
        update_bn(counted(), _OnlyBNTrains(module, stop_after))
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        _restore_modes(modes)
    return seen


def recalibrate_detector_bn(
    detector: nn.Module,
    dataset: Dataset,
    *,
    num_samples: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> int:
    """Recalibrate every BatchNorm of a torchvision detector (backbone, neck and heads).

    ``num_samples`` images (a random subset seeded by ``seed``; all of them when the dataset is
    smaller) of ``dataset`` — ``(image, target)`` items, evaluation transforms advised — go, in
    batches of ``batch_size``, through the whole detector in eval mode (its own deterministic
    resize and normalisation, no targets, box decoding and NMS included) with only the BN layers
    training: see :func:`recalibrate_bn`. A single-stage detector (RetinaNet, FCOS, SSD) stops
    after its head: anchors, box decoding and NMS, which hold no BN, are skipped. The detector
    is moved to ``device``; training flags are restored. Returns the number of images seen (0
    when the detector has no BN).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not bn_layers(detector):
        return 0
    device = torch.device(device)
    n = min(num_samples, len(dataset))
    if n < num_samples:
        log.info("BN recalibration: the dataset has only %d images (asked for %d)", n, num_samples)
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:n].tolist()
    loader = DataLoader(
        Subset(dataset, indices), batch_size=batch_size, shuffle=False, collate_fn=collate
    )
    detector.to(device)
    tracked = track(loader, "BN recalibration")
    batches = ([img.to(device) for img in images] for images, _ in tracked)
    head = detector.head if isinstance(detector, RetinaNet | FCOS | SSD) else None
    return recalibrate_bn(detector, batches, stop_after=head)


@contextmanager
def bn_batch_stats(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every BatchNorm of ``module`` normalises with the statistics of the batch
    it sees (train mode) while its running statistics stay exactly as they were (momentum 0, and
    ``num_batches_tracked`` is put back). Other layers keep their mode: call ``module.eval()``
    first to score with "BN in train mode". Modes and momenta are restored on exit.

    Results then depend on the batch: score with the same batch size for every candidate.
    """
    bns = bn_layers(module)
    saved = [(bn.training, bn.momentum, _clone(bn.num_batches_tracked)) for bn in bns]
    try:
        for bn in bns:
            bn.momentum = 0.0
            bn.train()
        yield module
    finally:
        for bn, (training, momentum, tracked) in zip(bns, saved, strict=True):
            bn.train(training)
            bn.momentum = momentum
            if tracked is not None:
                bn.num_batches_tracked.copy_(tracked)


def _clone(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().clone()
