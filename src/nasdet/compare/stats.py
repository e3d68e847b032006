"""Statistics of ``nasdet compare``: the spread of a metric over seeds, and the paired
difference of two architectures trained with the same seeds.

Every function takes plain floats (e.g. mAP in [0, 1], one value per seed) and returns plain
floats or ``None`` where a number is undefined (a standard deviation of one value, a t-test of
fewer than two pairs or of differences without spread): ``compare.json`` has no NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PairedDifference", "Spread", "paired_difference", "spread"]


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (``ddof=1``; ``None`` for ``n < 2``) of ``n``
    values, in their unit."""

    mean: float
    std: float | None
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def spread(values: Sequence[float]) -> Spread:
    """Mean and sample standard deviation of ``values`` (at least one)."""
    if not values:
        raise ValueError("spread of no values")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return Spread(mean, std, n)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over seeds both were trained with.

    Attributes:
        seeds: the seeds paired, in order.
        mean, std: mean and sample standard deviation (``ddof=1``) of the per-seed differences,
            in the metric's unit (mAP: [0, 1] scale); ``std`` is ``None`` for one seed.
        t, p: ``scipy.stats.ttest_rel(a, b)``'s statistic and two-sided p-value; ``None`` when
            undefined (one seed, or every difference the same).
    """

    seeds: list[int]
    mean: float
    std: float | None
    t: float | None
    p: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_difference(
    a: Sequence[float], b: Sequence[float], seeds: Sequence[int]
) -> PairedDifference:
    """The paired difference ``a[i] - b[i]`` (``a`` and ``b``: one value per seed of ``seeds``)
    and its paired t-test."""
    if not (len(a) == len(b) == len(seeds)) or not seeds:
        raise ValueError(f"paired values of unequal or zero length: {len(a)}, {len(b)}, {seeds}")
    diffs = spread([x - y for x, y in zip(a, b, strict=True)])
    t = p = None
    if len(seeds) > 1:
        import warnings

        from scipy.stats import ttest_rel

        with warnings.catch_warnings():  # identical differences: a precision-loss warning, NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            result = ttest_rel(list(a), list(b))
        t, p = _finite(float(result.statistic)), _finite(float(result.pvalue))
        if diffs.std == 0.0:  # no spread: scipy gives ±inf or NaN, not a test result
            t = p = None
    return PairedDifference([int(s) for s in seeds], diffs.mean, diffs.std, t, p)
