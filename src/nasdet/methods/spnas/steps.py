"""SP-NAS as pipeline steps: fine_tune -> serial -> reignition -> parallel -> fully_train.

Every step records its candidates in ``DIR/records.sqlite`` and writes ``DIR/output/<step>/``
(``model_<id>.pth`` nasdet model files, ``desc_<id>.json``, ``pareto.csv``); each reads the
previous step's results, and re-running the same command after a kill continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from nasdet.build import build_detector, num_classes
from nasdet.cost import measure_cost
from nasdet.data import ensure_digits_classification
from nasdet.engine.classify import pretrain_backbone
from nasdet.engine.train import resolve_device
from nasdet.errors import ConfigError, WorkFailed
from nasdet.method import MethodResult
from nasdet.methods.spnas.candidate import evaluate_candidate, load_model
from nasdet.methods.spnas.config import Model, SpNasRunConfig, Step, substitute
from nasdet.methods.spnas.convert import convert_torchvision_fasterrcnn
from nasdet.methods.spnas.proposers import ParallelProposer, SerialProposer
from nasdet.methods.spnas.space import SerialCode, SerialSpace
from nasdet.models.io import save_model
from nasdet.search.constraints import checker
from nasdet.search.driver import (
    add_root,
    clean_leftovers,
    is_root,
    run_search,
    write_step_outputs,
)
from nasdet.search.executors import Executor, Task
from nasdet.search.records import Record, RecordStore
from nasdet.search.selection import choose

log = logging.getLogger(__name__)


def base_config(cfg: SpNasRunConfig) -> dict[str, Any]:
    """The training part of a run config as plain data (what candidates need)."""
    return cfg.base()


def start_architecture(cfg: SpNasRunConfig) -> Model:
    """The model section of the starting serial network (see ``SpNasRunConfig.start_model``)."""
    return cfg.start_model()


def winner(cfg: SpNasRunConfig, members: list[Record], objectives: list[str]) -> Record:
    """The winner among the last step's members by ``search.selection`` (logged with why)."""
    s = cfg.search
    return choose(members, objectives, s.selection, s.constraints.given, "winner").record


# ----------------------------------------------------------------------------- steps
def fine_tune(
    cfg: SpNasRunConfig, step: Step, store: RecordStore, out: Path, ex: Executor
) -> Record:
    """Train the starting architecture (optionally from a converted torchvision checkpoint)."""
    arch = start_architecture(cfg)
    step_dir = out / "output" / "fine_tune"
    step_dir.mkdir(parents=True, exist_ok=True)
    found = store.find("fine_tune", str(arch.backbone.code))
    if found is not None and found.status == "done":
        log.info("fine_tune: done already (#%d)", found.id)
        write_step_outputs(store, "fine_tune", step_dir, _objectives(cfg))  # a kill may have
        return found  # come between the record and these files
    parent = None
    pretrained = substitute(step.model.pretrained_model_file, out)
    if pretrained is not None:
        parent = step_dir / "pretrained.pth"
        _import_pretrained(pretrained, step.model.model_desc.convert_pretrained, parent, cfg)
    payload = {
        "config": base_config(cfg),
        "architecture": arch.model_dump(mode="json"),
        "parent_weights": str(parent) if parent else None,
        "epochs": (step.trainer.epochs or cfg.train.epochs) if step.trainer.with_train else 0,
    }
    rec = _run_single(
        store,
        "fine_tune",
        str(arch.backbone.code),
        payload,
        step_dir / "model_0.pth",
        ex,
        found=found,
    )
    write_step_outputs(store, "fine_tune", step_dir, _objectives(cfg))
    return rec


def _import_pretrained(path: Path, convert: bool, dest: Path, cfg: SpNasRunConfig) -> None:
    """A user's checkpoint as a nasdet model file at ``dest`` (converted from torchvision's
    ``fasterrcnn_resnet50_fpn`` when ``convert``; on COCO data its 91-slot box predictor is cut
    down to the data's categories by id, so the start keeps its trained head)."""
    if dest.is_file():
        return
    if convert:
        from nasdet.methods.spnas.convert import coco_categories, keep_coco_classes

        model, arch = convert_torchvision_fasterrcnn(path)
        names, ids = coco_categories(model.roi_heads.box_predictor.cls_score.out_features)
        if cfg.data.format == "coco":
            cats = sorted(json.loads(Path(cfg.data.train_ann).read_text())["categories"],
                          key=lambda c: c["id"])  # fmt: skip
            if keep_coco_classes(model, [c["id"] for c in cats]):
                names, ids = [str(c["name"]) for c in cats], [c["id"] for c in cats]
                log.info("fine_tune: the box predictor keeps the rows of the data's %d "
                         "categories", len(ids))  # fmt: skip
        save_model(dest, model, architecture=arch, categories=names, cat_ids=ids)
    else:
        load_model(path)  # fails with a one-line message if it is not a model file
        shutil.copyfile(path, dest)


def serial(
    cfg: SpNasRunConfig, step: Step, store: RecordStore, out: Path, ex: Executor, root: Record
) -> list[Record]:
    """SpNasS: grow the serial backbone from the fine-tuned start by mutation + inheritance."""
    algo = step.search_algorithm
    if algo is None or algo.type != "SpNasS":
        raise ConfigError("serial: search_algorithm.type must be SpNasS")
    space = SerialSpace(
        block=cfg.search.block,
        min_blocks=algo.min_blocks,
        max_blocks=algo.max_blocks,
        max_stages=algo.max_stages + 1,
        min_stages=min(5, algo.max_stages + 1),
        base_width=cfg.search.base_width,
    )
    payload = {
        "config": base_config(cfg),
        "epochs": step.trainer.epochs or cfg.search.epochs,
        "freeze_inherited": step.model.model_desc.freeze_swap_keys,
    }
    add_root(
        store,
        "serial",
        root.genotype,
        metrics=root.metrics,
        cost=root.cost,
        weights_path=root.weights_path,
        payload=root.extra["payload"],
        parent_id=root.id,
    )
    propose = SerialProposer(
        "serial",
        algo.objective_keys,
        space,
        payload,
        algo.num_mutate,
        algo.expend_ratio,
        algo.add_stage_ratio,
        num_classes(cfg.data),
        constraints=cfg.search.constraints,
        batch_size=cfg.train.batch_size,
    )
    return _search(cfg, "serial", algo.max_sample, algo.objective_keys, store, out, ex, propose)


def reignition(
    cfg: SpNasRunConfig, step: Step, store: RecordStore, out: Path, members: list[Record]
) -> list[Record]:
    """Re-pretrain the backbones of the best serial members (at most ``max_reignite``) on the
    classification data, carry the weights back into the detector, fine-tune and re-score."""
    step_dir = out / "output" / "reignition"
    step_dir.mkdir(parents=True, exist_ok=True)
    metric = cfg.primary_metric
    chosen = sorted(members, key=lambda r: -r.metrics.get(metric, 0.0))[: cfg.search.max_reignite]
    data_root = _classification_root(cfg, out)
    results = []
    for rec in chosen:
        found = store.find("reignition", rec.genotype)
        if found is not None and found.status == "done":
            results.append(found)
            continue
        model = load_model(rec.weights_path)
        acc = pretrain_backbone(
            model.backbone.body,
            data_root,
            epochs=cfg.search.reignition_epochs,
            batch_size=cfg.search.reignition_batch_size,
            lr=cfg.search.reignition_lr,
            image_size=cfg.search.reignition_image_size,
            device=resolve_device(cfg.train.device),
            seed=cfg.seed,
        )
        reignited = step_dir / f"reignited_{rec.id}.pth"
        save_model(
            reignited,
            model,
            architecture=rec.extra["payload"]["architecture"],
            categories=model.categories,
            cat_ids=model.cat_ids,
            meta={"classification_top1": acc},
        )
        payload = {
            "config": base_config(cfg),
            "architecture": rec.extra["payload"]["architecture"],
            "parent_weights": str(reignited),
            "epochs": step.trainer.epochs or cfg.search.epochs,
        }
        new = found or store.add(
            "reignition",
            rec.genotype,
            parent_id=rec.id,
            extra={"payload": payload, "classification_top1": acc},
        )
        store.claim(new.id)
        res = evaluate_candidate({**payload, "out": str(step_dir / f"model_{new.id}.pth")})
        results.append(
            store.finish(new.id, res["metrics"], weights_path=res["weights_path"], cost=res["cost"])
        )
        log.info(
            "reignition of #%d (%s): top-1 %.3f, mAP %.4f -> %.4f",
            rec.id,
            rec.genotype,
            acc,
            rec.metrics[metric],
            results[-1].metrics[metric],
        )
    write_step_outputs(store, "reignition", step_dir, _objectives(cfg))
    # a reignited network that scores worse than before does not replace its source
    return [
        max((r, *[m for m in members if m.genotype == r.genotype]), key=lambda x: x.metrics[metric])
        for r in results
    ] or members


def _classification_root(cfg: SpNasRunConfig, out: Path) -> Path:
    root = cfg.search.classification_data
    if root is None:
        root = out / "data" / "digits_cls"
        ensure_digits_classification(root, seed=cfg.seed)
    return root


def parallel(
    cfg: SpNasRunConfig,
    step: Step,
    store: RecordStore,
    out: Path,
    ex: Executor,
    roots: list[Record],
) -> list[Record]:
    """SpNasP: parallel sub-network blocks on the feature levels of the chosen serial nets."""
    algo = step.search_algorithm
    if algo is None or algo.type != "SpNasP":
        raise ConfigError("parallel: search_algorithm.type must be SpNasP")
    for rec in roots:
        add_root(
            store,
            "parallel",
            f"{rec.genotype.partition('|')[0]}|",
            metrics=rec.metrics,
            cost=rec.cost,
            weights_path=rec.weights_path,
            payload=rec.extra["payload"],
            parent_id=rec.id,
        )
    payload = {"config": base_config(cfg), "epochs": step.trainer.epochs or cfg.search.epochs}
    propose = ParallelProposer(
        "parallel",
        algo.objective_keys,
        payload,
        algo.max_blocks_per_level,
        cfg.search.constraints.max_flops,
        num_classes(cfg.data),
        constraints=cfg.search.constraints,
        batch_size=cfg.train.batch_size,
    )
    return _search(cfg, "parallel", algo.max_sample, algo.objective_keys, store, out, ex, propose)


def _search(
    cfg: SpNasRunConfig,
    step: str,
    max_sample: int,
    objectives: list[str],
    store: RecordStore,
    out: Path,
    ex: Executor,
    propose: Any,
) -> list[Record]:
    return run_search(
        store,
        step,
        out / "output" / step,
        propose=propose,
        evaluate=evaluate_candidate,
        executor=ex,
        max_sample=max_sample,
        objectives=objectives,
        seed=cfg.seed,
        check_cost=checker(cfg.search.constraints),
    )


def _run_single(
    store: RecordStore,
    step: str,
    genotype: str,
    payload: dict[str, Any],
    out_file: Path,
    ex: Executor,
    *,
    parent_id: int | None = None,
    found: Record | None = None,
) -> Record:
    """Evaluate one candidate of a train step through the executor and commit it."""
    rec = found or store.add(step, genotype, parent_id=parent_id, extra={"payload": payload})
    store.reset_running(step)
    store.reset_failed(step)  # a failed try is tried again
    clean_leftovers(out_file.parent)  # a killed try's .train-* folder and *.tmp files
    store.claim(rec.id)
    outcome = next(ex.run(evaluate_candidate, [Task(rec.id, {**payload, "out": str(out_file)})]))
    if not outcome.ok:
        store.fail(rec.id, outcome.error or "failed", traceback=outcome.traceback)
        raise WorkFailed(
            f"{step}: #{rec.id} {genotype} failed: {outcome.error} — the traceback is in the run "
            f"log and in {store.path} (record {rec.id}); rerun the same command to try again"
        )
    res = outcome.result
    return store.finish(rec.id, res["metrics"], weights_path=res["weights_path"], cost=res["cost"])


def fully_train(
    cfg: SpNasRunConfig,
    step: Step,
    store: RecordStore,
    out: Path,
    ex: Executor,
    members: list[Record],
    objectives: list[str],
) -> tuple[Record, Record | None]:
    """Train the winner (picked from the last step's Pareto members by ``search.selection``)
    for the full budget and evaluate it on the validation split. With
    ``search.fully_train_baseline``, also train the start architecture from its fine_tune
    weights with the winner's detection budget since fine_tune (see :func:`search_epochs`).
    Returns (winner, start trained alike or ``None``)."""
    best = winner(cfg, members, objectives)
    epochs = step.trainer.epochs or cfg.search.fully_train_epochs or cfg.train.epochs
    trained = _fully_train_one(cfg, store, out, ex, best, epochs, "model_0.pth")
    start = next(iter(store.records("fine_tune", status="done")), None)
    if not cfg.search.fully_train_baseline or start is None or start.genotype == best.genotype:
        return trained, None
    budget = epochs + search_epochs(store, best)
    return trained, _fully_train_one(cfg, store, out, ex, start, budget, "baseline.pth")


def search_epochs(store: RecordStore, rec: Record) -> int:
    """The detection epochs ``rec``'s weights had since fine_tune: the ``epochs`` of each
    serial / parallel candidate on its lineage (a step's roots were not trained in it;
    reignition trains on classification; fine_tune is the start's own)."""
    total = 0
    seen: set[int] = set()
    current: Record | None = rec
    while current is not None and current.id not in seen and current.step != "fine_tune":
        seen.add(current.id)
        if current.step in ("serial", "parallel") and not is_root(current):
            total += int(current.extra.get("payload", {}).get("epochs") or 0)
        current = store.get(current.parent_id) if current.parent_id is not None else None
    return total


def _fully_train_one(
    cfg: SpNasRunConfig,
    store: RecordStore,
    out: Path,
    ex: Executor,
    rec: Record,
    epochs: int,
    filename: str,
) -> Record:
    found = store.find("fully_train", rec.genotype)
    if found is not None and found.status == "done":
        return found
    step_dir = out / "output" / "fully_train"
    config = base_config(cfg)
    config["data"]["search_fraction"] = 0.0  # train on all training images, score on val
    payload = {
        "config": config,
        "architecture": rec.extra["payload"]["architecture"],
        "parent_weights": rec.weights_path,
        "epochs": epochs,
    }
    return _run_single(
        store,
        "fully_train",
        rec.genotype,
        payload,
        step_dir / filename,
        ex,
        parent_id=rec.id,
        found=found,
    )


def check_start(cfg: SpNasRunConfig) -> None:
    """Fail early (one line) when the starting architecture cannot be built."""
    arch = start_architecture(cfg)
    SerialCode.parse(arch.backbone.code)
    measure_cost(build_detector(arch, num_classes(cfg.data), load_weights=False), arch.min_size)


def import_members(store: RecordStore, folder: Path) -> list[Record]:
    """The models of another step's output folder (its ``desc_<id>.json`` files), recorded in
    this run as done records of step ``imported`` so later steps can start from them (the seed's
    ``models_folder``)."""
    descs = sorted(Path(folder).glob("desc_*.json"), key=lambda p: int(p.stem.split("_")[-1]))
    if not descs:
        raise ConfigError(
            f"{folder}: models_folder has no desc_<id>.json files — point it at a step's output "
            "folder of a nasdet run (DIR/output/<step>/)"
        )
    members = []
    for path in descs:
        try:
            desc = json.loads(path.read_text())
            genotype, arch = desc["genotype"], desc["architecture"]
            metrics, cost, weights = desc["metrics"], desc["cost"], desc["weights_path"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: not a nasdet desc file ({type(e).__name__}: {e})") from None
        found = store.find("imported", genotype)
        if found is None:
            found = store.add(
                "imported",
                genotype,
                cost=cost,
                extra={"payload": {"architecture": arch}, "source": str(path)},
            )
            store.claim(found.id)
            found = store.finish(found.id, metrics, weights_path=weights, cost=cost)
        members.append(found)
    return members


# ----------------------------------------------------------------------------- the run
def run(cfg: SpNasRunConfig, out: Path) -> MethodResult:
    """Run the SP-NAS steps of ``cfg`` in order into ``out``; resumes what a kill stopped."""
    check_start(cfg)
    for key, why in cfg.ignored_keys():
        log.warning("%s is accepted for the seed's sake but not used: %s", key, why)
    store = RecordStore(out / "records.sqlite")
    ex = cfg.search.make_executor()
    objectives = _objectives(cfg)
    members: list[Record] = []
    final = None
    equal: Record | None = None  # the start trained with the winner's budget
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
                members = import_members(store, folder)  # models of another run's step
            if name == "fine_tune":
                members = [fine_tune(cfg, step, store, out, ex)]
            elif name == "serial":
                root = members[0] if members else _required(store, "fine_tune")
                members = serial(cfg, step, store, out, ex, root)
            elif name == "reignition":
                members = reignition(cfg, step, store, out, members)
            elif name == "parallel":
                members = parallel(cfg, step, store, out, ex, members)
            else:
                final, equal = fully_train(cfg, step, store, out, ex, members, objectives)
                members = [final]
    final = final or (winner(cfg, members, objectives) if members else None)
    start = next(iter(store.records("fine_tune", status="done")), None)
    baseline, note = start, _baseline_note(cfg, start)
    if equal is not None:
        baseline, note = (
            equal,
            (
                f"the start {equal.genotype} trained with the winner's budget: "
                f"{equal.extra['payload']['epochs']} detection epochs from its fine_tune weights "
                "(the winner's search epochs since fine_tune plus fully_train's), scored on val"
            ),
        )
    return MethodResult(
        final=final,
        baseline=baseline,
        baseline_note=note,
        report_steps=cfg.steps,
        objectives=objectives,
    )


def _objectives(cfg: SpNasRunConfig) -> list[str]:
    """The Pareto objectives of the run: the first search step's (default mAP, params)."""
    for name in cfg.steps:
        algo = getattr(cfg, name).search_algorithm
        if algo is not None:
            return list(algo.objective_keys)
    return ["mAP", "params"]


def _baseline_note(cfg: SpNasRunConfig, start: Record | None) -> str:
    """What the report's baseline (the fine-tuned start) is, with its budget and split."""
    if start is None or cfg.fine_tune is None:
        return ""
    epochs = cfg.fine_tune.trainer.epochs or cfg.train.epochs
    split = "the search split" if cfg.data.search_fraction > 0 else "val"
    final = cfg.fully_train
    winner = ""
    if final is not None and "fully_train" in cfg.steps:
        w_epochs = final.trainer.epochs or cfg.search.fully_train_epochs or cfg.train.epochs
        winner = f"; the winner: {w_epochs} epochs more from its searched weights, scored on val"
    return f"the start {start.genotype}: fine_tune {epochs} epochs, scored on {split}{winner}"


def _required(store: RecordStore, step: str) -> Record:
    done = store.records(step, status="done")
    if not done:
        raise ConfigError(f"step '{step}' has no result in this --out directory; run it first")
    return done[0]
