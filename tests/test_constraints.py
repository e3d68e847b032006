"""Tests of nasdet.search.constraints: one schema and one checker for every search method."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from test_cost import tiny_fcos

from nasdet._config_errors import describe_error
from nasdet.search.constraints import Constraints, Limits, checker, cost_for, describe, needs

# a cost that breaks nothing below
COST = {
    "params": 1_000_000.0,
    "flops": 2.0e9,
    "macs": 1.0e9,
    "latency_ms": 20.0,
    "memory_mb": 300.0,
    "backbone_params": 400_000.0,
    "backbone_flops": 1.2e7,
    "backbone_macs": 6.0e6,
    "backbone_latency_ms": 5.0,
}


def one_line_error(data: dict) -> str:
    """The one-line message the config loader shows for ``data`` under ``search.constraints``."""
    with pytest.raises(ValidationError) as info:
        Constraints.model_validate(data)
    text = describe_error(info.value, Constraints)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    ("limits", "cost_key", "value", "message"),
    [
        ({"max_params": 1_000_000}, "params", 1_234_567, "params 1,234,567 > max_params 1,000,000"),
        ({"max_flops": 2e9}, "flops", 2.5e9, "flops 2.5e+09 > max_flops 2e+09"),
        ({"max_latency_ms": 20}, "latency_ms", 20.5, "latency_ms 20.5 > max_latency_ms 20"),
        ({"max_memory_mb": 300}, "memory_mb", 301.25, "memory_mb 301.2 > max_memory_mb 300"),
        (
            {"backbone": {"max_params": 400_000}},
            "backbone_params",
            400_001,
            "backbone_params 400,001 > backbone.max_params 400,000",
        ),
        (
            {"backbone": {"max_flops": 1.2e7}},
            "backbone_flops",
            1.3e7,
            "backbone_flops 1.3e+07 > backbone.max_flops 1.2e+07",
        ),
        (
            {"backbone": {"max_latency_ms": 5}},
            "backbone_latency_ms",
            5.5,
            "backbone_latency_ms 5.5 > backbone.max_latency_ms 5",
        ),
    ],
)
def test_checker_each_limit(limits: dict, cost_key: str, value: float, message: str) -> None:
    check = checker(Constraints.model_validate(limits))
    assert check(COST) is None  # at the limit or below passes
    assert check({**COST, cost_key: value}) == message


def test_checker_distinguishes_close_values() -> None:
    check = checker(Constraints(max_flops=1.2e7))
    assert check({**COST, "flops": 12_000_001.0}) == "flops 12000001 > max_flops 1.2e+07"
    assert check({**COST, "flops": 1.23456e7}) == "flops 1.235e+07 > max_flops 1.2e+07"


def test_checker_reports_the_first_broken_limit_in_order() -> None:
    constraints = Constraints.model_validate(
        {
            "max_params": 1,
            "max_flops": 1,
            "max_latency_ms": 1,
            "max_memory_mb": 1,
            "backbone": {"max_params": 1, "max_flops": 1, "max_latency_ms": 1},
        }
    )
    check = checker(constraints)
    order = ["params", "flops", "latency_ms", "memory_mb"]
    order += ["backbone_params", "backbone_flops", "backbone_latency_ms"]
    cost = {k: 0.5 for k in COST}
    assert check(cost) is None
    broken = {k: 0.5 for k in COST}
    for key in reversed(order):  # break them from the last one: each time the new one is first
        broken[key] = 2.0
        message = check(broken)
        assert message is not None and message.startswith(f"{key} 2 > ")


def test_checker_without_limits_accepts_anything() -> None:
    assert checker(Constraints())({"params": 1e12}) is None


def test_checker_refuses_a_cost_without_the_limited_key() -> None:
    check = checker(Constraints(max_latency_ms=10))
    with pytest.raises(ValueError, match="latency_ms.*max_latency_ms"):
        check({"params": 1.0})


def test_describe_lists_given_limits_as_written() -> None:
    constraints = Constraints.model_validate(
        {"max_params": 984_864, "max_memory_mb": 512, "backbone": {"max_flops": 1.2e7}}
    )
    assert describe(constraints) == (
        "max_params <= 984,864, max_memory_mb <= 512, backbone.max_flops <= 1.2e+07"
    )
    assert describe(Constraints(max_latency_ms=12.5)) == "max_latency_ms <= 12.5"
    assert describe(Constraints()) == "no limits"


def test_needs_names_the_expensive_measurements() -> None:
    assert needs(Constraints(max_params=10, max_flops=1e6)) == set()
    assert needs(Constraints(max_latency_ms=5)) == {"latency_ms"}
    assert needs(Constraints.model_validate({"backbone": {"max_latency_ms": 5}})) == {
        "backbone_latency_ms"
    }
    assert needs(Constraints(max_memory_mb=100, max_latency_ms=5)) == {"latency_ms", "memory_mb"}


def test_schema_defaults_and_given() -> None:
    constraints = Constraints()
    assert (constraints.input_size, constraints.batch_size) == (None, None)
    assert constraints.backbone == Limits() and not constraints.given
    assert Constraints.model_validate({"backbone": {"max_params": 5}}).given
    assert Limits(max_memory_mb=1).given


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"max_params": 0}, "max_params: Input should be greater than or equal to 1 (got 0)"),
        ({"max_flops": -1}, "max_flops: Input should be greater than 0 (got -1)"),
        ({"max_latency_ms": 0}, "max_latency_ms: Input should be greater than 0"),
        ({"max_memory_mb": -5}, "max_memory_mb: Input should be greater than 0"),
        ({"input_size": 8}, "input_size: Input should be greater than or equal to 16"),
        ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
        ({"backbone": {"max_flops": -2}}, "backbone.max_flops: Input should be greater than 0"),
        ({"max_param": 5}, "max_param: unknown key — did you mean 'max_params'?"),
        ({"backbone": {"max_flop": 5}}, "backbone.max_flop: unknown key — did you mean"),
        (
            {"backbone": {"max_memory_mb": 100}},
            "backbone: max_memory_mb applies to the whole detector only",
        ),
    ],
)
def test_schema_errors_are_one_line(data: dict, expected: str) -> None:
    assert one_line_error(data).startswith(expected)


def test_backbone_memory_error_says_what_to_do() -> None:
    assert "move it to the top level" in one_line_error({"backbone": {"max_memory_mb": 100}})
    with pytest.raises(ValidationError):
        Constraints(backbone=Limits(max_memory_mb=100))


def test_cost_for_measures_what_the_limits_need() -> None:
    model = tiny_fcos()
    plain = cost_for(model, Constraints(max_params=10), input_size=64, batch_size=2)
    assert set(plain) == {
        "params", "flops", "macs", "backbone_params", "backbone_flops", "backbone_macs"
    }  # fmt: skip
    constraints = Constraints.model_validate(
        {
            "max_memory_mb": 1000,
            "max_latency_ms": 100_000,  # only the keys matter here, not this machine's speed
            "input_size": 48,
            "batch_size": 3,
            "backbone": {"max_latency_ms": 100_000},
        }
    )
    cost = cost_for(model, constraints, input_size=64, batch_size=2, threads=1, min_run_time=0.01)
    assert {"latency_ms", "backbone_latency_ms", "memory_mb", "memory_measured"} <= set(cost)
    assert cost["memory_measured"] == 0.0 and cost["memory_mb"] > 0
    assert checker(constraints)(cost) is None
    # constraints.batch_size (3) wins over the default (2): more activations than at batch 2
    two = cost_for(model, Constraints(max_memory_mb=1000), input_size=48, batch_size=2)
    assert cost["memory_mb"] > two["memory_mb"]
