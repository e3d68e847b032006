"""SP-NAS serial genotype: parse/encode round trips, validation, sampling and mutations."""

from __future__ import annotations

import json
import random

import pytest

from nasdet.methods.spnas.space import (
    DEFAULT_SPACE,
    SerialCode,
    SerialSpace,
    add_stage_children,
    expand_children,
    mutate,
    mutate_add_stage,
    mutate_expand,
    mutate_swap,
    sample_code,
    swap_children,
)

R50 = "111-2111-211111-211"


@pytest.mark.parametrize("text", [R50, "11-21-21-21", "1-2-2-2-2-2", "1111111-21-2111-2"])
def test_round_trip(text: str) -> None:
    code = SerialCode.parse(text)
    assert str(code) == text
    assert SerialCode.from_json(json.loads(json.dumps(code.to_json()))) == code
    assert SerialCode.parse(code) is code
    assert hash(code) == hash(SerialCode.parse(text))


def test_properties_of_resnet50() -> None:
    code = SerialCode.parse(R50)
    assert code.blocks_per_stage == (3, 4, 6, 3)
    assert code.num_blocks == 16
    assert code.num_levels == 4 and code.num_stages == 5
    assert code.levels == (2, 3, 4, 5)
    assert code.strides == (4, 8, 16, 32)
    assert code.widths("bottleneck") == (256, 512, 1024, 2048)
    assert code.widths("basic", base_width=16) == (16, 32, 64, 128)
    assert SerialCode.parse("111-2-2-2-21").strides[-1] == 64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("111-2a11", "invalid character"),
        ("111 - 2111", "invalid character"),
        ("", "stage 1 is empty"),
        ("111--2111", "stage 2 is empty"),
        ("111-2111-", "stage 3 is empty"),
        ("121-2111", "first stage must have only stride-1"),
        ("111-1211", "must start with one stride-2"),
        ("111-2121", "must start with one stride-2"),
        ("111-22", "must start with one stride-2"),
    ],
)
def test_invalid_codes_say_why(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SerialCode.parse(text)


def test_non_string_code_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="quote it in YAML"):
        SerialCode.parse(111)  # type: ignore[arg-type]


def test_space_limits() -> None:
    assert DEFAULT_SPACE.check(R50) == SerialCode.parse(R50)
    with pytest.raises(ValueError, match="7 blocks; the space allows 8 to 60"):
        DEFAULT_SPACE.check("11-21-21-2")
    with pytest.raises(ValueError, match="4 stages .stem included.; the space allows 5 to 7"):
        DEFAULT_SPACE.check("1111-2111-2111")
    with pytest.raises(ValueError, match="8 stages"):
        DEFAULT_SPACE.check("11-2-2-2-2-2-2")
    assert SerialSpace(min_blocks=4, min_stages=3).contains(SerialCode.parse("11-21-21-21"))
    with pytest.raises(ValueError, match="min_stages"):
        SerialSpace(min_stages=6, max_stages=5)
    with pytest.raises(ValueError, match="block must be one of"):
        SerialSpace(block="dense")  # type: ignore[arg-type]
    assert (DEFAULT_SPACE.min_levels, DEFAULT_SPACE.max_levels) == (4, 6)


def test_sampled_codes_are_valid() -> None:
    rng = random.Random(0)
    codes = {sample_code(rng) for _ in range(300)}
    assert all(DEFAULT_SPACE.contains(c) for c in codes)
    assert {c.num_levels for c in codes} == {4, 5, 6}
    assert len(codes) > 250
    small = SerialSpace(min_blocks=5, max_blocks=6, min_stages=5, max_stages=5)
    tiny = {sample_code(rng, small) for _ in range(200)}
    assert all(small.contains(c) for c in tiny)
    assert len(tiny) == 4 + 10  # 5 blocks over 4 stages: 4 ways; 6 blocks: 10 ways


def test_single_mutations() -> None:
    code = SerialCode.parse(R50)
    assert {str(c) for c in swap_children(code)} == {
        "1111-211-211111-211",
        "11-21111-211111-211",
        "111-21111-21111-211",
        "111-211-2111111-211",
        "111-2111-2111111-21",
        "111-2111-21111-2111",
    }
    assert {str(c) for c in expand_children(code)} == {
        "1111-2111-211111-211",
        "111-21111-211111-211",
        "111-2111-2111111-211",
        "111-2111-211111-2111",
    }
    assert {str(c) for c in add_stage_children(code)} == {R50 + "-2", R50 + "-21"}
    rng = random.Random(1)
    for op in (mutate_swap, mutate_expand, mutate_add_stage):
        child = op(code, rng)
        assert child != code and DEFAULT_SPACE.contains(child)


def test_mutations_at_the_limits_raise() -> None:
    rng = random.Random(0)
    at_max_stages = SerialCode.parse("11-21-21-21-21-21")
    with pytest.raises(ValueError, match="no valid add-stage mutation"):
        mutate_add_stage(at_max_stages, rng)
    full = SerialSpace(max_blocks=16)
    with pytest.raises(ValueError, match="no valid expand mutation"):
        mutate_expand(SerialCode.parse(R50), rng, full)
    single = SerialCode.parse("1-2-2-2")
    with pytest.raises(ValueError, match="no valid swap mutation"):
        mutate_swap(single, rng, SerialSpace(min_blocks=4))
    frozen = SerialSpace(min_blocks=4, max_blocks=4, min_stages=5, max_stages=5)
    with pytest.raises(ValueError, match="no swap, expand or add-stage"):
        mutate(single, rng, space=frozen)


def test_mutate_many_seeds_valid_different_and_all_kinds_reached() -> None:
    parent = SerialCode.parse(R50)
    seen_blocks, seen_levels, seen_swap = set(), set(), False
    for seed in range(400):
        rng = random.Random(seed)
        child = mutate(parent, rng, num_mutate=3, expend_ratio=0.3, add_stage_ratio=0.05)
        assert child != parent
        assert DEFAULT_SPACE.check(str(child)) == child
        seen_blocks.add(child.num_blocks)
        seen_levels.add(child.num_levels)
        seen_swap |= child.num_blocks == parent.num_blocks and child.num_levels == 4
    assert 16 in seen_blocks and max(seen_blocks) > 16  # swaps keep the count, expands add
    assert seen_levels >= {4, 5} and seen_swap


def test_mutate_chains_stay_in_space_and_are_reproducible() -> None:
    space = SerialSpace(max_blocks=20)
    for seed in range(20):
        rng, code = random.Random(seed), SerialCode.parse(R50)
        for _ in range(15):
            child = mutate(code, rng, add_stage_ratio=0.3, space=space)
            assert child != code and space.contains(child)
            code = child
    a = mutate(R50, random.Random(7))
    b = mutate(R50, random.Random(7))
    assert a == b


def test_mutate_rejects_bad_ratios() -> None:
    with pytest.raises(ValueError, match="expend_ratio"):
        mutate(R50, random.Random(0), expend_ratio=1.5)
    with pytest.raises(ValueError, match="num_mutate"):
        mutate(R50, random.Random(0), num_mutate=0)
