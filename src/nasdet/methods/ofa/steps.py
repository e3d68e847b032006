"""OFA + SSD as pipeline steps: supernet_train -> search -> final_train (aw_nas's flow).

1. ``supernet_train``: the elastic supernet inside the detector, trained with progressive
   shrinking (``schedule_cfg``: which kernel, expand and depth choices are open at each epoch),
   the sandwich rule and in-place distillation (:mod:`nasdet.methods.ofa.sandwich`), SGD with
   cosine warm restarts every phase. The subnets of a step depend only on (seed, step), so
   every DDP rank trains the same ones and a resumed run continues exactly. Before a phase that
   opens smaller expand ratios, the middle channels are re-ordered by importance (the network's
   function is unchanged) and the optimizer's momentum is cleared, as Once-for-All starts each
   phase with a new optimizer. Runs under ``torchrun`` (DDP) as well.
2. ``search``: steady-state evolution with Once-for-All's settings; ``parallelism`` workers (Ray
   actors) each hold one supernet copy and score candidates as they free up, each score committed
   as it arrives. Constraints are checked on the standalone subnet before it is scored.
3. ``final_train``: the chosen subnet (from the search, or ``genotypes``) trained with the final
   budget, from scratch or from the supernet's sliced weights, and the hand-designed net of the
   space (uniform kernel 3, expand 4, depth 3) with the same budget, for comparison.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from nasdet.build import build_datasets, build_detector, make_trainer
from nasdet.cost import measure_cost
from nasdet.engine.distributed import current as dist_current
from nasdet.errors import ConfigError
from nasdet.method import MethodResult
from nasdet.methods.ofa import evolve
from nasdet.methods.ofa.config import OFARunConfig, TrainConfig
from nasdet.methods.ofa.sandwich import SandwichHook
from nasdet.methods.ofa.scoring import load_model, payload_for, setup, subnet_architecture
from nasdet.methods.ofa.shrinking import ScheduleCfg, default_schedule, phase_interval
from nasdet.methods.ofa.space import OFAGenotype
from nasdet.models.io import atomic_save, save_model
from nasdet.search.records import Record, RecordStore, commit_result, done_record
from nasdet.training import config_fingerprint, train_step

log = logging.getLogger(__name__)
SUPERNET = "supernet"  # genotype of the supernet's record


def schedule_of(cfg: OFARunConfig) -> ScheduleCfg:
    """``schedule_cfg`` as given, else Once-for-All's order over the supernet epochs."""
    st = cfg.supernet_train
    assert st is not None
    if st.search_space_cfg.schedule_cfg is not None:
        return st.search_space_cfg.schedule_cfg
    spec = cfg.model.backbone
    return default_schedule(
        cfg.supernet_epochs, list(spec.ks_list), list(spec.expand_ratio_list), list(spec.depth_list)
    )


def supernet_config(cfg: OFARunConfig) -> TrainConfig:
    """The training config of supernet training: ``train`` with ``evaluator_cfg``'s batch size,
    ``mepa_optimizer`` and ``mepa_scheduler``: cosine warm restarts every ``T_0`` epochs (default
    the phase interval), or ``CosineAnnealingLR`` over ``T_max`` epochs, down to ``eta_min``."""
    st = cfg.supernet_train
    assert st is not None
    ev = st.evaluator_cfg
    opt = ev.mepa_optimizer
    # T_0: the schedule's phase interval (aw_nas spaces phases evenly); Once-for-All's default
    # phases are uneven, so without schedule_cfg one cosine spans the whole training
    given = st.search_space_cfg.schedule_cfg
    interval = phase_interval(given) if given is not None else None
    sched = ev.mepa_scheduler
    if sched.type == "CosineAnnealingLR":
        schedule = {"schedule": "cosine", "cosine_epochs": sched.T_max, "restart_epochs": None}
    else:
        restart = sched.T_0 or interval or cfg.supernet_epochs
        schedule = {
            "schedule": "cosine_restarts",
            "restart_epochs": restart,
            "restart_mult": sched.T_mult,
            "cosine_epochs": None,
        }
    train = cfg.train.model_copy(
        update={
            "epochs": cfg.supernet_epochs,
            "batch_size": ev.batch_size,
            "optimizer": opt.type.lower(),
            "lr": opt.lr,
            "momentum": opt.momentum,
            "weight_decay": opt.weight_decay,
            "min_lr": sched.eta_min,
            **schedule,
        }
    )
    return TrainConfig.model_validate({**cfg.base(), "train": train.model_dump(mode="json")})


def _expand_boundaries(schedule: ScheduleCfg) -> set[int]:
    """1-based epochs at which the expand choices grow (re-order the channels before them)."""
    ec = schedule.expand_choice
    if ec is None:
        return set()
    return {b for b, v, prev in zip(ec.boundary[1:], ec.value[1:], ec.value, strict=False)
            if len(v) > len(prev)}  # fmt: skip


def supernet_train(cfg: OFARunConfig, store: RecordStore, out: Path) -> Path:
    """Step 1: progressive shrinking of the supernet detector; the supernet model file."""
    step_dir = out / "output" / "supernet_train"
    dest = step_dir / "supernet.pth"
    dist = dist_current()
    if dist.is_main and done_record(store, "supernet_train", SUPERNET) and dest.is_file():
        return dest
    st = cfg.supernet_train
    assert st is not None
    scfg = supernet_config(cfg)
    torch.manual_seed(cfg.seed)
    data = build_datasets(scfg.data, seed=cfg.seed)
    model = build_detector(scfg.model, len(data.categories) + 1)
    body = model.backbone.body
    schedule = schedule_of(cfg)
    epochs = scfg.train.epochs
    trainer = make_trainer(
        model,
        data.train,
        scfg,
        step_dir,
        fingerprint=config_fingerprint(cfg) + "|supernet_train",
        find_unused_parameters=True,
    )
    steps_per_epoch = len(trainer.loader)
    reorder_at = {(b - 1) * steps_per_epoch for b in _expand_boundaries(schedule)}

    def before_step(step: int) -> None:
        if step in reorder_at:
            body.re_organize_middle_weights()
            trainer.optimizer.state.clear()
            log.info("supernet_train: middle channels re-ordered before epoch %d",
                     step // steps_per_epoch + 1)  # fmt: skip

    hook = SandwichHook(
        schedule,
        steps_per_epoch=steps_per_epoch,
        num_random=st.num_random,
        sandwich=st.sandwich,
        distill=st.distill,
        kd_ratio=st.kd_ratio,
        seed=cfg.seed,
        kind="softmax" if cfg.model.detector in ("ssd", "ssdlite") else "sigmoid",
    )
    trainer.before_step = before_step
    trainer.step_hook = hook
    trainer.forwards_per_step = hook.forwards_per_step
    history = trainer.fit(resume=trainer.checkpoint_path.is_file())
    if dist.is_main:
        body.set_choices(ks=None, e=None, d=None)  # every subnet of the space again
        save_model(
            dest,
            model.cpu(),
            architecture=cfg.model.model_dump(mode="json"),
            categories=data.categories,
            cat_ids=data.cat_ids,
            meta={"epochs": epochs, "history": history},
        )
        loss = float(history[-1]["loss"]) if history else math.nan
        cost = {"params": float(sum(p.numel() for p in model.parameters()))}
        commit_result(store, "supernet_train", SUPERNET, {"train_loss": loss}, dest, cost=cost)
    return dest


# ----------------------------------------------------------------------------- step 3
def uniform_genotype(cfg: OFARunConfig) -> OFAGenotype:
    """The space's hand-designed net: kernel 3, expand 4, depth 3 in every block and stage."""
    space = evolve.space_of(cfg)
    n = space.n_stages * space.max_depth
    wanted = (("kernel", 3, space.ks_choices), ("expand", 4, space.e_choices),
              ("depth", 3, space.d_choices))  # fmt: skip
    missing = [f"{k} {v}" for k, v, opts in wanted if v not in opts]
    if missing:
        raise ConfigError(
            f"final_train.baseline: uniform needs {', '.join(missing)} in the space; "
            "set a genotype or null"
        )
    return OFAGenotype(ks=(3,) * n, e=(4,) * n, d=(3,) * space.n_stages)


def _parse(cfg: OFARunConfig, value: Any, key: str) -> OFAGenotype:
    text = value if isinstance(value, str) else json.dumps(value)
    try:
        return cfg.model.backbone.parse_genotype(text)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def final_train(
    cfg: OFARunConfig, store: RecordStore, out: Path, best: Record | None
) -> tuple[Record, Record | None]:
    """Step 3: train the chosen subnet and (``baseline``) the hand-designed net with the same
    budget and the same start; returns (searched, baseline or None)."""
    ft = cfg.final_train
    assert ft is not None
    given = ft.final_model_cfg.backbone_cfg.genotypes
    if given is not None:
        genotype = _parse(cfg, given, "final_train.final_model_cfg.backbone_cfg.genotypes")
    elif best is not None:
        genotype = OFAGenotype.parse(best.genotype)
    else:
        raise ConfigError(
            "final_train: no searched subnet in this --out directory — run search first or set "
            "final_train.final_model_cfg.backbone_cfg.genotypes"
        )
    searched = _train_final(cfg, store, out, genotype, "searched", best.id if best else None)
    baseline = None
    if ft.baseline is not None:
        hand = (
            uniform_genotype(cfg)
            if ft.baseline == "uniform"
            else _parse(cfg, ft.baseline, "final_train.baseline")
        )
        if hand.canonical() != genotype.canonical():
            baseline = _train_final(cfg, store, out, hand, "baseline", None)
    return searched, baseline


def _supernet_source(cfg: OFARunConfig, out: Path) -> Path | None:
    ft = cfg.final_train
    assert ft is not None
    src = ft.final_model_cfg.supernet_state_dict
    if src is None:
        return None
    path = out / "output" / "supernet_train" / "supernet.pth" if src == "supernet_train" else src
    if not Path(path).is_file():
        raise ConfigError(
            f"final_train.final_model_cfg.supernet_state_dict: {path} not found — "
            "run supernet_train first or name a supernet model file"
        )
    return Path(path)


def _train_final(
    cfg: OFARunConfig,
    store: RecordStore,
    out: Path,
    genotype: OFAGenotype,
    role: str,
    parent_id: int | None,
) -> Record:
    ft = cfg.final_train
    assert ft is not None
    name = str(genotype.canonical())
    found = done_record(store, "final_train", name)
    if found is not None:
        return found
    run_dir = out / "output" / "final_train" / role
    arch = subnet_architecture(cfg.model, genotype)
    init = None
    source = _supernet_source(cfg, out)
    if source is not None:
        init = run_dir / "init_from_supernet.pth"
        if not init.is_file():
            state = setup(payload_for(source, cfg.base(), "recalibrate", 256))
            ncls = len(state.data.categories) + 1
            model = evolve.sliced_subnet(state, cfg, genotype, True, ncls)
            atomic_save(model.state_dict(), init)
    tc = ft.final_trainer_cfg
    config = cfg.base()
    config["data"]["search_fraction"] = 0.0  # the final net trains on the whole training split
    config["model"] = arch.model_dump(mode="json")
    config["train"].update(
        {
            k: v
            for k, v in (
                ("epochs", tc.epochs),
                ("batch_size", tc.batch_size),
                ("lr", tc.learning_rate),
            )
            if v is not None
        }  # fmt: skip
    )
    train_cfg = TrainConfig.model_validate(config)
    rec = store.find("final_train", name) or store.add(
        "final_train", name, parent_id=parent_id, extra={"role": role}
    )
    store.reset_running("final_train")
    store.claim(rec.id)
    result = train_step(
        train_cfg,
        run_dir,
        resume=(run_dir / "checkpoint.pt").is_file(),
        init_weights=init,
        backbone_lr=tc.base_net_lr if tc.freeze_base_net else None,
    )
    cost = measure_cost(load_model(result.model_path), cfg.model.min_size)
    key = cfg.primary_metric
    log.info("final_train %s %s: val %s %.4f", role, name, key, result.metrics.get(key, math.nan))
    return store.finish(rec.id, result.metrics, weights_path=str(result.model_path), cost=cost)


# ----------------------------------------------------------------------------- the run
def run(cfg: OFARunConfig, out: Path) -> MethodResult:
    """Run the OFA steps of ``cfg`` into ``out`` (under ``torchrun`` only ``supernet_train``)."""
    store = RecordStore(out / "records.sqlite")
    final: Record | None = None
    baseline: Record | None = None
    model: Path | None = None
    key = cfg.primary_metric
    supernet_path = out / "output" / "supernet_train" / "supernet.pth"
    for name in cfg.steps:
        log.info("== step %s ==", name)
        if name == "supernet_train":
            supernet_path = supernet_train(cfg, store, out)
        elif name == "search":
            if not supernet_path.is_file():
                raise ConfigError(f"search: {supernet_path} not found — run supernet_train first")
            final = evolve.search(cfg, store, out, supernet_path)
            model = out / "output" / "search" / f"subnet_{final.id}.pth"
        else:
            done = store.records("search", status="done")
            best = evolve.chosen_subnet(cfg, done) if done else None
            final, baseline = final_train(cfg, store, out, best)
            model = None
    shown = [s for s in cfg.steps if s in ("search", "final_train")]
    objectives = list(cfg.search.objective_keys) if cfg.search else [key]
    note = ""
    if baseline is not None and cfg.final_train is not None:
        tc = cfg.final_train.final_trainer_cfg
        note = (
            f"hand-designed {baseline.genotype} ({cfg.final_train.baseline}), "
            f"{tc.epochs or cfg.train.epochs} epochs like the winner"
        )
    return MethodResult(
        final=final,
        baseline=baseline,
        baseline_note=note,
        report_steps=shown,
        objectives=objectives,
        model=model,
    )
