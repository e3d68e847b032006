"""OFA's ``search`` step: asynchronous steady-state evolution on the trained supernet.

Once-for-All's evolution settings (population 100, parent ratio 0.25, mutation ratio 0.5,
mutation probability 0.1) run without a generation barrier
(:func:`nasdet.search.async_evolution.async_evolution_search`): ``trainer_cfg.parallelism``
workers (Ray actors; this process when it is 1) each load the supernet once and score candidates
as they free up; each score is committed to the record store as it arrives, so a killed search
resumes. The best subnet and the Pareto front are exported as standalone detectors.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from nasdet.atomic import write_text_atomic
from nasdet.build import num_classes
from nasdet.engine.bn import recalibrate_detector_bn
from nasdet.errors import ConfigError
from nasdet.methods.ofa.config import OFARunConfig
from nasdet.methods.ofa.scoring import (
    ScoringState,
    SubnetCost,
    payload_for,
    score_subnet,
    setup,
    subnet_architecture,
)
from nasdet.methods.ofa.space import OFAGenotype, OFASpace
from nasdet.models.io import save_model
from nasdet.search.actors import ActorExecutor, InProcessActorExecutor, RayActorExecutor
from nasdet.search.async_evolution import AsyncEvolutionSettings, async_evolution_search
from nasdet.search.constraints import checker, describe
from nasdet.search.evolution import InfeasibleConstraints
from nasdet.search.pareto import pareto_records, write_pareto_csv
from nasdet.search.predictor import AccuracyPredictor
from nasdet.search.records import Record, RecordStore
from nasdet.search.selection import Selection, choose
from nasdet.search.supernet import export_subnet

log = logging.getLogger(__name__)


def space_of(cfg: OFARunConfig) -> OFASpace:
    """The search space of the run's supernet section."""
    return cfg.model.backbone.space


def make_executor(cfg: OFARunConfig, setup_payload: dict[str, Any]) -> ActorExecutor:
    """``parallelism`` Ray actors (``executor: auto`` when it is above 1, or ``ray``), else one
    worker in this process; each runs :func:`~nasdet.methods.ofa.scoring.setup` once."""
    s = cfg.search
    assert s is not None
    t = s.trainer_cfg
    kind = s.executor
    if kind == "auto":
        kind = "ray" if t.parallelism > 1 or s.address else "inprocess"
    if kind == "inprocess":
        if t.parallelism > 1:
            raise ConfigError(
                "search.executor: inprocess runs one worker; set trainer_cfg.parallelism: 1 or "
                "executor: ray"
            )
        return InProcessActorExecutor(setup, setup_payload)
    return RayActorExecutor(
        t.parallelism,
        setup,
        setup_payload,
        gpu_ids=list(t.dispatcher_cfg.gpu_ids) or None,
        address=s.address,
    )


def _score(state: ScoringState, payload: dict[str, Any]) -> dict[str, Any]:
    return score_subnet(state, payload)


def search(cfg: OFARunConfig, store: RecordStore, out: Path, supernet_path: Path) -> Record:
    """Run (or resume) the search; the chosen record (``search.selection``). The smallest subnet
    of the space is checked against the constraints first (every other costs more), so
    impossible limits fail at once."""
    s = cfg.search
    assert s is not None
    c = s.constraints
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
    space = space_of(cfg)
    smallest = space.smallest()
    reason = check(cost(smallest))
    if reason:
        raise InfeasibleConstraints(
            f"search.constraints: no subnet can satisfy them — even the smallest ({smallest}) "
            f"has {reason} at input {size}x{size}; loosen the limits"
        )
    payload = payload_for(supernet_path, cfg.base(), s.bn_mode, s.calibrate_samples)
    settings = AsyncEvolutionSettings(
        population_size=s.population_size,
        parent_ratio=s.parent_ratio,
        mutation_ratio=s.mutation_ratio,
        mutate_prob=s.mutate_prob,
        max_evaluations=s.max_evaluations,
        max_tries=s.max_tries,
        score_key=cfg.primary_metric,
        seed=cfg.seed,
    )
    p = s.predictor
    predictor = (
        AccuracyPredictor(min_samples=p.min_samples, refit_every=p.refit_every, screen=p.screen)
        if p.enabled
        else None
    )
    with make_executor(cfg, payload) as executor:
        result = async_evolution_search(
            store,
            "search",
            space=space,
            cost=cost,
            check_cost=check,
            payload=lambda g: {"bn_mode": s.bn_mode, "calibrate_samples": s.calibrate_samples},
            score=_score,
            executor=executor,
            settings=settings,
            constraints_text=describe(c),
            predictor=predictor,
            tensorboard_dir=out / "output" / "search" / "tensorboard",
        )
    records = result.records
    if not records:
        raise ConfigError("search: no candidate could be scored — see the log")
    step_dir = out / "output" / "search"
    step_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(step_dir / "summary.json", json.dumps(result.summary, indent=2) + "\n")
    log.info("search: %d scored, %d failed, %d infeasible; workers %s", result.summary.get(
        "scored", 0), result.summary.get("failures", 0), result.summary.get("infeasible", 0),
        result.summary.get("workers"))  # fmt: skip
    chosen = chosen_subnet(cfg, records)
    _export_front(cfg, out, supernet_path, records, chosen)
    return chosen


def chosen_subnet(cfg: OFARunConfig, records: list[Record]) -> Record:
    """The subnet to train among the scored ``records``, by ``search.selection`` (the best score
    when the config has no ``search`` section)."""
    s = cfg.search
    if s is None:
        return choose(records, [cfg.primary_metric], Selection(rule="best"), False, "search").record
    return choose(records, s.objective_keys, s.selection, s.constraints.given, "search").record


def _export_front(
    cfg: OFARunConfig, out: Path, supernet_path: Path, records: list[Record], best: Record
) -> None:
    """``pareto.csv``, and for the chosen subnet and each Pareto member ``subnet_<id>.json``
    (Once-for-All's genotype dict) and ``subnet_<id>.pth`` (a standalone detector with the
    supernet's sliced weights, BN recalibrated as when it was scored)."""
    s = cfg.search
    assert s is not None
    step_dir = out / "output" / "search"
    write_pareto_csv(step_dir / "pareto.csv", records, s.objective_keys)
    members = {r.id: r for r in pareto_records(records, s.objective_keys)}
    members[best.id] = best
    state = setup(payload_for(supernet_path, cfg.base(), s.bn_mode, s.calibrate_samples))
    ncls = len(state.data.categories) + 1
    for rec in members.values():
        genotype = OFAGenotype.parse(rec.genotype)
        write_text_atomic(step_dir / f"subnet_{rec.id}.json", genotype_json(genotype))
        dest = step_dir / f"subnet_{rec.id}.pth"
        if dest.is_file():
            continue
        model = sliced_subnet(state, cfg, genotype, s.bn_mode == "recalibrate", ncls)
        save_model(
            dest,
            model,
            architecture=subnet_architecture(cfg.model, genotype).model_dump(mode="json"),
            categories=state.data.categories,
            cat_ids=state.data.cat_ids,
            meta={"metrics": rec.metrics, "cost": rec.cost, "from_supernet": str(supernet_path)},
        )
    best_json = genotype_json(OFAGenotype.parse(best.genotype))
    write_text_atomic(step_dir / "best_subnet.json", best_json)
    key = cfg.primary_metric
    log.info("search: chosen %s (%s %.4f) -> %s", best.genotype, key,
             best.metrics.get(key, float("nan")), step_dir / f"subnet_{best.id}.pth")  # fmt: skip


def genotype_json(genotype: OFAGenotype) -> str:
    """Once-for-All's genotype dict as one line of JSON."""
    return json.dumps(genotype.to_dict()) + "\n"


def sliced_subnet(
    state: ScoringState, cfg: OFARunConfig, genotype: OFAGenotype, recalibrate: bool, ncls: int
) -> nn.Module:
    """The standalone detector of ``genotype`` with the supernet's weights (BN re-estimated on
    training images first when ``recalibrate``, as the search scored it)."""
    model = state.model
    model.load_state_dict(state.pristine, strict=False)
    model.backbone.body.set_active_subnet(genotype)
    if recalibrate:
        recalibrate_detector_bn(
            model,
            state.data.train,
            num_samples=cfg.search.calibrate_samples if cfg.search else 256,
            batch_size=cfg.eval.batch_size,
            seed=cfg.seed,
        )
    return export_subnet(model, cfg.model, genotype, ncls)[0]
