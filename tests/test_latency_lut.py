"""The in-place LUT's arithmetic (``measured:cpu`` / ``measured:cuda``), with a deterministic
clock: every conv of the network advances a virtual time by its weight count, so that costs add
up exactly. Then the table predicts every architecture's whole-network time exactly, the
baseline included, and the rest of each forward (the fixed part) is the same for all. The same
for onnxruntime's former table of variants timed alone less a session run's cost. Also: each
round of architectures times every variant, and the LUT cache refuses an older format."""

from __future__ import annotations

import json
import random
from dataclasses import asdict

import pytest
import torch
from test_latency_space import _baseline
from torch import nn

from nasdet.methods.latency import latency
from nasdet.methods.latency.latency import (
    KIND_FORMAT,
    LUT_FORMAT,
    Network,
    _RunOverhead,
    build_table,
    cached_table,
    inplace_samples,
)
from nasdet.methods.latency.nets import round_archs, space_body, to_space_detector


class VirtualClock:
    """Seconds that pass only when a conv runs: ``weight.numel()`` ms each (hooks), plus
    ``per_forward`` ms per whole-network forward outside the convs."""

    def __init__(self, net: nn.Module) -> None:
        self.now = 0.0
        self.hooks = [
            m.register_forward_hook(self._advance)
            for m in net.modules()
            if isinstance(m, nn.Conv2d)
        ]

    def _advance(self, m: nn.Module, _a: object, _o: object) -> None:
        self.now += m.weight.numel() / 1e3

    def __call__(self) -> float:
        return self.now

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def _conv_weights(module: nn.Module, x: torch.Tensor | None = None) -> float:
    """The convs' weight count of one forward of ``module`` as it stands (its active variants)
    on ``x`` (default: the network's (1, 3, 64, 64) input)."""
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, _a, _o: seen.append(m.weight.numel()))
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, 64, 64) if x is None else x)
    finally:
        for h in hooks:
            h.remove()
    return float(sum(seen))


def virtual_samples(space: nn.Module, min_rounds: int) -> tuple[list, list]:
    """:func:`inplace_samples` of a space detector on a (1, 3, 64, 64) input, timed by a
    :class:`VirtualClock`."""
    net = Network(space).eval()
    clock = VirtualClock(space)

    def forward() -> None:
        with torch.no_grad():
            net(torch.zeros(1, 3, 64, 64))

    try:
        return inplace_samples(
            space_body(space), forward, clock, min_run_time=0.0, min_rounds=min_rounds
        )
    finally:
        clock.close()


def test_inplace_table_is_exact_for_additive_costs() -> None:
    space = to_space_detector(_baseline(), [0.75, 0.25])
    body = space.backbone.body
    net = Network(space).eval()
    rest, samples = virtual_samples(space, min_rounds=2)
    sizes = [len(b.variants) for b in body.blocks()]
    assert len(rest) == 2 * max(sizes)  # warm-up round not kept
    assert max(rest) == pytest.approx(min(rest))  # the fixed part is fixed
    for row, block in zip(samples, body.blocks(), strict=True):
        for s, variant in zip(row, block.variants, strict=True):
            if isinstance(variant, nn.Identity):
                assert s == []  # a skip is not timed: it costs 0
            else:
                assert len(s) >= 2 and max(s) == pytest.approx(min(s))
    table = [[s[0] if s else 0.0 for s in row] for row in samples]
    fixed = rest[0]
    rng = random.Random(0)
    archs = [body.space.baseline, *(body.space.sample(rng) for _ in range(4))]
    for arch in archs:
        body.set_active_subnet(arch)
        predicted = fixed + sum(row[c] for row, c in zip(table, arch.choices, strict=True))
        assert predicted == pytest.approx(_conv_weights(net), rel=1e-9)
    # a variant's entry is its own convs' weights, the same as counting it alone
    block = body.blocks()[1]
    for v, variant in enumerate(block.variants):
        want = sum(m.weight.numel() for m in variant.modules() if isinstance(m, nn.Conv2d))
        assert table[1][v] == pytest.approx(want)


def test_onnxruntime_alone_table_takes_a_session_runs_cost_off_each_variant(monkeypatch) -> None:
    """The former table (``alone=True``, kept to compare with). With a session cost that is
    0.5 + the convs' weights (each variant exported alone, the whole network once), the table
    counts each variant's convs once and the session's 0.5 once, in ``fixed``: every
    architecture predicted exactly."""

    def session_cost(module: nn.Module, x: torch.Tensor, kind: str, _t: float) -> float:
        assert kind == "measured:onnxruntime"
        return 0.5 + (0.0 if isinstance(module, _RunOverhead) else _conv_weights(module, x))

    monkeypatch.setattr(latency, "_cost", session_cost)
    space = to_space_detector(_baseline(), [0.5])
    body = space.backbone.body
    lut = build_table(space, 64, "measured:onnxruntime", alone=True)
    rng = random.Random(1)
    for arch in [body.space.baseline, *(body.space.sample(rng) for _ in range(3))]:
        body.set_active_subnet(arch)
        assert lut.predict(arch) == pytest.approx(0.5 + _conv_weights(Network(space)), rel=1e-9)
    assert all(row[-1] == 0.0 for row, b in zip(lut.table, body.blocks(), strict=True)
               if isinstance(b.variants[-1], nn.Identity))  # fmt: skip


def test_a_round_times_every_variant_of_every_block() -> None:
    body = to_space_detector(_baseline(), [0.5]).backbone.body
    rng = random.Random(3)
    for _ in range(3):
        archs = round_archs(body, rng)
        for b, block in enumerate(body.blocks()):
            assert {a.choices[b] for a in archs} == set(range(len(block.variants)))


def test_lut_cache_of_an_older_format_is_measured_again(tmp_path, caplog) -> None:
    space = to_space_detector(_baseline(), [0.5])
    path = tmp_path / "lut.json"
    stale = {"kind": "mmac", "resolution": 64, "fixed": -1.0, "table": [[0.0]]}
    path.write_text(json.dumps({"mmac@64": stale}))  # format 1: keys at the top level
    with caplog.at_level("WARNING"):
        lut = cached_table(path, space, 64, "mmac")
    assert "format 1" in caplog.text
    assert lut.fixed > 0 and len(lut.table) == len(space.backbone.body.blocks())
    cache = json.loads(path.read_text())
    assert cache["format"] == LUT_FORMAT and set(cache["tables"]) == {"mmac@64"}
    assert cache["tables"]["mmac@64"]["format"] == LUT_FORMAT
    assert cached_table(path, space, 64, "mmac") == lut


def test_lut_cache_measures_again_only_the_kinds_whose_format_changed(
    tmp_path, caplog, monkeypatch
) -> None:
    """A format-2 cache (no per-table format): its mmac table is kept as long as mmac's
    measurement has not changed since; once it has (KIND_FORMAT raised), that table alone is
    measured again and the others are left as they are."""
    space = to_space_detector(_baseline(), [0.5])
    path = tmp_path / "lut.json"
    lut = cached_table(path, space, 64, "mmac")
    kept = {**asdict(lut), "fixed": 123.0}  # a value no measurement gives: read, not measured
    other = {**asdict(lut), "kind": "measured:cpu", "fixed": 7.0}
    path.write_text(
        json.dumps({"format": 2, "tables": {"mmac@64": kept, "measured:cpu@64": other}})
    )
    assert cached_table(path, space, 64, "mmac").fixed == 123.0
    monkeypatch.setitem(KIND_FORMAT, "mmac", LUT_FORMAT + 1)
    with caplog.at_level("WARNING"):
        again = cached_table(path, space, 64, "mmac")
    assert "mmac@64 is of an older format" in caplog.text
    assert again.fixed == lut.fixed
    cache = json.loads(path.read_text())
    assert cache["tables"]["measured:cpu@64"] == {**other, "format": 2}  # its cache's format
    assert cache["format"] == LUT_FORMAT
