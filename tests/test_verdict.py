"""The one-line verdict printed after a run: the winner against the baseline it was compared
with (one seed, so it says so)."""

from __future__ import annotations

import pytest

from nasdet.report.verdict import verdict


def test_dominates() -> None:
    line = verdict({"mAP": 0.52}, {"params": 8e5}, {"mAP": 0.50}, {"params": 1e6}, "mAP")
    assert line.startswith("the searched net dominates the baseline")
    assert "mAP 0.5200 vs 0.5000 (+0.0200)" in line and "params 0.80x" in line
    assert "one seed" in line


def test_equal_cost_better_metric_dominates() -> None:
    line = verdict({"mAP": 0.52}, {"params": 1e6}, {"mAP": 0.50}, {"params": 1e6}, "mAP")
    assert line.startswith("the searched net dominates")


@pytest.mark.parametrize(
    ("m", "p", "start"),
    [
        (0.48, 1.2e6, "the searched net does NOT beat the baseline: less accurate and not cheaper"),
        (0.48, 1e6, "the searched net does NOT beat the baseline: less accurate and not cheaper"),
        (0.50, 1.2e6, "the searched net does NOT beat the baseline: larger and not more accurate"),
        (0.48, 8e5, "trade-off: the searched net is cheaper but less accurate"),
        (0.55, 1.2e6, "trade-off: the searched net is more accurate but larger"),
        (0.50, 1e6, "the searched net does NOT beat the baseline: equal"),
    ],
)
def test_the_other_cases(m: float, p: float, start: str) -> None:
    line = verdict({"mAP": m}, {"params": p}, {"mAP": 0.50}, {"params": 1e6}, "mAP")
    assert line.startswith(start), line


def test_missing_values_say_so() -> None:
    line = verdict({"mAP": 0.5}, {}, {"mAP": 0.4}, {"params": 1.0}, "mAP")
    assert line.startswith("no verdict: params is missing")


def test_every_cost_counts() -> None:
    """Fewer parameters but more FLOPs is not cheaper: a trade-off, not a win."""
    base = {"params": 1e6, "flops": 2e8}
    line = verdict({"mAP": 0.52}, {"params": 9e5, "flops": 2.2e8}, {"mAP": 0.50}, base, "mAP")
    assert line.startswith("trade-off: the searched net is more accurate but larger"), line
    assert "params 0.90x, flops 1.10x" in line
    line = verdict({"mAP": 0.52}, {"params": 7e5, "flops": 2e8}, {"mAP": 0.50}, base, "mAP")
    assert line.startswith("the searched net dominates"), line
    line = verdict({"mAP": 0.48}, {"params": 9e5, "flops": 2.2e8}, {"mAP": 0.50}, base, "mAP")
    assert line.startswith("the searched net does NOT beat the baseline: less accurate"), line


def test_a_cost_measured_for_neither_is_left_out() -> None:
    line = verdict({"mAP": 0.52}, {"params": 8e5}, {"mAP": 0.50}, {"params": 1e6}, "mAP",
                   cost_keys=("params", "flops"))  # fmt: skip
    assert line.startswith("the searched net dominates") and "flops" not in line
    line = verdict({"mAP": 0.52}, {"params": 8e5}, {"mAP": 0.50}, {"params": 1e6, "flops": 1.0},
                   "mAP")  # fmt: skip
    assert line.startswith("no verdict: flops is missing"), line
    line = verdict({"mAP": 0.52}, {}, {"mAP": 0.50}, {}, "mAP")
    assert line.startswith("no verdict: no cost (params, flops) was measured"), line
