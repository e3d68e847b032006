"""The latency model of a search: a per-variant lookup table (LUT) at one input resolution.

The network is the detector's backbone, neck and head on a (1, 3, R, R) tensor of zeros (no
pre-processing, no box decoding or NMS), batch 1, one thread. The predicted cost of an
architecture is ``fixed + sum_b LUT[b][arch[b]]``; a skip variant costs 0. The entries ``b`` are
the backbone's blocks, then (RetinaNet, FCOS with ``space.head_skip``) the head tower convs: a
head conv runs once per FPN level, and its entry is the sum over the levels. How each kind fills
the table (:func:`build_table`):

- ``mmac`` counts multiply-accumulates (``torch.utils.flop_counter``, FLOPs / 2) in millions,
  each variant alone on a tensor of the shape its block receives;
  ``fixed = cost(baseline) - sum_b LUT[b][0]``. Exact, MACs add up.
- ``measured:cpu`` / ``measured:cuda`` (ms) time each variant **in place**: whole-network
  forwards (under ``torch.no_grad()``, as :func:`nasdet.cost.latency.measure_latency` times a
  network) over rounds of random architectures in which every variant of every block appears,
  each variant timed between a forward pre-hook and a forward hook (``time.perf_counter``, after
  ``torch.cuda.synchronize`` on CUDA); an entry is the median of its variant's times and
  ``fixed`` the median, over the forwards, of a forward's time minus its blocks' times.
  Timing variants alone with ``torch.utils.benchmark`` (the former table) was measured to be
  wrong by up to 42 % (MAPE 17 %) on ``configs/latency_digits.yaml``: a small block alone costs
  ~0.25 ms more per call under ``torch.utils.benchmark`` than in a plain loop (0.62 against
  0.35 ms), while the whole network's two timings agree, so the error grows with the number
  of blocks and does not cancel in ``fixed``; and each entry was timed at another moment than
  the others, so a shared machine's load changed them unevenly. In place, every variant is
  timed in its real context (its input just written by the previous block), and a slow spell
  hits all entries alike because the rounds interleave them.
- ``measured:onnxruntime`` (ms) times each variant **in place** too, with onnxruntime's
  profiler (:mod:`nasdet.methods.latency.ort_inplace`): each architecture of the same rounds is
  exported whole and run in a plain session and in a profiled one (CPU provider, one thread);
  the ONNX nodes of each variant, found by the torch module scopes the dynamo exporter records,
  are tagged so that onnxruntime's fused nodes keep their variant; a variant's sample is the sum
  of its nodes' times in a profiled run, less the profiler's own cost per node (the profiled
  runs' excess over the plain ones, per node). An entry is the median of its samples, ``fixed``
  the median of each run's plain time minus its variants' samples. One export per architecture
  (``max_b len(variants_b)`` per round): 7 for ``configs/latency_digits.yaml`` (4-7 min on a
  loaded 2-core machine), against one per variant (107) for the former table, which exported
  each variant alone and took a session run's own cost off (``alone=True``; ~11 min). On that
  machine, against 22 networks (20 random, the baseline, the cheapest) timed in the passes of
  the in-place build itself: MAPE 3.6 % (max 13 %; 4.2 % of the ratios to the baseline); the
  former table, built minutes before, 46 % (max 87 %, the cheapest net; 9.2 % of the ratios).
  Without taking the profiler's cost off, the cheapest net was predicted 24 % low.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from nasdet.atomic import write_json_atomic
from nasdet.cost._utils import module_device
from nasdet.cost.flops import count_flops
from nasdet.cost.latency import measure_latency
from nasdet.errors import ConfigError
from nasdet.methods.latency.nets import (  # noqa: F401 (Network: re-exported)
    LatencySupernet,
    Network,
    round_archs,
    space_body,
)
from nasdet.methods.latency.space import LatencyArch
from nasdet.progress import Bar

log = logging.getLogger(__name__)

LatencyKind = Literal["mmac", "measured:cpu", "measured:cuda", "measured:onnxruntime"]
UNITS = {"mmac": "MMAC"}


def unit_of(kind: str) -> str:
    """``MMAC`` for the proxy, ``ms`` for measured latencies."""
    return UNITS.get(kind, "ms")


@dataclass(frozen=True)
class LatencyTable:
    """Costs of one space at one resolution, in ``unit`` (MMAC or ms).

    Attributes:
        kind: the latency model (``mmac``, ``measured:cpu``...).
        resolution: the square input side, in pixels.
        fixed: the cost of everything that is not a searchable block.
        table: ``table[b][v]``: the cost of variant ``v`` of block ``b``.
    """

    kind: str
    resolution: int
    fixed: float
    table: list[list[float]]

    @property
    def unit(self) -> str:
        return unit_of(self.kind)

    def predict(self, arch: LatencyArch) -> float:
        """``fixed + sum_b table[b][arch[b]]``."""
        return self.fixed + sum(row[c] for row, c in zip(self.table, arch.choices, strict=True))

    def cheapest(self) -> LatencyArch:
        return LatencyArch(tuple(min(range(len(r)), key=r.__getitem__) for r in self.table))

    @property
    def minimum(self) -> float:
        """The space's smallest cost: every block at its cheapest variant."""
        return self.predict(self.cheapest())

    @property
    def baseline(self) -> float:
        """The baseline's cost (variant 0 everywhere)."""
        return self.fixed + sum(row[0] for row in self.table)

    def expected(self, logits: Sequence[Tensor]) -> Tensor:
        """``fixed + sum_b sum_v softmax(logits[b])_v * table[b][v]``, differentiable in the
        logits (one 1-D tensor per block)."""
        total = torch.zeros((), dtype=logits[0].dtype, device=logits[0].device)
        for alpha, row in zip(logits, self.table, strict=True):
            cost = torch.tensor(row, dtype=alpha.dtype, device=alpha.device)
            total = total + (torch.softmax(alpha, dim=0) * cost).sum()
        return total + self.fixed

    def key(self) -> str:
        return f"{self.kind}@{self.resolution}"


def block_inputs(detector: nn.Module, resolution: int) -> list[list[Tensor]]:
    """Per searchable entry, a random tensor of the shape of each input it receives in one
    forward at ``resolution``, the baseline active: one for a backbone block, one per FPN level
    for a head conv (the head is shared over the levels)."""
    body: LatencySupernet = space_body(detector)
    shapes: list[list[torch.Size]] = [[] for _ in body.blocks()]
    before = body.active_subnet()
    body.set_active_subnet(body.space.baseline)

    def seen(b: int) -> Callable[..., None]:
        return lambda _m, a: shapes[b].append(a[0].shape)

    hooks = [e.variants[0].register_forward_pre_hook(seen(b)) for b, e in enumerate(body.blocks())]
    try:
        with torch.no_grad():
            Network(detector).eval()(torch.zeros(1, 3, resolution, resolution))
    finally:
        for h in hooks:
            h.remove()
        body.set_active_subnet(before)
    gen = torch.Generator().manual_seed(0)
    return [[torch.randn(s, generator=gen) for s in row] for row in shapes]


def _cost(module: nn.Module, x: Tensor, kind: str, min_run_time: float) -> float:
    """``module(x)``'s cost alone: MMACs, or the median ms of ``measured:<device>`` (torch,
    :func:`~nasdet.cost.latency.measure_latency`) or ``measured:onnxruntime``, one thread."""
    if kind == "mmac":
        return count_flops(module, x).macs / 1e6
    if kind == "measured:onnxruntime":
        from nasdet.cost.onnx_runtime import onnx_latency

        return onnx_latency(module, x, threads=1, min_run_time=min_run_time).median_ms
    device = kind.split(":", 1)[1]
    return measure_latency(module, x, device=device, threads=1, min_run_time=min_run_time).median_ms


class _RunOverhead(nn.Module):
    """What a session run costs without a block: one elementwise op on the block's input."""

    def forward(self, x: Tensor) -> Tensor:
        return x * 1.0


def _alone_table(
    body: LatencySupernet, inputs: list[list[Tensor]], kind: str, min_run_time: float, bar: Bar
) -> list[list[float]]:
    """Each variant timed (or counted) alone on each of its entry's inputs, summed (a head conv
    runs once per FPN level). For ``measured:onnxruntime`` a session run's own cost
    (:class:`_RunOverhead` on an input of that shape, timed once per shape) is taken off each
    run, floored at 0."""
    overhead: dict[tuple[int, ...], float] = {}
    table: list[list[float]] = []
    for block, xs in zip(body.blocks(), inputs, strict=True):
        for x in xs:
            if kind == "measured:onnxruntime" and tuple(x.shape) not in overhead:
                overhead[tuple(x.shape)] = _cost(_RunOverhead(), x, kind, min_run_time)
        table.append([])
        for v in block.variants:
            total = 0.0
            for x in xs:
                base = overhead.get(tuple(x.shape), 0.0)
                cost = 0.0 if isinstance(v, nn.Identity) else _cost(v, x, kind, min_run_time)
                total += max(0.0, cost - base) if cost else 0.0
            table[-1].append(total)
            bar.advance()
    return table


# in-place timing (torch): rounds of forwards at least, and their warm-up
_MIN_ROUNDS = 5
_WARMUP_ROUNDS = 1


def inplace_samples(
    body: LatencySupernet,
    forward: Callable[[], object],
    clock: Callable[[], float],
    *,
    min_run_time: float,
    min_rounds: int = _MIN_ROUNDS,
    seed: int = 0,
    bar: Bar | None = None,
) -> tuple[list[float], list[list[list[float]]]]:
    """Time every block variant in place: whole-network ``forward()`` calls over random
    architectures (:func:`~nasdet.methods.latency.nets.round_archs`), each variant module
    timed between a forward pre-hook and a forward hook with ``clock`` (seconds), for
    ``min_rounds`` rounds and at least ``min_run_time`` seconds per variant (after a warm-up
    round).

    Returns:
        ``(rest, samples)``: per forward, its time minus its blocks' times (ms); and
        ``samples[b][v]``: per forward that ran it, the time of variant ``v`` of entry ``b``,
        its calls summed (a head conv runs once per FPN level) (ms; empty for a skip).
    """
    blocks = body.blocks()
    samples: list[list[list[float]]] = [[[] for _ in b.variants] for b in blocks]
    rest: list[float] = []
    spent: list[float] = []  # the current forward's block times
    started: list[float] = [0.0]

    def pre(_m: nn.Module, _a: object) -> None:
        started[0] = clock()

    calls: dict[tuple[int, int], float] = {}  # the current forward's time per variant

    def post(b: int, v: int) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: object, _o: object) -> None:
            dt = (clock() - started[0]) * 1e3
            spent.append(dt)
            calls[b, v] = calls.get((b, v), 0.0) + dt

        return hook

    recording = [False]
    hooks = []
    for b, block in enumerate(blocks):
        for v, variant in enumerate(block.variants):
            if not isinstance(variant, nn.Identity):
                hooks.append(variant.register_forward_pre_hook(pre))
                hooks.append(variant.register_forward_hook(post(b, v)))
    rng = random.Random(seed)
    n_entries = sum(len(row) for row in samples)
    budget = min_run_time * n_entries
    rounds = 0
    t_start = time.perf_counter()
    try:
        while rounds < _WARMUP_ROUNDS + min_rounds or time.perf_counter() - t_start < budget:
            recording[0] = rounds >= _WARMUP_ROUNDS
            if rounds == _WARMUP_ROUNDS:
                t_start = time.perf_counter()
            for arch in round_archs(body, rng):
                body.set_active_subnet(arch)
                spent.clear()
                calls.clear()
                t0 = clock()
                forward()
                total = (clock() - t0) * 1e3
                if recording[0]:
                    rest.append(total - sum(spent))
                    for (b, v), dt in calls.items():
                        samples[b][v].append(dt)
            rounds += 1
            if bar is not None:
                bar.advance()
    finally:
        for h in hooks:
            h.remove()
    return rest, samples


def _inplace_table(
    detector: nn.Module, resolution: int, device: str, min_run_time: float, bar: Bar
) -> tuple[float, list[list[float]]]:
    """``(fixed, table)`` in ms from :func:`inplace_samples` on ``device`` (one thread, under
    ``torch.no_grad()`` as :func:`~nasdet.cost.latency.measure_latency` times): each entry
    the median of its variant's times, ``fixed`` the median of the rest of each forward."""
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"latency: measured:{device} requested but CUDA is not available")
    cuda = target.type == "cuda"

    def clock() -> float:
        if cuda:  # the kernels queued so far are part of what ends here
            torch.cuda.synchronize(target)
        return time.perf_counter()

    body: LatencySupernet = space_body(detector)
    net = Network(detector)
    original = module_device(detector)
    x = torch.zeros(1, 3, resolution, resolution, device=target)
    threads = torch.get_num_threads()

    def forward() -> None:
        with torch.no_grad():
            net(x)

    try:
        detector.to(target)
        torch.set_num_threads(1)
        rest, samples = inplace_samples(body, forward, clock, min_run_time=min_run_time, bar=bar)
    finally:
        torch.set_num_threads(threads)
        detector.to(original)
    table = [[statistics.median(s) if s else 0.0 for s in row] for row in samples]
    return statistics.median(rest), table


def build_table(
    detector: nn.Module,
    resolution: int,
    kind: str,
    *,
    min_run_time: float = 0.2,
    alone: bool = False,
) -> LatencyTable:
    """Measure the LUT of a space detector (:func:`~nasdet.methods.latency.nets.
    to_space_detector`) at ``resolution``, on one thread.

    - ``mmac``: each variant counted alone on its block's input; ``fixed`` = the baseline
      network's MACs minus its variants 0 (exact: MACs add up).
    - ``measured:cpu`` / ``measured:cuda``: each variant timed in place by
      :func:`inplace_samples` (``min_run_time`` s of whole-network forwards per variant);
      ``fixed`` = the median of each forward's time minus its blocks' times.
    - ``measured:onnxruntime``: each variant timed in place by onnxruntime's profiler
      (:func:`~nasdet.methods.latency.ort_inplace.ort_inplace_samples`, ``min_run_time`` s of
      session runs per variant); ``fixed`` = the median of each run's time minus its variants'.

    ``alone=True`` times each variant alone instead (torch's with ``measure_latency``,
    onnxruntime's exported alone, a session run's own cost taken off, see
    :func:`_alone_table`; ``fixed`` = the baseline network's time minus its variants 0): the
    former tables, kept to compare with (``benchmarks/latency_digits.py``).
    """
    body: LatencySupernet = space_body(detector)
    before = body.active_subnet()
    detector.eval()
    try:
        if not alone and kind.startswith(("measured:cpu", "measured:cuda")):
            with Bar(f"LUT {kind}@{resolution}: rounds in place") as bar:
                fixed, table = _inplace_table(
                    detector, resolution, kind.split(":", 1)[1], min_run_time, bar
                )
            return LatencyTable(kind, resolution, fixed, table)
        if not alone and kind == "measured:onnxruntime":
            from nasdet.methods.latency.ort_inplace import ort_inplace_table

            with Bar(f"LUT {kind}@{resolution}: exports and passes in place") as bar:
                fixed, table = ort_inplace_table(detector, resolution, min_run_time, bar)
            return LatencyTable(kind, resolution, fixed, table)
        bar = Bar(f"LUT {kind}@{resolution}", sum(len(b.variants) for b in body.blocks()) + 1)
        try:
            body.set_active_subnet(body.space.baseline)
            table = _alone_table(body, block_inputs(detector, resolution), kind, min_run_time, bar)
            net = Network(detector)
            total = _cost(net, torch.zeros(1, 3, resolution, resolution), kind, min_run_time)
            bar.advance()
        finally:
            bar.close()
    finally:
        body.set_active_subnet(before)
    fixed = total - sum(row[0] for row in table)
    return LatencyTable(kind, resolution, fixed, table)


# the cache's format: 3 = onnxruntime's tables timed in place too; 2 = torch's measured
# tables timed in place (1, unmarked: timed alone, its tables at the top level)
LUT_FORMAT = 3
# the format in which each kind's measurement last changed: a cached table of an older format
# (its own "format", else its cache's) is measured again, the others are kept
KIND_FORMAT = {"mmac": 1, "measured:cpu": 2, "measured:cuda": 2, "measured:onnxruntime": 3}


def measured_since_change(kind: str, made: int) -> bool:
    """Whether a ``kind`` table measured in format ``made`` is still current (``made`` is not
    older than :data:`KIND_FORMAT` of ``kind``)."""
    return made >= KIND_FORMAT[kind]


def cached_table(
    path: Path, detector: nn.Module, resolution: int, kind: str, *, min_run_time: float = 0.2
) -> LatencyTable:
    """The LUT of ``kind`` at ``resolution`` from the JSON cache ``path`` (``{"format":
    LUT_FORMAT, "tables": {"<kind>@<resolution>": {..., "format": LUT_FORMAT}}}``), measured
    and added to it when missing. A table measured in a format older than its kind's
    :data:`KIND_FORMAT` is measured again (and replaced), never read, and so is a table whose
    entries and variants are not the space's (``detector``'s); a format-1 cache is replaced
    whole."""
    cache = json.loads(path.read_text()) if path.is_file() else {}
    if cache and "tables" not in cache:
        log.warning("%s: a LUT cache of format 1; measuring the LUT again", path)
        cache = {}
    tables = cache.setdefault("tables", {})
    for table in tables.values():  # each table keeps the format it was measured in
        table.setdefault("format", cache.get("format", LUT_FORMAT))
    cache["format"] = LUT_FORMAT
    key = f"{kind}@{resolution}"
    cached = dict(tables.get(key, {}))
    if cached and not measured_since_change(kind, cached.pop("format")):
        log.warning("%s: the cached LUT %s is of an older format; measuring it again", path, key)
        cached = {}
    sizes = [len(b.variants) for b in space_body(detector).blocks()]
    if cached and [len(row) for row in cached["table"]] == sizes:
        return LatencyTable(**cached)
    if cached:  # e.g. a space without its head's entries
        log.warning("%s: the cached LUT %s is for another space; measuring it again", path, key)
    lut = build_table(detector, resolution, kind, min_run_time=min_run_time)
    log.info(
        "LUT %s: baseline %.3f %s, minimum %.3f %s",
        key,
        lut.baseline,
        lut.unit,
        lut.minimum,
        lut.unit,
    )
    tables[key] = {**asdict(lut), "format": LUT_FORMAT}
    write_json_atomic(path, cache)
    return lut
