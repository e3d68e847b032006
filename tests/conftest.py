"""Shared fixtures: a small bundled-digits set made once per test session, a local Ray instance
per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nasdet.data import make_digits


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits detection set with 32 train and 12 val images of 96 px."""
    root = tmp_path_factory.mktemp("digits")
    return make_digits(root, train=32, val=12, size=96, seed=0)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A small local Ray instance (2 CPUs, no dashboard), shut down after the module using it."""
    import ray

    assert not ray.is_initialized(), "a previous test left Ray running"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def tiny_supernet_model() -> dict:
    """The ``model`` section of a tiny DetNAS supernet detector (RetinaNet, 96 px)."""
    return {
        "detector": "retinanet",
        "backbone": {
            "name": "shufflenet_supernet",
            "width_mult": 0.25,
            "depths": [1, 2, 2, 1],
            "levels": [3, 4, 5],
        },
        "fpn_channels": 16,
        "anchor_base": 2.0,
        "min_size": 96,
        "max_size": 96,
    }


def tiny_config(digits_root: Path, **train: object) -> dict:
    """A config dict for a small FCOS that trains in seconds on :func:`digits_root`."""
    return {
        "seed": 0,
        "data": {"format": "digits", "root": str(digits_root), "train": 32, "val": 12, "size": 96},
        "model": {
            "detector": "fcos",
            "backbone": {"name": "resnet18", "width_mult": 0.25},
            "fpn_channels": 32,
            "min_size": 96,
            "max_size": 96,
        },
        "train": {"epochs": 2, "batch_size": 8, "warmup_iters": 2, "tensorboard": False, **train},
        "eval": {"batch_size": 12},
    }
