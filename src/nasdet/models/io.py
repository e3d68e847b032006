"""Model files and weights.

A *model file* (``model.pt``) is what nasdet writes after training: a dict holding the model's
architecture description (the ``model`` config section as plain data), the dataset's categories
and the state dict. :func:`nasdet.load_model` rebuilds the detector from it. Everything is loaded
with ``torch.load(weights_only=True)``: only files the user names, never pickled code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasdet.atomic import open_atomic
from nasdet.errors import CheckpointError

MODEL_FORMAT = "nasdet.model"
MODEL_VERSION = 1
_PREFIXES = ("module.", "features.", "backbone.body.", "body.")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename over it (atomic)."""
    with open_atomic(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def read_weights(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with a one-line error for a bad or missing file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found — check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot be read as a weights file ({first[:200]}) — pass a state dict saved "
            "with torch.save"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def load_state_dict_checked(module: nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Load ``state`` strictly; the error names the first missing/unexpected key or bad shape."""
    own = module.state_dict()
    for key, value in own.items():
        if key not in state:
            raise CheckpointError(
                f"{source}: key '{key}' is missing — the file is for another model"
            )
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{source}: '{key}' has shape {tuple(state[key].shape)}, the model needs "
                f"{tuple(value.shape)} — the file is for another architecture"
            )
    extra = [k for k in state if k not in own]
    if extra:
        raise CheckpointError(
            f"{source}: unexpected key '{extra[0]}' — the file is for another model"
        )
    module.load_state_dict(state, strict=True)


def read_state_dict(
    path: str | Path, wrappers: tuple[str, ...] = ("state_dict",)
) -> dict[str, Any]:
    """:func:`read_weights`, unwrapped: the dict under the first of ``wrappers`` that holds one
    (peers save ``{"state_dict": ...}``, some ``{"model": ...}``), else the file's dict."""
    obj = read_weights(path)
    for key in wrappers:
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def load_backbone_weights(body: nn.Module, path: str | Path) -> None:
    """Load a classification state dict (e.g. torchvision's ``resnet18`` file) into ``body`` by
    parameter name. Keys the backbone does not have (``fc.*``, ``classifier.*``) are ignored;
    prefixes ``module.``/``features.`` are stripped. Every backbone key must be present."""
    state = read_state_dict(path, ("state_dict", "model"))
    renamed: dict[str, Any] = {}
    own = body.state_dict()
    for key, value in state.items():
        name = key
        while name not in own and name.startswith(_PREFIXES):
            name = name.split(".", 1)[1]
        if name in own:
            renamed[name] = value
    load_state_dict_checked(body, renamed, str(path))


def save_model(
    path: str | Path,
    model: nn.Module,
    *,
    architecture: dict[str, Any],
    categories: list[str],
    cat_ids: list[int],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a model file (atomic). ``architecture`` is the plain-data ``model`` config section."""
    return atomic_save(
        {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "architecture": architecture,
            "categories": list(categories),
            "cat_ids": [int(c) for c in cat_ids],
            "meta": meta or {},
            "state_dict": model.state_dict(),
        },
        path,
    )


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The contents of a model file, checked for format and version."""
    obj = read_weights(path)
    if obj.get("format") != MODEL_FORMAT:
        raise CheckpointError(
            f"{path}: not a nasdet model file (no format '{MODEL_FORMAT}') — pass a model.pt "
            "written by nasdet; a training checkpoint is resumed with `nasdet train --resume`"
        )
    if obj.get("version") != MODEL_VERSION:
        raise CheckpointError(f"{path}: model file version {obj.get('version')} is not supported")
    return obj
