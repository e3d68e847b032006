"""``nasdet compare``: paired statistics, identical budgets, resume, dataset checks, and the
command end to end on two tiny architectures x two seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from nasdet.compare.stats import paired_difference, spread

A = [0.412, 0.398, 0.405, 0.421]
B = [0.401, 0.399, 0.392, 0.409]
SEEDS = [0, 1, 2, 3]


def test_spread_is_mean_and_sample_std() -> None:
    s = spread(A)
    assert s.mean == pytest.approx(np.mean(A), abs=1e-15)
    assert s.std == pytest.approx(np.std(A, ddof=1), abs=1e-15)
    assert s.n == 4
    one = spread([0.5])
    assert (one.mean, one.std, one.n) == (0.5, None, 1)


def test_paired_difference_matches_scipy() -> None:
    d = paired_difference(A, B, SEEDS)
    direct = scipy_stats.ttest_rel(A, B)
    diffs = np.subtract(A, B)
    assert d.seeds == SEEDS
    assert d.mean == pytest.approx(diffs.mean(), abs=1e-15)
    assert d.std == pytest.approx(diffs.std(ddof=1), abs=1e-15)
    assert d.t == pytest.approx(direct.statistic, rel=1e-12)
    assert d.p == pytest.approx(direct.pvalue, rel=1e-12)
    # by hand: t = mean / (std / sqrt(n))
    assert d.t == pytest.approx(diffs.mean() / (diffs.std(ddof=1) / math.sqrt(4)), rel=1e-12)
    swapped = paired_difference(B, A, SEEDS)
    assert swapped.mean == pytest.approx(-d.mean) and swapped.t == pytest.approx(-d.t)
    assert swapped.p == pytest.approx(d.p)


def test_paired_difference_undefined_cases_are_none() -> None:
    one = paired_difference([0.4], [0.3], [7])
    assert one.mean == pytest.approx(0.1) and (one.std, one.t, one.p) == (None, None, None)
    same = paired_difference([0.5, 0.75], [0.25, 0.5], [0, 1])  # exact: no spread at all
    assert (same.mean, same.std, same.t, same.p) == (0.25, 0.0, None, None)
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.1], [0, 1])
