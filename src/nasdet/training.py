"""One training run: build the datasets and the detector a config describes, train it, evaluate
it on the validation split, and write ``model.pt`` (loadable with :func:`nasdet.load_model`),
``metrics.json``, ``history.json`` and the resolved ``config.yaml``. ``nasdet train`` runs it; a
method's steps train their final networks with it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from nasdet.atomic import write_json_atomic
from nasdet.build import build_datasets, build_detector, make_trainer
from nasdet.config import Config
from nasdet.cost import count_params
from nasdet.engine.distributed import current, restart_count
from nasdet.engine.evaluate import evaluate
from nasdet.engine.train import resolve_device
from nasdet.models.io import load_state_dict_checked, read_weights, save_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_step` produced: final validation metrics and where the files are."""

    out_dir: Path
    model_path: Path
    metrics: dict[str, float]
    params: int
    train_seconds: float


def config_fingerprint(cfg: Config) -> str:
    """A stable text of the settings that determine a training run (for resume checks). Not
    among them: how often checkpoints are written, and a run config's ``pipeline`` (the steps a
    command runs: a step killed under ``torchrun ... --steps supernet_train`` resumes in a plain
    ``nasdet run`` of the whole pipeline)."""
    dump = cfg.model_dump(
        mode="json",
        exclude={
            "eval": True,
            "train": {"tensorboard", "checkpoint_every"},
            "pipeline": True,
        },
    )
    for path, keys in cfg.later_keys().items():  # at their defaults: as before they existed
        part: Any = dump
        for name in path.split("."):
            part = part.get(name) if isinstance(part, dict) else None
        if not isinstance(part, dict):
            continue
        for key, default in keys.items():
            if part.get(key, default) == default:
                part.pop(key, None)
    return json.dumps(dump, sort_keys=True)


def train_step(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    init_weights: Path | None = None,
    backbone_lr: float | None = None,
) -> TrainResult:
    """Train and evaluate the detector of ``cfg``; outputs go to ``out_dir``.

    ``init_weights`` (optional): a state dict file of the whole detector to start from (loaded
    with ``weights_only=True``; every key must match). ``backbone_lr`` (optional): the backbone
    body's learning rate (0 freezes it), the rest at ``train.lr``. In a group that torchrun
    restarted (``--max-restarts``) training resumes from ``out_dir``'s checkpoint when there is
    one, ``resume`` or not."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    main = current().is_main  # under torchrun, rank 0 evaluates and writes the files
    if main:
        (out_dir / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
    torch.manual_seed(cfg.seed)
    data = build_datasets(cfg.data, seed=cfg.seed)
    device = resolve_device(cfg.train.device)
    model = build_detector(cfg.model, len(data.categories) + 1)
    if init_weights is not None:
        load_state_dict_checked(model, read_weights(init_weights), str(init_weights))

    def score(m: torch.nn.Module, epoch: int) -> dict[str, float]:
        return evaluate(
            m, data.val, batch_size=cfg.eval.batch_size, device=device, backend=cfg.eval.backend
        )

    extra = f"|init={init_weights}|backbone_lr={backbone_lr}" if init_weights or backbone_lr else ""
    trainer = make_trainer(
        model,
        data.train,
        cfg,
        out_dir,
        evaluate=score,
        fingerprint=config_fingerprint(cfg) + extra,
        backbone_lr=backbone_lr,
    )
    restarted = restart_count() > 0 and trainer.checkpoint_path.is_file()
    start = time.perf_counter()
    history = trainer.fit(resume=resume or restarted)
    seconds = sum(e["seconds"] for e in history)
    log.info(
        "trained %d epochs in %.1f s (wall %.1f s this run)",
        len(history),
        seconds,
        time.perf_counter() - start,
    )
    params = count_params(model)
    if not main:
        return TrainResult(out_dir, out_dir / "model.pt", {}, params, seconds)
    metrics = history[-1]["val"]
    model_path = save_model(
        out_dir / "model.pt",
        model.cpu(),
        architecture=cfg.model.model_dump(mode="json"),
        categories=data.categories,
        cat_ids=data.cat_ids,
        meta={"metrics": metrics, "params": params, "epochs": cfg.train.epochs},
    )
    write_json_atomic(out_dir / "history.json", history)
    write_json_atomic(
        out_dir / "metrics.json",
        {"metrics": metrics, "params": params, "train_seconds": seconds, "model": str(model_path)},
    )
    return TrainResult(out_dir, model_path, metrics, params, seconds)
