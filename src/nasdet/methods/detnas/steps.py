"""DetNAS as pipeline steps: supernet_pretrain -> supernet_train -> evolution_search ->
subnet_train.

1. ``supernet_pretrain`` (optional): the ShuffleNetV2 supernet backbone as a classifier on an
   ImageFolder set (the bundled digits variant by default), one uniformly sampled path per step.
2. ``supernet_train``: the supernet inside the detector on the detection data, one uniform path
   per step (SPOS), or strict-fair / sandwich sampling (``supernet_train.sampling``,
   :mod:`nasdet.methods.detnas.sampling`); the paths depend only on (seed, step), so every DDP
   rank trains the same paths and a resumed run continues bit for bit. Runs under ``torchrun``
   (DDP) as well.
3. ``evolution_search``: evolution on the trained supernet; each candidate is scored on the search
   split after BN recalibration; constraints on the backbone and the whole detector are checked
   before scoring. The best subnet and every Pareto member are exported as standalone detectors.
4. ``subnet_train``: the best subnet (and the hand-crafted ShuffleNetV2 of the same widths, for
   comparison) trained with the same budget and evaluated on the validation split.

Everything is recorded in ``DIR/records.sqlite``; each step writes ``DIR/output/<step>/``;
re-running the same command after a kill continues where it stopped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from nasdet.build import build_backbone, build_datasets, build_detector, make_trainer, num_classes
from nasdet.cost import measure_cost
from nasdet.data import ensure_digits_classification
from nasdet.engine.bn import recalibrate_detector_bn
from nasdet.engine.classify import pretrain_backbone
from nasdet.engine.distributed import current as dist_current
from nasdet.engine.train import resolve_device
from nasdet.errors import ConfigError
from nasdet.method import MethodResult
from nasdet.methods.detnas.config import DetNASRunConfig, SupernetPretrain, TrainConfig
from nasdet.methods.detnas.sampling import PathSampler, sampling_hook
from nasdet.methods.detnas.scoring import (
    SubnetCost,
    load_model,
    load_supernet,
    score_subnet,
    subnet_architecture,
)
from nasdet.methods.detnas.space import ShuffleNetCode, ShuffleNetSpace, handcrafted
from nasdet.models.io import atomic_save, read_weights, save_model
from nasdet.search.constraints import checker, describe
from nasdet.search.evolution import EvolutionSettings, InfeasibleConstraints, evolution_search
from nasdet.search.executors import Executor, make_executor
from nasdet.search.pareto import pareto_records, write_pareto_csv
from nasdet.search.records import Record, RecordStore, commit_result, done_record
from nasdet.search.selection import Selection, choose
from nasdet.search.supernet import export_subnet
from nasdet.training import config_fingerprint, train_step

log = logging.getLogger(__name__)
SUPERNET = "supernet"  # genotype of the supernet's records


def base_config(cfg: DetNASRunConfig) -> dict[str, Any]:
    """The training part of a run config as plain data."""
    return cfg.base()


# ----------------------------------------------------------------------------- steps 1-2
def supernet_pretrain(cfg: DetNASRunConfig, store: RecordStore, out: Path) -> Path:
    """Step 1: classification pre-training of the supernet backbone; its state dict's path."""
    step = cfg.supernet_pretrain
    assert step is not None
    dest = out / "output" / "supernet_pretrain" / "backbone.pth"
    if done_record(store, "supernet_pretrain", SUPERNET) and dest.is_file():
        return dest
    torch.manual_seed(cfg.seed)  # initial weights from the seed alone: a rerun pretrains the same
    body = build_backbone(cfg.model.backbone, load_weights=False)
    acc = pretrain_backbone(
        body,
        _classification_root(cfg, step.data, out),
        epochs=step.epochs,
        batch_size=step.batch_size,
        lr=step.lr,
        image_size=step.image_size,
        device=resolve_device(cfg.train.device),
        seed=cfg.seed,
        before_step=PathSampler(body, cfg.seed),
    )
    atomic_save(body.state_dict(), dest)
    log.info("supernet_pretrain: top-1 %.3f (random paths)", acc)
    commit_result(store, "supernet_pretrain", SUPERNET, {"top1": acc}, dest)
    return dest


def _classification_root(cfg: DetNASRunConfig, root: Path | None, out: Path) -> Path:
    if root is not None:
        return root
    root = out / "data" / "digits_cls"
    return ensure_digits_classification(root, seed=cfg.seed)


def supernet_train(cfg: DetNASRunConfig, store: RecordStore, out: Path) -> Path:
    """Step 2: train the supernet detector (DDP under torchrun); the supernet model file."""
    step_dir = out / "output" / "supernet_train"
    dest = step_dir / "supernet.pth"
    dist = dist_current()
    if dist.is_main and done_record(store, "supernet_train", SUPERNET) and dest.is_file():
        return dest
    torch.manual_seed(cfg.seed)
    data = build_datasets(cfg.data, seed=cfg.seed)
    model = build_detector(cfg.model, len(data.categories) + 1)
    body = model.backbone.body
    pretrained = out / "output" / "supernet_pretrain" / "backbone.pth"
    if "supernet_pretrain" in cfg.steps and pretrained.is_file():
        body.load_state_dict(read_weights(pretrained))
        log.info("supernet_train: backbone from %s", pretrained)
    st = cfg.supernet_train
    assert st is not None
    epochs = st.epochs or cfg.train.epochs
    hook = sampling_hook(
        body,
        st.sampling,
        image_size=cfg.model.min_size,
        seed=cfg.seed,
        num_random=st.num_random,
        distill=st.distill,
        kd_ratio=st.kd_ratio,
    )
    if hook is not None:
        log.info("supernet_train: %s sampling, %d forwards per step", st.sampling,
                 hook.forwards_per_step)  # fmt: skip
    trainer = make_trainer(
        model,
        data.train,
        cfg,
        step_dir,
        epochs=epochs,
        fingerprint=config_fingerprint(cfg) + f"|supernet_train|{epochs}",
        before_step=PathSampler(body, cfg.seed) if hook is None else None,
        step_hook=hook,
        forwards_per_step=hook.forwards_per_step if hook is not None else None,
        find_unused_parameters=True,
    )
    history = trainer.fit(resume=trainer.checkpoint_path.is_file())
    if dist.is_main:
        save_model(
            dest,
            model.cpu(),
            architecture=cfg.model.model_dump(mode="json"),
            categories=data.categories,
            cat_ids=data.cat_ids,
            meta={"epochs": epochs, "history": history},
        )
        loss = float(history[-1]["loss"]) if history else float("nan")
        cost = {"params": float(sum(p.numel() for p in model.parameters()))}
        commit_result(store, "supernet_train", SUPERNET, {"train_loss": loss}, dest, cost=cost)
    return dest


# ----------------------------------------------------------------------------- step 3
def evolution(
    cfg: DetNASRunConfig, store: RecordStore, out: Path, supernet_path: Path, ex: Executor
) -> Record:
    """Step 3: the evolution search; returns the chosen record (``selection``). The cheapest
    architecture of the space is checked against the constraints first (the hand-crafted 3x3
    network: every other choice costs more), so impossible limits fail at once."""
    step = cfg.evolution_search
    assert step is not None
    c = step.constraints
    size = c.input_size or cfg.model.min_size
    cost = SubnetCost(
        cfg.model,
        num_classes(cfg.data),
        c,
        input_size=size,
        batch_size=cfg.train.batch_size,
        optimizer=cfg.train.optimizer,
    )
    check = checker(c)
    space = ShuffleNetSpace(depths=tuple(cfg.model.backbone.depths or handcrafted().depths))
    cheapest = handcrafted(space.depths)
    reason = check(cost(cheapest))
    if reason:
        raise InfeasibleConstraints(
            f"evolution_search.constraints: no architecture can satisfy them — even the "
            f"cheapest ({cheapest}, every block shuffle_3x3) has {reason} at input "
            f"{size}x{size}; loosen the limits"
        )
    payload = {
        "supernet": str(supernet_path),
        "config": base_config(cfg),
        "bn_mode": step.bn_mode,
        "calibrate_samples": step.calibrate_samples,
    }
    settings = EvolutionSettings(
        num_candidates=step.num_candidates,
        top_k=step.top_k,
        num_mutation=step.num_mutation,
        mutate_prob=step.mutate_prob,
        num_crossover=step.num_crossover,
        crossover_prob=step.crossover_prob,
        max_epochs=step.max_epochs,
        max_tries=step.max_tries,
        score_key=cfg.primary_metric,
    )
    records = evolution_search(
        store,
        "evolution_search",
        space=space,
        cost=cost,
        check_cost=check,
        payload=lambda g: dict(payload),
        score=score_subnet,
        executor=ex,
        settings=settings,
        seed=cfg.seed,
        constraints_text=describe(c),
        tensorboard_dir=out / "output" / "evolution_search" / "tensorboard",
    )
    if not records:
        raise ConfigError("evolution_search: no candidate could be scored — see the log")
    chosen = chosen_subnet(cfg, records)
    _export_front(cfg, store, out, supernet_path, records, chosen)
    return chosen


def chosen_subnet(cfg: DetNASRunConfig, records: list[Record]) -> Record:
    """The subnet to retrain among the scored ``records``, by ``evolution_search.selection``
    (the best score when the config has no ``evolution_search`` section)."""
    step = cfg.evolution_search
    if step is None:
        return choose(records, [cfg.primary_metric], Selection(rule="best"), False, "search").record
    given = step.constraints.given
    return choose(records, step.objective_keys, step.selection, given, "evolution_search").record


def _export_front(
    cfg: DetNASRunConfig,
    store: RecordStore,
    out: Path,
    supernet_path: Path,
    records: list[Record],
    best: Record,
) -> None:
    """``pareto.csv``, and for the chosen subnet and each Pareto member: ``subnet_<id>.yaml``
    (genotype, MMRazor mutable_cfg layout) and ``subnet_<id>.pth`` (standalone detector with
    the supernet's weights, BN recalibrated when the search recalibrates)."""
    step = cfg.evolution_search
    assert step is not None
    step_dir = out / "output" / "evolution_search"
    step_dir.mkdir(parents=True, exist_ok=True)
    write_pareto_csv(step_dir / "pareto.csv", records, step.objective_keys)
    members = {r.id: r for r in pareto_records(records, step.objective_keys)}
    members[best.id] = best
    supernet, data, pristine = load_supernet(str(supernet_path), json.dumps(base_config(cfg)))
    ncls = len(data.categories) + 1
    for rec in members.values():
        dest = step_dir / f"subnet_{rec.id}.pth"
        code = ShuffleNetCode.parse(rec.genotype)
        (step_dir / f"subnet_{rec.id}.yaml").write_text(code.to_yaml())
        if dest.is_file():
            continue
        supernet.load_state_dict(pristine, strict=False)
        supernet.backbone.body.set_active_subnet(code)
        if step.bn_mode == "recalibrate":
            recalibrate_detector_bn(
                supernet, data.train, num_samples=step.calibrate_samples, seed=cfg.seed
            )
        model, arch = export_subnet(supernet, cfg.model, code, ncls)
        save_model(
            dest,
            model,
            architecture=arch.model_dump(mode="json"),
            categories=data.categories,
            cat_ids=data.cat_ids,
            meta={"metrics": rec.metrics, "cost": rec.cost, "from_supernet": str(supernet_path)},
        )
    (step_dir / "best_subnet.yaml").write_text(ShuffleNetCode.parse(best.genotype).to_yaml())
    key = cfg.primary_metric
    log.info("evolution_search: chosen %s (%s %.4f) -> %s", best.genotype, key,
             best.metrics.get(key, float("nan")), step_dir / f"subnet_{best.id}.pth")  # fmt: skip


# ----------------------------------------------------------------------------- steps 4-5
def subnet_train(
    cfg: DetNASRunConfig, store: RecordStore, out: Path, best: Record | None
) -> tuple[Record, Record | None]:
    """Steps 4-5: train the chosen subnet (and the hand-crafted baseline) with the same budget:
    optional classification pre-training of the backbone, then detection training on all
    training images, scored on val. Returns (searched, baseline or None)."""
    step = cfg.subnet_train
    assert step is not None
    if step.genotype is not None:
        code = ShuffleNetCode.parse(step.genotype)
    elif best is not None:
        code = ShuffleNetCode.parse(best.genotype)
    else:
        raise ConfigError(
            "subnet_train: no searched subnet in this --out directory — run evolution_search "
            "first or set subnet_train.genotype"
        )
    searched = _train_subnet(cfg, store, out, code, "searched", best.id if best else None)
    baseline = None
    hand = handcrafted(code.depths)
    if step.baseline and hand != code:
        baseline = _train_subnet(cfg, store, out, hand, "baseline", None)
    return searched, baseline


def _train_subnet(
    cfg: DetNASRunConfig,
    store: RecordStore,
    out: Path,
    code: ShuffleNetCode,
    role: str,
    parent_id: int | None,
) -> Record:
    step = cfg.subnet_train
    assert step is not None
    found = done_record(store, "subnet_train", str(code))
    if found is not None:
        return found
    run_dir = out / "output" / "subnet_train" / role
    arch = subnet_architecture(cfg.model, code)
    if step.pretrain_epochs:
        weights = run_dir / "backbone_pretrained.pth"
        if not weights.is_file():
            torch.manual_seed(cfg.seed)  # the initial weights, as in supernet_pretrain
            body = build_backbone(arch.backbone, load_weights=False)
            pre = cfg.supernet_pretrain or SupernetPretrain()  # its lr, batch and input size
            acc = pretrain_backbone(
                body,
                _classification_root(cfg, pre.data, out),
                epochs=step.pretrain_epochs,
                batch_size=pre.batch_size,
                lr=pre.lr,
                image_size=pre.image_size,
                device=resolve_device(cfg.train.device),
                seed=cfg.seed,
            )
            log.info("subnet_train %s: classification top-1 %.3f", role, acc)
            atomic_save(body.state_dict(), weights)
        arch = arch.model_copy(
            update={"backbone": arch.backbone.model_copy(update={"weights": weights})}
        )
    config = base_config(cfg)
    config["data"]["search_fraction"] = 0.0
    config["model"] = arch.model_dump(mode="json")
    if step.epochs:
        config["train"]["epochs"] = step.epochs
    train_cfg = TrainConfig.model_validate(config)
    rec = store.find("subnet_train", str(code)) or store.add(
        "subnet_train", str(code), parent_id=parent_id, extra={"role": role}
    )
    store.reset_running("subnet_train")
    store.claim(rec.id)
    result = train_step(train_cfg, run_dir, resume=(run_dir / "checkpoint.pt").is_file())
    cost = measure_cost(load_model(result.model_path), cfg.model.min_size)
    key = cfg.primary_metric
    log.info(
        "subnet_train %s %s: val %s %.4f", role, code, key, result.metrics.get(key, float("nan"))
    )
    return store.finish(rec.id, result.metrics, weights_path=str(result.model_path), cost=cost)


# ----------------------------------------------------------------------------- the run
def run(cfg: DetNASRunConfig, out: Path) -> MethodResult:
    """Run the DetNAS steps of ``cfg`` into ``out`` (under ``torchrun`` only ``supernet_train``:
    the pipeline checks it)."""
    store = RecordStore(out / "records.sqlite")
    s = cfg.evolution_search
    ex = s.make_executor() if s else make_executor("inprocess")
    final: Record | None = None
    baseline: Record | None = None
    model: Path | None = None
    key = cfg.primary_metric
    supernet_path = out / "output" / "supernet_train" / "supernet.pth"
    with ex:
        for name in cfg.steps:
            log.info("== step %s ==", name)
            if name == "supernet_pretrain":
                supernet_pretrain(cfg, store, out)
            elif name == "supernet_train":
                supernet_path = supernet_train(cfg, store, out)
            elif name == "evolution_search":
                if not supernet_path.is_file():
                    raise ConfigError(
                        f"evolution_search: {supernet_path} not found — run supernet_train first"
                    )
                final = evolution(cfg, store, out, supernet_path, ex)
                model = out / "output" / "evolution_search" / f"subnet_{final.id}.pth"
            else:
                done = store.records("evolution_search", status="done")
                best = chosen_subnet(cfg, done) if done else None
                final, baseline = subnet_train(cfg, store, out, best)
                model = None
    shown = [s for s in cfg.steps if s in ("evolution_search", "subnet_train")]
    objectives = list(cfg.evolution_search.objective_keys) if cfg.evolution_search else [key]
    note = ""
    if baseline is not None:
        epochs = (cfg.subnet_train and cfg.subnet_train.epochs) or cfg.train.epochs
        note = (
            f"hand-crafted {baseline.genotype} (every block 3x3), {epochs} epochs like the winner"
        )
    return MethodResult(
        final=final,
        baseline=baseline,
        baseline_note=note,
        report_steps=shown,
        objectives=objectives,
        model=model,
    )
