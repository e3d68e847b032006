"""Evaluate one candidate architecture: build it, inherit its parent's weights, train it for a
few epochs, score it on the search split and write a loadable model file.

:func:`evaluate_candidate` takes and returns plain data so that any executor (in-process or a Ray
worker on another machine) can run it; the driver commits the result to the record store.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nasdet import build
from nasdet.build import build_datasets, build_detector, make_trainer
from nasdet.cost import measure_cost
from nasdet.engine.evaluate import evaluate
from nasdet.engine.train import resolve_device
from nasdet.methods.spnas.config import Model, TrainConfig
from nasdet.methods.spnas.nets import SerialBackbone, inherit_weights
from nasdet.models.io import save_model

log = logging.getLogger(__name__)


def load_model(path: str | Path) -> nn.Module:
    """A model file of an SP-NAS run (serial backbones, parallel necks, torchvision's)."""
    return build.load_model(path, Model)


@dataclass(frozen=True)
class Transfer:
    """What :func:`transfer_weights` copied into a child from its parent (state-dict keys).

    Attributes:
        inherited: child tensors copied from the parent.
        new: child tensors the parent has no tensor of that name for (left at initialisation;
            new serial blocks start as identity morphisms).
        reshaped: child tensors whose parent tensor of the same name has another shape (left
            at initialisation), as ``(name, child shape, parent shape)``.
    """

    inherited: frozenset[str]
    new: tuple[str, ...]
    reshaped: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]

    def summary(self) -> str:
        """One line naming what was left at initialisation."""
        parts = [f"inherited {len(self.inherited)} tensors"]
        if self.new:
            parts.append(f"{len(self.new)} new ({_first(self.new)})")
        if self.reshaped:
            shown = [f"{n} {tuple(c)} vs parent {tuple(p)}" for n, c, p in self.reshaped]
            parts.append(f"{len(self.reshaped)} reshaped ({_first(shown)})")
        return ", ".join(parts)


def _first(names: Sequence[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f", … {len(names) - k} more" if len(names) > k else "")


def transfer_weights(child: nn.Module, parent: nn.Module) -> Transfer:
    """Copy every parent tensor into ``child`` where it fits, and say what did not.

    Serial backbones inherit by (stage, block) position with identity-initialised new blocks
    (:func:`~nasdet.methods.spnas.nets.inherit_weights`); everything else (neck, heads) by name,
    where the shapes match. The tensors left at initialisation are logged and returned.
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
    child.load_state_dict(child_state, strict=True)
    inherited |= set(update)
    left = [k for k in child_state if k not in inherited and not k.endswith("num_batches_tracked")]
    result = Transfer(
        frozenset(inherited),
        tuple(k for k in left if k not in parent_state),
        tuple(
            (k, tuple(child_state[k].shape), tuple(parent_state[k].shape))
            for k in left
            if k in parent_state
        ),
    )
    log.info("weights from the parent: %s", result.summary())
    return result


def evaluate_candidate(payload: dict[str, Any]) -> dict[str, Any]:
    """Train and score one candidate.

    Payload keys: ``config`` (a :class:`~nasdet.config.Config` dump: data, train, eval, seed),
    ``architecture`` (the candidate's ``model`` section), ``parent_weights`` (a nasdet model
    file or None), ``out`` (model file to write), ``epochs`` (0: scored without training),
    ``freeze_inherited`` (bool), ``lr_scale`` (multiplies train.lr). Returns ``metrics`` (COCO
    stats on the search split, or val when there is none), ``cost``, ``weights_path``,
    ``inherited``, ``new``, ``train_seconds`` and ``history`` (per epoch: ``loss``, ``lr``;
    empty when not trained).
    """
    cfg = TrainConfig.model_validate(payload["config"])
    arch = Model.model_validate(payload["architecture"])
    torch.manual_seed(cfg.seed)
    data = build_datasets(cfg.data, seed=cfg.seed)
    model = build_detector(arch, len(data.categories) + 1)
    transfer = None
    if payload.get("parent_weights"):
        transfer = transfer_weights(model, load_model(payload["parent_weights"]))
        if payload.get("freeze_inherited"):  # the seed's freeze_swap_keys
            for name, param in model.named_parameters():
                if name in transfer.inherited:
                    param.requires_grad_(False)
    out = Path(payload["out"])
    seconds, history = 0.0, []
    if int(payload["epochs"]):  # 0: scored as it is (fine_tune's with_train: false)
        seconds, history = train_model(
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
    cost = measure_cost(model, arch.min_size)
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
        "inherited": len(transfer.inherited) if transfer else 0,
        "new": len(model.state_dict()) - (len(transfer.inherited) if transfer else 0),
        "left_at_init": transfer.summary() if transfer else "no parent: every tensor",
        "train_seconds": seconds,
        "history": history,
    }


def train_model(
    model: nn.Module,
    train_set: Any,
    cfg: TrainConfig,
    *,
    epochs: int,
    work_dir: Path,
    lr_scale: float = 1.0,
) -> tuple[float, list[dict[str, float]]]:
    """Train ``model`` for ``epochs`` (cfg.train's optimizer and schedule); the seconds spent
    and the per-epoch history: the trainer's numeric entries (``loss``, ``lr``...) except its
    timings (``seconds``, ``images_per_s``), so that a record is the same whether or not its run
    was killed and resumed.

    The per-epoch checkpoint lives in a private temporary folder under ``work_dir`` (several
    candidates may train at once) and is removed afterwards.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix=".train-") as tmp:
        trainer = make_trainer(
            model, train_set, cfg, Path(tmp), epochs=epochs, lr_scale=lr_scale, tensorboard=False
        )
        start = time.perf_counter()
        history = trainer.fit()
        seconds = time.perf_counter() - start
    numeric, timing = (int, float), ("seconds", "images_per_s")
    return seconds, [
        {k: v for k, v in e.items() if isinstance(v, numeric) and k not in timing}
        for e in history
    ]
