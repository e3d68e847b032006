"""DetNAS candidate scoring and cost on a trained supernet.

:func:`score_subnet` runs in an executor (in-process or a Ray worker): it loads the supernet once
per process, sets the candidate's path, recalibrates BN on training images and scores the path on
the search split. :class:`SubnetCost` measures the standalone subnet (backbone and whole
detector) before it is scored; :func:`check_limits` turns the config's limits into the check.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasdet import build
from nasdet.build import build_datasets, cached_for_scoring
from nasdet.engine.bn import recalibrate_detector_bn
from nasdet.engine.evaluate import evaluate
from nasdet.engine.train import resolve_device
from nasdet.methods.detnas.config import Model, TrainConfig
from nasdet.methods.detnas.space import ShuffleNetCode
from nasdet.search import supernet
from nasdet.search.supernet import supernet_spec


def load_model(path: str | Path) -> nn.Module:
    """A model file of a DetNAS run (the supernet, or a subnet)."""
    return build.load_model(path, Model)


def subnet_architecture(supernet: Model, code: ShuffleNetCode) -> Model:
    """The ``model`` section of the static subnet ``code`` of a supernet's ``model`` section."""
    return supernet.model_copy(update={"backbone": supernet_spec(supernet).subnet(code)})


@functools.lru_cache(maxsize=2)
def load_supernet(path: str, config_json: str) -> tuple[nn.Module, Any, dict[str, torch.Tensor]]:
    """The supernet detector, the datasets (their scoring and calibration images kept in memory:
    see :func:`~nasdet.build.cached_for_scoring`) and its pristine BN buffers (cached per
    process: a worker scores many candidates of the same supernet). ``config_json``: a Config
    dump."""

    cfg = TrainConfig.model_validate(json.loads(config_json))
    model = load_model(path)
    data = cached_for_scoring(build_datasets(cfg.data, seed=cfg.seed), cfg)
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    return model, data, buffers


def score_subnet(payload: dict[str, Any]) -> dict[str, Any]:
    """Score one subnet of a trained supernet (runs in an executor; plain data in and out).

    Payload: ``supernet`` (model file), ``config`` (a Config dump), ``genotype``, ``bn_mode``
    (recalibrate / train / none), ``calibrate_samples``, optionally ``splits`` (names among
    ``search``, ``val``). Returns ``metrics`` (COCO stats on the search split, or val when there
    is none) and, with ``splits``, ``per_split`` (the stats on each split named).
    """
    cfg = TrainConfig.model_validate(payload["config"])
    model, data, pristine = load_supernet(payload["supernet"], json.dumps(payload["config"]))
    model.load_state_dict(pristine, strict=False)  # BN statistics as trained, not as last scored
    model.backbone.body.set_active_subnet(ShuffleNetCode.parse(payload["genotype"]))
    device = resolve_device(cfg.train.device)
    model.to(device)
    mode = payload.get("bn_mode", "recalibrate")
    if mode == "recalibrate":
        recalibrate_detector_bn(
            model,
            data.train,
            num_samples=int(payload["calibrate_samples"]),
            batch_size=cfg.eval.batch_size,
            device=device,
            seed=cfg.seed,
        )
    default = "search" if data.search is not None else "val"
    splits = list(payload.get("splits") or [])
    per_split = {
        name: evaluate(
            model,
            getattr(data, name),
            batch_size=cfg.eval.batch_size,
            device=device,
            backend=cfg.eval.backend,
            bn_mode="train" if mode == "train" else "eval",
        )
        for name in dict.fromkeys([default, *splits])
    }
    if not splits:
        return {"metrics": per_split[default]}
    return {"metrics": per_split[default], "per_split": {k: per_split[k] for k in splits}}


class SubnetCost(supernet.SubnetCost):
    """The cost of a ShuffleNetV2 subnet's standalone detector (``supernet``: the run's model
    section), cached per code."""

    def architecture(self, genotype: ShuffleNetCode) -> Model:
        return subnet_architecture(self.supernet, genotype)
