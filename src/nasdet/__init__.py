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
    from nasdet.build import build_detector
    from nasdet.config import ModelConfig
    from nasdet.models.io import load_state_dict_checked, read_model_file

    obj = read_model_file(path)
    cfg = ModelConfig.model_validate(obj["architecture"])
    model = build_detector(cfg, len(obj["categories"]) + 1, load_weights=False)
    load_state_dict_checked(model, obj["state_dict"], str(path))
    model.categories = list(obj["categories"])
    model.cat_ids = list(obj["cat_ids"])
    model.nasdet_meta = dict(obj["meta"])
    return model.to(map_location).eval()
