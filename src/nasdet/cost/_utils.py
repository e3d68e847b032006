"""Small helpers shared by the cost modules (not part of the public API)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block and restore every submodule's training flag."""
    flags = {name: sub.training for name, sub in module.named_modules()}
    module.eval()
    try:
        yield module
    finally:
        for name, sub in module.named_modules():
            if name in flags:
                sub.training = flags[name]


def module_device(module: nn.Module) -> torch.device:
    """Device of the module's first parameter or buffer; CPU for a module that holds neither."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def to_device(value: Any, device: torch.device) -> Any:
    """Move every tensor inside nested lists, tuples and dicts to ``device``."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return type(value)((k, to_device(v, device)) for k, v in value.items())
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(to_device(v, device) for v in value))
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    return value


def flatten_tensors(value: Any) -> list[Tensor]:
    """Tensors of a nested output (dict values in order, list/tuple items), depth first."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in flatten_tensors(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in flatten_tensors(v)]
    raise TypeError(f"module output contains a {type(value).__name__}, expected tensors only")
