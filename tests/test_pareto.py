"""Pareto front, hypervolume and pareto.csv on hand-made point sets with known answers."""

from __future__ import annotations

import csv
import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest

from nasdet.search import (
    Objective,
    Record,
    RecordStore,
    hypervolume,
    pareto_front,
    pareto_records,
    parse_objectives,
    write_pareto_csv,
)

MAP_PARAMS = [Objective("mAP", True), Objective("params", False)]


def pts(keys: str, *rows: tuple[float, ...]) -> list[dict[str, float]]:
    """Points from rows of values for space-separated ``keys``."""
    return [dict(zip(keys.split(), row, strict=True)) for row in rows]


def naive_front(points: list[dict[str, float]], objectives: list[Objective]) -> list[int]:
    """Test oracle: O(n²) dominance check (duplicates do not dominate each other)."""

    def better_eq(a: dict, b: dict) -> bool:
        return all((a[o.key] >= b[o.key]) if o.maximize else (a[o.key] <= b[o.key])
                   for o in objectives)  # fmt: skip

    def dominates(a: dict, b: dict) -> bool:
        return better_eq(a, b) and not better_eq(b, a)

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


# -- objectives ------------------------------------------------------------------------------


def test_parse_seed_objective_keys():
    assert parse_objectives(["mAP", "params"]) == MAP_PARAMS


@pytest.mark.parametrize(
    "key",
    ["mAP", "AP50", "AP75", "AP_small", "AR1", "AR100", "AR_large", "mAP50", "VOC_AP50",
     "VOC07_AP50"],
)  # fmt: skip
def test_known_maximized(key: str):
    assert parse_objectives([key]) == [Objective(key, True)]


@pytest.mark.parametrize(
    "key",
    ["params", "flops", "macs", "backbone_params", "backbone_flops", "backbone_macs", "latency",
     "latency_ms", "latency_ms_median", "onnx_latency_ms_median"],
)  # fmt: skip
def test_known_minimized(key: str):
    assert parse_objectives([key]) == [Objective(key, False)]


def test_sign_prefix_overrides_and_allows_unknown_keys():
    objs = parse_objectives(["-mAP", "+params", "+accuracy", " - energy_mj "])
    assert objs == [
        Objective("mAP", False),
        Objective("params", True),
        Objective("accuracy", True),
        Objective("energy_mj", False),
    ]
    assert [str(o) for o in objs] == ["-mAP", "+params", "+accuracy", "-energy_mj"]
    assert parse_objectives([str(o) for o in objs]) == objs


def test_unknown_key_names_it_and_the_known_ones():
    with pytest.raises(ValueError, match=r"'accuracy'.*mAP.*params.*'\+'"):
        parse_objectives(["mAP", "accuracy"])


@pytest.mark.parametrize("keys", [[], ["mAP", "mAP"], ["mAP", "+mAP"], ["+"], "mAP"])
def test_bad_objective_lists(keys):
    with pytest.raises(ValueError):
        parse_objectives(keys)


# -- Pareto front ----------------------------------------------------------------------------


def test_front_2d_with_ties():
    points = pts(
        "mAP params",
        (0.5, 2),  # 0 front
        (0.3, 1),  # 1 front
        (0.4, 3),  # 2 dominated by 0
        (0.5, 3),  # 3 same mAP as 0, more params: dominated
        (0.2, 1),  # 4 same params as 1, lower mAP: dominated
        (0.6, 5),  # 5 front
    )
    assert pareto_front(points, MAP_PARAMS) == [0, 1, 5]
    assert pareto_front(points, ["mAP", "params"]) == [0, 1, 5]  # keys work too


def test_front_directions_matter():
    points = pts("mAP params", (0.5, 2), (0.3, 1), (0.4, 3), (0.5, 3), (0.2, 1), (0.6, 5))
    assert pareto_front(points, ["-mAP", "params"]) == [4]  # least of both
    assert pareto_front(points, ["mAP", "+params"]) == [5]  # most of both
    assert pareto_front(points, ["-mAP", "+params"]) == [2, 4, 5]


def test_duplicates_all_kept_on_front_and_all_dropped_off_it():
    points = pts("mAP params", (0.5, 2), (0.3, 3), (0.5, 2), (0.3, 3), (0.1, 1))
    assert pareto_front(points, MAP_PARAMS) == [0, 2, 4]


def test_single_empty_and_all_on_front():
    assert pareto_front(pts("mAP params", (0.1, 9)), MAP_PARAMS) == [0]
    assert pareto_front([], MAP_PARAMS) == []
    staircase = pts("mAP params", (0.1, 1), (0.2, 2), (0.3, 3), (0.4, 4))
    assert pareto_front(staircase, MAP_PARAMS) == [0, 1, 2, 3]
    same = pts("mAP params", (0.3, 3), (0.3, 3), (0.3, 3))
    assert pareto_front(same, MAP_PARAMS) == [0, 1, 2]


def test_front_3d():
    objs = parse_objectives(["mAP", "params", "latency_ms"])
    points = pts(
        "mAP params latency_ms",
        (0.5, 10, 5),  # 0 front
        (0.4, 8, 6),  # 1 front: fewest params
        (0.4, 10, 6),  # 2 dominated by 0
        (0.3, 12, 1),  # 3 front: fastest
        (0.5, 10, 5),  # 4 duplicate of 0
        (0.2, 12, 1),  # 5 dominated by 3
        (0.5, 10, 6),  # 6 dominated by 0 (only latency differs)
    )
    assert pareto_front(points, objs) == [0, 1, 3, 4]


@pytest.mark.parametrize("dims", [2, 3, 4])
def test_front_matches_naive_oracle_on_tied_random_points(dims: int):
    rng = random.Random(dims)
    keys = ["mAP", "params", "flops", "latency_ms"][:dims]
    objs = parse_objectives(keys)
    for _ in range(20):
        points = [{k: rng.randint(0, 4) for k in keys} for _ in range(rng.randint(1, 25))]
        assert pareto_front(points, objs) == naive_front(points, objs)


def test_extra_keys_ignored_and_numpy_values_accepted():
    points = [
        {"mAP": np.float32(0.5), "params": np.int64(2), "name": "a"},
        {"mAP": 0.1, "params": 3},
    ]
    assert pareto_front(points, MAP_PARAMS) == [0]


@pytest.mark.parametrize(
    ("point", "message"),
    [({"mAP": 0.5}, "point 1 has no objective 'params'"),
     ({"mAP": math.nan, "params": 1}, "not finite"),
     ({"mAP": "0.5", "params": 1}, "not a number"),
     ({"mAP": True, "params": 1}, "not a number")],
)  # fmt: skip
def test_front_rejects_bad_points(point: dict, message: str):
    with pytest.raises(ValueError, match=message):
        pareto_front([{"mAP": 0.1, "params": 1}, point], MAP_PARAMS)


# -- hypervolume -----------------------------------------------------------------------------


def test_hypervolume_two_rectangles_by_hand():
    # Boxes up to the reference (mAP 0, params 4): [0, 0.5] x [2, 4] = 1.0 and
    # [0, 0.3] x [1, 4] = 0.9, overlapping in [0, 0.3] x [2, 4] = 0.6: union 1.3.
    points = pts("mAP params", (0.5, 2), (0.3, 1))
    ref = {"mAP": 0.0, "params": 4.0}
    assert hypervolume(points, MAP_PARAMS, ref) == pytest.approx(1.3)
    assert hypervolume(points[:1], MAP_PARAMS, ref) == pytest.approx(1.0)
    # a dominated point and a duplicate add nothing
    more = [*points, {"mAP": 0.2, "params": 3}, {"mAP": 0.5, "params": 2}]
    assert hypervolume(more, ["mAP", "params"], ref) == pytest.approx(1.3)


def test_hypervolume_points_beyond_reference_and_empty():
    ref = {"mAP": 0.0, "params": 4.0}
    assert hypervolume(pts("mAP params", (0.5, 5)), MAP_PARAMS, ref) == 0.0
    assert hypervolume(pts("mAP params", (0.0, 1)), MAP_PARAMS, ref) == 0.0
    assert hypervolume([], MAP_PARAMS, ref) == 0.0


def test_hypervolume_3d_boxes_by_hand():
    objs = parse_objectives(["mAP", "params", "latency_ms"])
    ref = {"mAP": 0.0, "params": 3.0, "latency_ms": 4.0}
    a = {"mAP": 0.5, "params": 1.0, "latency_ms": 2.0}  # 0.5 * 2 * 2 = 2
    b = {"mAP": 0.25, "params": 0.0, "latency_ms": 0.0}  # 0.25 * 3 * 4 = 3
    assert hypervolume([a], objs, ref) == pytest.approx(2.0)
    # overlap [0, 0.25] x [1, 3] x [2, 4] = 1: union 2 + 3 - 1 = 4
    assert hypervolume([a, b], objs, ref) == pytest.approx(4.0)


def test_hypervolume_mixed_directions():
    # minimise mAP, maximise params: reference is the worst corner (mAP 1, params 0)
    points = pts("mAP params", (0.5, 2), (0.25, 1))
    ref = {"mAP": 1.0, "params": 0.0}
    # [0.5, 1] x [0, 2] = 1.0 and [0.25, 1] x [0, 1] = 0.75, overlap [0.5, 1] x [0, 1] = 0.5
    assert hypervolume(points, ["-mAP", "+params"], ref) == pytest.approx(1.25)


def test_hypervolume_needs_full_reference():
    with pytest.raises(ValueError, match="reference has no value for \\['params'\\]"):
        hypervolume(pts("mAP params", (0.5, 2)), MAP_PARAMS, {"mAP": 0.0})


# -- records and pareto.csv ------------------------------------------------------------------

_ids = itertools.count(1)


def rec(status: str, metrics: dict, cost: dict, **kw) -> Record:
    """A record built in memory (no store needed)."""
    i = next(_ids)
    fields = dict(id=i, step="serial", genotype=f"g{i}", parent_id=None, status=status,
                  metrics=metrics, cost=cost, weights_path=None, error=None, created_at=0.0,
                  started_at=None, finished_at=None, worker=None, extra={})  # fmt: skip
    return Record(**{**fields, **kw})


def test_pareto_records_merges_metrics_and_cost_and_skips_unfit():
    good = rec("done", {"mAP": 0.5}, {"params": 2})
    good2 = rec("done", {"mAP": 0.3}, {"params": 1})
    dominated = rec("done", {"mAP": 0.2}, {"params": 3})
    failed = rec("failed", {"mAP": 0.9}, {"params": 1})
    running = rec("running", {}, {"params": 0})
    no_params = rec("done", {"mAP": 0.99}, {})
    nan_map = rec("done", {"mAP": math.nan}, {"params": 0})
    overridden = rec("done", {"mAP": 0.4, "params": 9}, {"params": 0})  # metrics win: 9
    records = [good, failed, running, good2, no_params, dominated, nan_map, overridden]
    assert pareto_records(records, ["mAP", "params"]) == [good, good2]
    assert pareto_records([], ["mAP", "params"]) == []


def test_write_pareto_csv(tmp_path: Path):
    a = rec("done", {"mAP": 0.5}, {"params": 2000}, weights_path="w/a.pt", parent_id=7)
    b = rec("done", {"mAP": 0.3}, {"params": 1000})
    c = rec("done", {"mAP": 0.2}, {"params": 3000})
    (tmp_path / "pareto.csv").write_text("old content\n")
    written = write_pareto_csv(tmp_path, [a, b, c], MAP_PARAMS)  # a directory: DIR/pareto.csv
    assert written == [a, b]
    with open(tmp_path / "pareto.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["id", "step", "genotype", "parent_id", "mAP", "params", "weights_path"]
    assert rows[0] == {"id": str(a.id), "step": "serial", "genotype": a.genotype, "parent_id": "7",
                       "mAP": "0.5", "params": "2000", "weights_path": "w/a.pt"}  # fmt: skip
    assert rows[1]["parent_id"] == "" and rows[1]["weights_path"] == ""
    assert [p.name for p in tmp_path.iterdir()] == ["pareto.csv"]  # no temporary file left
    out = tmp_path / "sub" / "front.csv"
    assert write_pareto_csv(out, [], MAP_PARAMS) == []
    assert out.read_text().strip() == "id,step,genotype,parent_id,mAP,params,weights_path"


def test_front_of_a_record_store(tmp_path: Path):
    store = RecordStore(tmp_path)
    for genotype, m_ap, params in [("111-2111", 0.30, 10), ("111-2211", 0.35, 12),
                                   ("1111-2111", 0.32, 13), ("11-211", 0.20, 6)]:  # fmt: skip
        record = store.add("serial", genotype, cost={"params": params})
        assert store.claim(record.id, "w0")
        store.finish(record.id, {"mAP": m_ap})
    front = pareto_records(store.records("serial"), ["mAP", "params"])
    assert [r.genotype for r in front] == ["111-2111", "111-2211", "11-211"]
    store.close()
