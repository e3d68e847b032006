"""SP-NAS proposals: SpNasS (serial backbone growth) and SpNasP (parallel neck).

Both pick a parent from the current Pareto front of their step (uniformly, with the step's
seeded RNG) and return a :class:`~nasdet.search.driver.Proposal`; :func:`run_search` does the rest.

- SpNasS mutates the parent's serial code (swap / expand / add-stage, the seed's ``num_mutate``,
  ``expend_ratio``, ``add_stage_ratio``, ``max_stages``); the child inherits the parent's weights
  (new blocks start as identity morphisms) and, with ``freeze_swap_keys``, trains only what is new.
- SpNasP adds parallel sub-network blocks to the feature levels of the chosen serial network,
  sampling levels with probability inversely proportional to one block's FLOPs there.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nasdet.build import build_detector
from nasdet.methods.spnas.config import Model
from nasdet.methods.spnas.neck_space import ParallelCode, mutate_parallel, sample_parallel_code
from nasdet.methods.spnas.parallel_fpn import levels_branch_flops
from nasdet.methods.spnas.parts import ParallelFPNNeck
from nasdet.methods.spnas.space import SerialSpace, mutate
from nasdet.search.constraints import Constraints, cost_for
from nasdet.search.driver import Proposal
from nasdet.search.pareto import Objective, pareto_records
from nasdet.search.records import Record, RecordStore


def choose_parent(
    store: RecordStore, step: str, objectives: Sequence[Objective | str], rng: random.Random
) -> Record | None:
    """A uniformly chosen member of the step's current Pareto front (None when nothing is done)."""
    front = pareto_records(store.records(step, status="done"), objectives)
    return rng.choice(front) if front else None


def _architecture(rec: Record) -> Model:
    return Model.model_validate(rec.extra["payload"]["architecture"])


@dataclass(frozen=True)
class SerialProposer:
    """SpNasS: children of Pareto members by mutation of their serial code."""

    step: str
    objectives: Sequence[Objective | str]
    space: SerialSpace
    base_payload: dict[str, Any]
    num_mutate: int = 3
    expend_ratio: float = 0.3
    add_stage_ratio: float = 0.05
    num_classes: int = 11
    constraints: Constraints = Constraints()  # what each proposal's cost must include
    batch_size: int = 16  # of the memory limit (train.batch_size)

    def __call__(self, store: RecordStore, rng: random.Random) -> Proposal | None:
        parent = choose_parent(store, self.step, self.objectives, rng)
        if parent is None:
            return None
        child = mutate(
            parent.genotype,
            rng,
            num_mutate=self.num_mutate,
            expend_ratio=self.expend_ratio,
            add_stage_ratio=self.add_stage_ratio,
            space=self.space,
        )
        arch = _architecture(parent)
        backbone = arch.backbone.model_copy(update={"code": str(child), "levels": None})
        arch = arch.model_copy(update={"backbone": backbone})
        model = build_detector(arch, self.num_classes, load_weights=False)
        cost = cost_for(
            model, self.constraints, input_size=arch.min_size, batch_size=self.batch_size
        )
        payload = {
            **self.base_payload,
            "architecture": arch.model_dump(mode="json"),
            "parent_weights": parent.weights_path,
        }
        return Proposal(str(child), parent.id, payload, cost)


@dataclass(frozen=True)
class ParallelProposer:
    """SpNasP: a parallel-neck code for a chosen serial network.

    The genotype string is ``<serial code>|<parallel code>``. Starting from each root, codes are
    sampled with inverse-FLOPs level probabilities; from other Pareto members, one level changes
    by one block.
    """

    step: str
    objectives: Sequence[Objective | str]
    base_payload: dict[str, Any]
    max_blocks_per_level: int = 3
    max_flops: float | None = None
    num_classes: int = 11
    constraints: Constraints = Constraints()
    batch_size: int = 16

    def __call__(self, store: RecordStore, rng: random.Random) -> Proposal | None:
        parent = choose_parent(store, self.step, self.objectives, rng)
        if parent is None:
            return None
        arch = _architecture(parent)
        serial_code, _, neck = parent.genotype.partition("|")
        detector = build_detector(arch, self.num_classes, load_weights=False)
        body = detector.backbone.body
        if not neck:  # a serial network without parallel blocks yet
            flops = levels_branch_flops(body, (arch.min_size, arch.min_size))
            code = sample_parallel_code(rng, flops, max_blocks_per_level=self.max_blocks_per_level)
            if code.total_blocks == 0:
                code = code.with_level(rng.randrange(len(code)), 1)
        else:
            code = mutate_parallel(
                ParallelCode.parse(neck), rng, max_blocks_per_level=self.max_blocks_per_level
            )
        arch = arch.model_copy(update={"neck": ParallelFPNNeck(code=str(code))})
        model = build_detector(arch, self.num_classes, load_weights=False)
        cost = cost_for(
            model, self.constraints, input_size=arch.min_size, batch_size=self.batch_size
        )
        payload = {
            **self.base_payload,
            "architecture": arch.model_dump(mode="json"),
            "parent_weights": parent.weights_path,
        }
        return Proposal(f"{serial_code}|{code}", parent.id, payload, cost)
