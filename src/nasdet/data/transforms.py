"""Detection transforms (``torchvision.transforms.v2``) for the nasdet datasets.

Inputs are a PIL image and a target dict holding ``tv_tensors.BoundingBoxes``; outputs a
``tv_tensors.Image`` float32 in [0, 1] and the (transformed) target.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

__all__ = ["eval_transforms", "train_transforms"]


def train_transforms(*, hflip: float = 0.0) -> v2.Compose:
    """Training transforms: to float image, horizontal flip with probability ``hflip``, sanitize.

    ``hflip`` defaults to 0 because the bundled digits must not be mirrored (a mirrored 2 is not a
    2); use 0.5 for natural images. ``SanitizeBoundingBoxes`` drops boxes smaller than 1 px (and
    their labels) after the geometric transforms.
    """
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"hflip is a probability in [0, 1], got {hflip}")
    steps: list[v2.Transform] = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    steps.append(v2.SanitizeBoundingBoxes())
    return v2.Compose(steps)


def eval_transforms() -> v2.Compose:
    """Evaluation transforms: to a float32 image in [0, 1]; boxes untouched."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
