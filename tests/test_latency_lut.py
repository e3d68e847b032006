"""The in-place LUT's arithmetic (``measured:cpu`` / ``measured:cuda``), with a deterministic
clock: every conv of the network advances a virtual time by its weight count, so that costs add
up exactly. Then the table predicts every architecture's whole-network time exactly, the
baseline included, and the rest of each forward (the fixed part) is the same for all. Also: each
round of architectures times every variant, and the LUT cache refuses an older format."""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

from nasdet.methods.latency.latency import (
    LUT_FORMAT,
    Network,
    _round_archs,
    cached_table,
    inplace_samples,
)
from nasdet.methods.latency.nets import to_space_detector
from test_latency_space import _baseline


class VirtualClock:
    """Seconds that pass only when a conv runs: ``weight.numel()`` ms each (hooks), plus
    ``per_forward`` ms per whole-network forward outside the convs."""

    def __init__(self, net: nn.Module) -> None:
        self.now = 0.0
        self.hooks = [
            m.register_forward_hook(self._advance) for m in net.modules() if isinstance(m, nn.Conv2d)
        ]

    def _advance(self, m: nn.Module, _a: object, _o: object) -> None:
        self.now += m.weight.numel() / 1e3

    def __call__(self) -> float:
        return self.now

    def close(self) -> None:
        for h in self.hooks:
            h.remove()


def _whole_cost(net: nn.Module) -> float:
    """The convs' weight count of one forward of ``net`` as it stands (its active variants)."""
    seen = []
    hooks = [
        m.register_forward_hook(lambda m, _a, _o: seen.append(m.weight.numel()))
        for m in net.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    return float(sum(seen))


def test_inplace_table_is_exact_for_additive_costs() -> None:
    space = to_space_detector(_baseline(), [0.75, 0.25])
    body = space.backbone.body
    net = Network(space).eval()
    clock = VirtualClock(space)

    def forward() -> None:
        with torch.no_grad():
            net(torch.zeros(1, 3, 64, 64))

    try:
        rest, samples = inplace_samples(body, forward, clock, min_run_time=0.0, min_rounds=2)
    finally:
        clock.close()
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
        assert predicted == pytest.approx(_whole_cost(net), rel=1e-9)
    # a variant's entry is its own convs' weights, the same as counting it alone
    block = body.blocks()[1]
    for v, variant in enumerate(block.variants):
        want = sum(m.weight.numel() for m in variant.modules() if isinstance(m, nn.Conv2d))
        assert table[1][v] == pytest.approx(want)


def test_a_round_times_every_variant_of_every_block() -> None:
    body = to_space_detector(_baseline(), [0.5]).backbone.body
    rng = random.Random(3)
    for _ in range(3):
        archs = _round_archs(body, rng)
        for b, block in enumerate(body.blocks()):
            assert {a.choices[b] for a in archs} == set(range(len(block.variants)))


def test_lut_cache_of_an_older_format_is_measured_again(tmp_path, caplog) -> None:
    space = to_space_detector(_baseline(), [0.5])
    path = tmp_path / "lut.json"
    stale = {"kind": "mmac", "resolution": 64, "fixed": -1.0, "table": [[0.0]]}
    path.write_text(json.dumps({"mmac@64": stale}))  # format 1: keys at the top level
    with caplog.at_level("WARNING"):
        lut = cached_table(path, space, 64, "mmac")
    assert "older format" in caplog.text
    assert lut.fixed > 0 and len(lut.table) == len(space.backbone.body.blocks())
    cache = json.loads(path.read_text())
    assert cache["format"] == LUT_FORMAT and set(cache["tables"]) == {"mmac@64"}
    assert cached_table(path, space, 64, "mmac") == lut
