"""OFA candidate scoring and cost on a trained supernet.

A search worker (a Ray actor, or this process) runs :func:`setup` once: it loads the supernet
detector and the datasets. :func:`score_subnet` then scores one genotype: the subnet is made
active, its BN statistics are re-estimated on training images (the supernet's own are restored
first, so each score depends on its genotype alone) and it is evaluated on the search split.
:class:`SubnetCost` measures the standalone subnet detector before it is scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasdet import build
from nasdet.build import build_datasets, cached_for_scoring
from nasdet.engine.bn import recalibrate_detector_bn
from nasdet.engine.evaluate import evaluate
from nasdet.engine.train import resolve_device
from nasdet.methods.ofa.config import Model, TrainConfig
from nasdet.methods.ofa.cost_table import CostTable, measure_table
from nasdet.methods.ofa.space import OFAGenotype
from nasdet.search import supernet
from nasdet.search.constraints import needs
from nasdet.search.supernet import supernet_spec


def load_model(path: str | Path) -> nn.Module:
    """A model file of an OFA run (the supernet detector, or a subnet detector)."""
    return build.load_model(path, Model)


def subnet_architecture(supernet: Model, genotype: OFAGenotype) -> Model:
    """The ``model`` section of the static subnet ``genotype`` of a supernet's section."""
    return supernet.model_copy(update={"backbone": supernet_spec(supernet).subnet(genotype)})


@dataclass
class ScoringState:
    """What a worker keeps between candidates: the supernet, the data, the trained BN buffers."""

    model: nn.Module
    data: Any
    pristine: dict[str, torch.Tensor]
    config: Any


def setup(payload: dict[str, Any]) -> ScoringState:
    """Load the supernet (``payload["supernet"]``, a model file) and the datasets of
    ``payload["config"]`` (a training config dump; the images read for every candidate kept in
    memory, see :func:`~nasdet.build.cached_for_scoring`): once per worker."""
    cfg = TrainConfig.model_validate(payload["config"])
    model = load_model(payload["supernet"])
    data = cached_for_scoring(build_datasets(cfg.data, seed=cfg.seed), cfg)
    pristine = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    return ScoringState(model, data, pristine, cfg)


def score_subnet(state: ScoringState, payload: dict[str, Any]) -> dict[str, Any]:
    """Score ``payload["genotype"]`` (compact string): COCO metrics on the search split (val
    when there is none) after BN recalibration on ``calibrate_samples`` training images."""
    cfg = state.config
    model = state.model
    model.load_state_dict(state.pristine, strict=False)
    model.backbone.body.set_active_subnet(OFAGenotype.parse(payload["genotype"]))
    device = resolve_device(cfg.train.device)
    model.to(device)
    if payload.get("bn_mode", "recalibrate") == "recalibrate":
        recalibrate_detector_bn(
            model,
            state.data.train,
            num_samples=int(payload["calibrate_samples"]),
            batch_size=cfg.eval.batch_size,
            device=device,
            seed=cfg.seed,
        )
    scored_on = state.data.search if state.data.search is not None else state.data.val
    metrics = evaluate(
        model, scored_on, batch_size=cfg.eval.batch_size, device=device, backend=cfg.eval.backend
    )
    return {"metrics": metrics}


def score_once(payload: dict[str, Any]) -> dict[str, Any]:
    """:func:`setup` then :func:`score_subnet` (for one-off scoring, e.g. benchmarks)."""
    return score_subnet(setup(payload), payload)


def payload_for(supernet: Path, config: dict[str, Any], bn_mode: str, samples: int) -> dict:
    """The plain data :func:`setup` and :func:`score_subnet` read (without the genotype)."""
    return {
        "supernet": str(supernet),
        "config": json.loads(json.dumps(config)),
        "bn_mode": bn_mode,
        "calibrate_samples": samples,
    }


@dataclass
class SubnetCost(supernet.SubnetCost):
    """The cost of an OFA subnet's standalone detector (``supernet``: the run's model section),
    cached per genotype. When the constraints need no measurement (latency, memory), from the
    :class:`~nasdet.methods.ofa.cost_table.CostTable` (measured once, the same numbers)."""

    _table: CostTable | None = None

    def architecture(self, genotype: OFAGenotype) -> Model:
        return subnet_architecture(self.supernet, genotype)

    def __call__(self, genotype: OFAGenotype) -> dict[str, float]:
        if needs(self.constraints):
            return super().__call__(genotype.canonical())
        if self._table is None:  # params and FLOPs only: the cost table's sums
            size = self.constraints.input_size or self.input_size
            self._table = measure_table(self.supernet, self.num_classes, size)
        return self._table(genotype)
