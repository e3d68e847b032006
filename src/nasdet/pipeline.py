"""Pipeline steps. Each step reads a config, writes its outputs into a directory, and can be
re-run after a kill to continue where it stopped.

``run_pipeline``: the SP-NAS steps of a run config (:mod:`nasdet.spnas`), then ``report.html``
and ``result.json`` (the winner, its metrics and model file).

``train_step``: build the datasets and the detector a config describes, train it, evaluate it on
the validation split, and write ``model.pt`` (loadable with :func:`nasdet.load_model`),
``metrics.json``, ``history.json`` and the resolved ``config.yaml``.
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

from nasdet.build import build_datasets, build_detector, make_trainer
from nasdet.config import Config
from nasdet.cost import count_params
from nasdet.engine.evaluate import evaluate
from nasdet.engine.train import resolve_device
from nasdet.models.io import save_model
from nasdet.runconfig import DetNASRunConfig, RunConfig, substitute

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
    """A stable text of the settings that determine a training run (for resume checks)."""
    dump = cfg.model_dump(mode="json", exclude={"eval": True, "train": {"tensorboard"}})
    return json.dumps(dump, sort_keys=True)


def train_step(cfg: Config, out_dir: str | Path, *, resume: bool = False) -> TrainResult:
    """Train and evaluate the detector of ``cfg``; outputs go to ``out_dir``."""
    from nasdet.engine.distributed import current

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

    def score(m: torch.nn.Module, epoch: int) -> dict[str, float]:
        return evaluate(
            m, data.val, batch_size=cfg.eval.batch_size, device=device, backend=cfg.eval.backend
        )

    trainer = make_trainer(
        model, data.train, cfg, out_dir, evaluate=score, fingerprint=config_fingerprint(cfg)
    )
    start = time.perf_counter()
    history = trainer.fit(resume=resume)
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
    _write_json(out_dir / "history.json", history)
    _write_json(
        out_dir / "metrics.json",
        {"metrics": metrics, "params": params, "train_seconds": seconds, "model": str(model_path)},
    )
    return TrainResult(out_dir, model_path, metrics, params, seconds)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_pipeline` produced."""

    out_dir: Path
    final: Any  # the fully_train Record (or the best record of the last step run)
    report: Path | None


def run_pipeline(cfg: RunConfig | DetNASRunConfig, out_dir: str | Path) -> RunResult:
    """Run the steps of ``cfg`` (SP-NAS or DetNAS) in order into ``out_dir``; resumes what a
    kill stopped."""
    if isinstance(cfg, DetNASRunConfig):
        return _run_detnas(cfg, Path(out_dir))
    from nasdet import spnas
    from nasdet.search.executors import make_executor
    from nasdet.search.records import RecordStore

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    spnas.check_start(cfg)
    store = RecordStore(out / "records.sqlite")
    s = cfg.search
    ex = make_executor(
        s.executor,
        **(
            {"address": s.address, "max_workers": s.workers, "num_gpus_per_task": s.gpus_per_worker}
            if s.executor == "ray"
            else {}
        ),
    )
    objectives = ["mAP", "params"]
    members: list = []
    final = None
    with ex:
        for name in cfg.steps:
            step = getattr(cfg, name)
            if step.search_algorithm is not None:
                objectives = list(step.search_algorithm.objective_keys)
            log.info("== step %s ==", name)
            folder = substitute(step.models_folder, out)
            if (
                folder is not None
                and name != "fine_tune"
                and (not members or not folder.resolve().is_relative_to(out.resolve()))
            ):
                members = spnas.import_members(store, folder)  # models of another run's step
            if name == "fine_tune":
                members = [spnas.fine_tune(cfg, step, store, out, ex)]
            elif name == "serial":
                root = members[0] if members else _required(store, "fine_tune")
                members = spnas.serial(cfg, step, store, out, ex, root)
            elif name == "reignition":
                members = spnas.reignition(cfg, step, store, out, members)
            elif name == "parallel":
                members = spnas.parallel(cfg, step, store, out, ex, members)
            else:
                final = spnas.fully_train(cfg, step, store, out, ex, members)
                members = [final]
    final = final or max(members, key=lambda r: r.metrics.get("mAP", 0.0))
    report = _report(out, store, cfg, objectives, final)
    return _finish(out, final, report)


def _run_detnas(cfg: DetNASRunConfig, out: Path) -> RunResult:
    from nasdet import detnas
    from nasdet.engine.distributed import current
    from nasdet.report import write_report
    from nasdet.search.records import RecordStore

    out.mkdir(parents=True, exist_ok=True)
    if current().is_main:
        (out / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
    final, baseline, steps = detnas.run(cfg, out)
    if final is None or not current().is_main:
        return RunResult(out, final, None)
    store = RecordStore(out / "records.sqlite")
    shown = [s for s in steps if s in ("evolution_search", "subnet_train")]
    objectives = cfg.evolution_search.objective_keys if cfg.evolution_search else ["mAP"]
    report = write_report(
        out,
        store,
        steps=shown,
        objectives=objectives,
        baseline=baseline and {"name": f"hand-crafted {baseline.genotype}", **baseline.values()},
        winner_id=final.id,
        title="nasdet DetNAS",
    )
    return _finish(out, final, report, baseline=None if baseline is None else _summary(baseline))


def _finish(out: Path, final: Any, report: Path, **extra: Any) -> RunResult:
    """Write ``result.json`` (the winner, its metrics, cost, model file and report)."""
    _write_json(
        out / "result.json",
        {
            "winner": final.genotype,
            "record": final.id,
            "metrics": final.metrics,
            "cost": final.cost,
            "model": final.weights_path,
            **extra,
            "report": str(report),
        },
    )
    return RunResult(out, final, report)


def _summary(rec: Any) -> dict[str, Any]:
    return {"genotype": rec.genotype, "metrics": rec.metrics, "cost": rec.cost}


def _required(store: Any, step: str) -> Any:
    done = store.records(step, status="done")
    if not done:
        from nasdet.errors import ConfigError

        raise ConfigError(f"step '{step}' has no result in this --out directory; run it first")
    return done[0]


def _report(out: Path, store: Any, cfg: RunConfig, objectives: list[str], final: Any) -> Path:
    from nasdet.report import write_report

    baseline = next(iter(store.records("fine_tune", status="done")), None)
    return write_report(
        out,
        store,
        steps=cfg.steps,
        objectives=objectives,
        baseline=baseline,
        winner_id=final.id,
        title="nasdet SP-NAS",
    )
