"""A toy asynchronous evolution: 8 integer genes in 0..4, score linear in the genes, cost their
sum. Tests import the toy; run as a script it searches (or resumes) in DIR, in process, and
SIGKILLs itself at a kill point::

    python tests/_async_killrun.py DIR [score:K | cost:K]

``score:K``: when the K-th candidate is being scored (K - 1 committed); ``cost:K``: at the K-th
cost computation of this process (while a proposal is being made, before it is stored).
"""

from __future__ import annotations

import os
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasdet.search.actors import ActorExecutor, InProcessActorExecutor
from nasdet.search.async_evolution import (
    AsyncEvolutionResult,
    AsyncEvolutionSettings,
    async_evolution_search,
)
from nasdet.search.records import RecordStore

GENES, LEVELS = 8, 5
WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 1)
BEST = sum(WEIGHTS) * (LEVELS - 1)
STEP = "async"
SETTINGS = AsyncEvolutionSettings(
    population_size=8, max_evaluations=40, max_tries=200, score_key="mAP", seed=3
)


@dataclass(frozen=True)
class Genes:
    values: tuple[int, ...]

    def __str__(self) -> str:
        return "-".join(map(str, self.values))


@dataclass
class ToySpace:
    """Uniform genes; mutation resamples each gene with ``prob``; crossover takes each gene from
    either parent. Counts the operator calls."""

    calls: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("sample", "mutate", "crossover"), 0)
    )

    def sample(self, rng: random.Random) -> Genes:
        self.calls["sample"] += 1
        return Genes(tuple(rng.randrange(LEVELS) for _ in range(GENES)))

    def mutate(self, g: Genes, rng: random.Random, prob: float) -> Genes:
        self.calls["mutate"] += 1
        return Genes(tuple(rng.randrange(LEVELS) if rng.random() < prob else v for v in g.values))

    def crossover(self, a: Genes, b: Genes, rng: random.Random) -> Genes:
        self.calls["crossover"] += 1
        return Genes(tuple(rng.choice(pair) for pair in zip(a.values, b.values, strict=True)))

    def parse(self, text: str) -> Genes:
        return Genes(tuple(int(v) for v in text.split("-")))

    def encode(self, g: Genes) -> list[float]:
        return [float(v) for v in g.values]


def toy_cost(g: Genes) -> dict[str, float]:
    return {"size": float(sum(g.values))}


def toy_value(text: str) -> float:
    """The toy score of a genotype text, in [0, 1]: linear in the genes."""
    values = [int(v) for v in text.split("-")]
    return sum(w * v for w, v in zip(WEIGHTS, values, strict=True)) / BEST


def toy_score(state: Any, payload: dict[str, Any]) -> dict[str, Any]:
    return {"metrics": {"mAP": toy_value(payload["genotype"])}}


def search(
    store: RecordStore,
    *,
    score: Callable[[Any, dict[str, Any]], dict[str, Any]] = toy_score,
    executor: ActorExecutor | None = None,
    settings: AsyncEvolutionSettings = SETTINGS,
    space: Any = None,
    cost: Callable[[Genes], dict[str, float]] = toy_cost,
    check_cost: Any = None,
    payload: Callable[[Genes], dict[str, Any]] = lambda g: {"n": len(g.values)},
    **kwargs: Any,
) -> AsyncEvolutionResult:
    return async_evolution_search(
        store,
        STEP,
        space=space or ToySpace(),
        cost=cost,
        check_cost=check_cost,
        payload=payload,
        score=score,
        executor=executor or InProcessActorExecutor(),
        settings=settings,
        **kwargs,
    )


def main(out: Path, kill: str | None) -> None:
    where, _, count = (kill or "none:0").partition(":")
    calls = {"score": 0, "cost": 0}

    def maybe_kill(point: str) -> None:
        calls[point] += 1
        if point == where and calls[point] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)

    def score(state: Any, payload: dict[str, Any]) -> dict[str, Any]:
        maybe_kill("score")
        return toy_score(state, payload)

    def cost(g: Genes) -> dict[str, float]:
        maybe_kill("cost")
        return toy_cost(g)

    with RecordStore(out) as store:
        search(store, score=score, cost=cost)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None)
