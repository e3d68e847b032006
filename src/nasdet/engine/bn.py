"""BatchNorm statistics for weight-sharing search.

A subnet taken from a supernet (or a candidate trained for a few steps) carries running statistics
that do not match its own activations; it must be scored with statistics of its own:

- :func:`recalibrate_bn` / :func:`recalibrate_detector_bn` re-estimate the running statistics
  from a few batches (Once-for-All, SPOS): reset, then a cumulative average over the batches;
- :func:`bn_batch_stats` scores with the statistics of each batch instead, leaving the running
  statistics untouched (MMRazor's "BN in train mode").

Only ``torch.nn.modules.batchnorm._BatchNorm`` layers that track running statistics are touched
(``BatchNorm1d/2d/3d``, ``SyncBatchNorm``); ``FrozenBatchNorm2d`` holds constants and is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, Subset

from nasdet.data import collate

log = logging.getLogger(__name__)


def bn_layers(module: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``module`` that keep running statistics, in module order."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _modes(module: nn.Module) -> dict[nn.Module, bool]:
    return {m: m.training for m in module.modules()}


def _restore_modes(modes: dict[nn.Module, bool]) -> None:
    for m, training in modes.items():
        m.training = training


def recalibrate_bn(module: nn.Module, batches: Iterable[Tensor]) -> int:
    """Re-estimate the running statistics of every BatchNorm of ``module`` from ``batches``.

    The statistics are reset, then each BN averages the batch statistics cumulatively
    (``momentum=None``): ``running_mean`` is the mean of the per-batch means and ``running_var``
    the mean of the per-batch unbiased variances. Only the BN layers run in train mode (dropout
    and the like stay in eval mode); the batches go through ``module(batch)`` under
    ``torch.no_grad()`` and must already be on the module's device. Every module's training flag
    and each BN's momentum are restored afterwards, also on error.

    Returns the number of images (first dimension of each batch) seen; 0, without running the
    module, when it has no BatchNorm layer.
    """
    bns = bn_layers(module)
    if not bns:
        return 0
    modes, momenta = _modes(module), [bn.momentum for bn in bns]
    seen = 0
    try:
        module.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad():
            for batch in batches:
                module(batch)
                seen += int(batch.shape[0])
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
    """Recalibrate the BatchNorm statistics of a torchvision detector's backbone.

    ``num_samples`` images (a random subset seeded by ``seed``; all of them when the dataset is
    smaller) of ``dataset`` — ``(image, target)`` items, evaluation transforms advised — go
    through the detector's own ``transform`` (resize and normalise, in eval mode: deterministic,
    no targets needed) and then :func:`recalibrate_bn` on ``detector.backbone``; only the
    backbone of a nasdet detector has BatchNorm. The detector is moved to ``device``; training
    flags are restored. Returns the number of images seen (0 when the backbone has no BN).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not bn_layers(detector.backbone):
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
    modes = _modes(detector)
    detector.eval().to(device)

    def backbone_inputs() -> Iterator[Tensor]:
        for images, _ in loader:
            with torch.no_grad():
                yield detector.transform([img.to(device) for img in images])[0].tensors

    try:
        return recalibrate_bn(detector.backbone, backbone_inputs())
    finally:
        _restore_modes(modes)


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
