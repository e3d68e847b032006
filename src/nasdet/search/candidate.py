"""Evaluate one candidate architecture: build it, inherit its parent's weights, train it for a
few epochs, score it on the search split and write a loadable model file.

:func:`evaluate_candidate` takes and returns plain data so that any executor (in-process or a Ray
worker on another machine) can run it; the driver commits the result to the record store.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import nasdet
from nasdet.build import build_datasets, build_detector, make_trainer
from nasdet.config import Config, ModelConfig
from nasdet.cost import detector_cost, measure_latency
from nasdet.engine.evaluate import evaluate
from nasdet.engine.train import resolve_device
from nasdet.models.io import save_model
from nasdet.models.serial import SerialBackbone, inherit_weights

log = logging.getLogger(__name__)


def transfer_weights(child: nn.Module, parent: nn.Module) -> tuple[int, int, set[str]]:
    """Copy every parent tensor into ``child`` where it fits.

    Serial backbones inherit by (stage, block) position with identity-initialised new blocks
    (:func:`~nasdet.models.serial.inherit_weights`); everything else (neck, heads) by name and
    shape. Returns (inherited tensors, new tensors, names of inherited parameters).
    """
    child_state, parent_state = child.state_dict(), parent.state_dict()
    inherited: set[str] = set()
    c_body = getattr(getattr(child, "backbone", None), "body", None)
    p_body = getattr(getattr(parent, "backbone", None), "body", None)
    if isinstance(c_body, SerialBackbone) and isinstance(p_body, SerialBackbone):
        report = inherit_weights(c_body, p_body)
        inherited |= {f"backbone.body.{k}" for k in report.inherited}
        child_state = child.state_dict()
    update = {
        k: v
        for k, v in parent_state.items()
        if k not in inherited and k in child_state and child_state[k].shape == v.shape
    }
    child_state.update(update)
    child.load_state_dict(child_state)
    inherited |= set(update)
    return len(inherited), len(child_state) - len(inherited), inherited


def candidate_cost(model: nn.Module, size: int, *, latency: bool = False) -> dict[str, float]:
    """Params and FLOPs/MACs (whole detector and backbone) at ``size`` x ``size`` input; with
    ``latency``, also ``latency_ms``: the median CPU latency of one image (torch.benchmark)."""
    cost = detector_cost(model, (size, size))
    keys = ("params", "flops", "macs", "backbone_params", "backbone_flops", "backbone_macs")
    out = {k: float(getattr(cost, k)) for k in keys}
    if latency:
        image = torch.rand(3, size, size)
        out["latency_ms"] = measure_latency(model, [image], min_run_time=0.3).median_ms
    return out


def evaluate_candidate(payload: dict[str, Any]) -> dict[str, Any]:
    """Train and score one candidate.

    Payload keys: ``config`` (a :class:`~nasdet.config.Config` dump: data, train, eval, seed),
    ``architecture`` (the candidate's ``model`` section), ``parent_weights`` (a nasdet model
    file or None), ``out`` (model file to write), ``epochs``, ``freeze_inherited`` (bool),
    ``lr_scale`` (multiplies train.lr). Returns ``metrics`` (COCO stats on the search split, or
    val when there is none), ``cost``, ``weights_path``, ``inherited``, ``new`` and
    ``train_seconds``.
    """
    cfg = Config.model_validate(payload["config"])
    arch = ModelConfig.model_validate(payload["architecture"])
    torch.manual_seed(cfg.seed)
    data = build_datasets(cfg.data, seed=cfg.seed)
    model = build_detector(arch, len(data.categories) + 1)
    inherited, new = 0, sum(1 for _ in model.state_dict())
    if payload.get("parent_weights"):
        parent = nasdet.load_model(payload["parent_weights"])
        inherited, new, names = transfer_weights(model, parent)
        if payload.get("freeze_inherited"):  # the seed's freeze_swap_keys
            for name, param in model.named_parameters():
                if name in names:
                    param.requires_grad_(False)
    out = Path(payload["out"])
    seconds = train_model(
        model,
        data.train,
        cfg,
        epochs=int(payload["epochs"]),
        work_dir=out.parent,
        lr_scale=float(payload.get("lr_scale", 1.0)),
    )
    device = resolve_device(cfg.train.device)
    scored_on = data.search if data.search is not None else data.val
    metrics = evaluate(
        model, scored_on, batch_size=cfg.eval.batch_size, device=device, backend=cfg.eval.backend
    )
    model.cpu()
    for p in model.parameters():
        p.requires_grad_(True)
    cost = candidate_cost(model, arch.min_size)
    save_model(
        out,
        model,
        architecture=arch.model_dump(mode="json"),
        categories=data.categories,
        cat_ids=data.cat_ids,
        meta={"metrics": metrics, "cost": cost},
    )
    return {
        "metrics": metrics,
        "cost": cost,
        "weights_path": str(out),
        "inherited": inherited,
        "new": new,
        "train_seconds": seconds,
    }


def train_model(
    model: nn.Module,
    train_set: Any,
    cfg: Config,
    *,
    epochs: int,
    work_dir: Path,
    lr_scale: float = 1.0,
) -> float:
    """Train ``model`` for ``epochs`` (cfg.train's optimizer and schedule); seconds spent.

    The per-epoch checkpoint lives in a private temporary folder under ``work_dir`` (several
    candidates may train at once) and is removed afterwards.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".train-") as tmp:
        trainer = make_trainer(
            model, train_set, cfg, Path(tmp), epochs=epochs, lr_scale=lr_scale, tensorboard=False
        )
        start = time.perf_counter()
        trainer.fit()
        return time.perf_counter() - start
