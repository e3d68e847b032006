"""nasdet: neural architecture search for object detectors, on torchvision."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]


def load_model(path: str | Path, *, map_location: str = "cpu") -> nn.Module:
    """Rebuild a detector from a model file nasdet wrote, ready in eval mode.

    The returned module carries ``categories`` (class names, label ``i + 1`` is
    ``categories[i]``), ``cat_ids`` (the dataset's category ids) and ``nasdet_meta``.
    """
    from nasdet import build, methods

    return build.load_model(path, methods.Model, map_location=map_location)
