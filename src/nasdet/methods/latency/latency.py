"""The latency model of a search: a per-variant lookup table (LUT) at one input resolution.

``latency: mmac`` counts multiply-accumulates (``torch.utils.flop_counter``, FLOPs / 2) in
millions; ``measured:cpu`` / ``measured:cuda`` time each block variant with
``torch.utils.benchmark`` (:func:`nasdet.cost.latency.measure_latency`), in milliseconds;
``measured:onnxruntime`` exports each variant alone and times it with onnxruntime's CPU provider.

Each variant is measured in place: on a tensor of the shape its block receives in the baseline
network at ``resolution`` (batch 1). The network is the detector's backbone, neck and head on a
(1, 3, R, R) tensor (no pre-processing, no box decoding or NMS). The fixed part (stem, blocks
that are not searched, extra levels, head) is the network's cost with every block at variant 0
minus the variants 0: ``fixed = cost(baseline) - sum_b LUT[b][0]``. The predicted cost of an
architecture is ``fixed + sum_b LUT[b][arch[b]]``; a skip variant costs 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from nasdet.atomic import write_json_atomic
from nasdet.cost.flops import count_flops
from nasdet.cost.latency import measure_latency
from nasdet.methods.latency.nets import LatencySupernet, space_body
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


class Network(nn.Module):
    """A detector's backbone, neck and head on a batch tensor (what the LUT times): YOLOv3's
    ``raw_outputs``, else ``head(backbone(x))`` (torchvision's detectors, whose neck is in the
    backbone)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: Tensor) -> object:
        det = self.detector
        if hasattr(det, "raw_outputs"):
            return det.raw_outputs(x)
        return det.head(list(det.backbone(x).values()))


def block_inputs(detector: nn.Module, resolution: int) -> list[Tensor]:
    """A random tensor of the shape each searchable block receives at ``resolution``."""
    body: LatencySupernet = space_body(detector)
    shapes: list[torch.Size] = []
    hooks = [
        b.register_forward_pre_hook(lambda _m, a: shapes.append(a[0].shape)) for b in body.blocks()
    ]
    try:
        with torch.no_grad():
            Network(detector).eval()(torch.zeros(1, 3, resolution, resolution))
    finally:
        for h in hooks:
            h.remove()
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen) for s in shapes]


def _cost(module: nn.Module, x: Tensor, kind: str, min_run_time: float) -> float:
    if kind == "mmac":
        return count_flops(module, x).macs / 1e6
    if kind == "measured:onnxruntime":
        from nasdet.cost.onnx_runtime import onnx_latency

        return onnx_latency(module, x, threads=1, min_run_time=min_run_time).median_ms
    device = kind.split(":", 1)[1]
    return measure_latency(module, x, device=device, threads=1, min_run_time=min_run_time).median_ms


def build_table(
    detector: nn.Module, resolution: int, kind: str, *, min_run_time: float = 0.2
) -> LatencyTable:
    """Measure the LUT of a space detector (:func:`~nasdet.methods.latency.nets.
    to_space_detector`) at ``resolution``; timed on one thread (``min_run_time`` s per entry)."""
    body: LatencySupernet = space_body(detector)
    before = body.active_subnet()
    detector.eval()
    bar = Bar(f"LUT {kind}@{resolution}", sum(len(b.variants) for b in body.blocks()) + 1)
    try:
        body.set_active_subnet(body.space.baseline)
        table: list[list[float]] = []
        for block, x in zip(body.blocks(), block_inputs(detector, resolution), strict=True):
            table.append([])
            for v in block.variants:
                table[-1].append(
                    0.0 if isinstance(v, nn.Identity) else _cost(v, x, kind, min_run_time)
                )
                bar.advance()
        net = Network(detector)
        total = _cost(net, torch.zeros(1, 3, resolution, resolution), kind, min_run_time)
        bar.advance()
    finally:
        bar.close()
        body.set_active_subnet(before)
    fixed = total - sum(row[0] for row in table)
    return LatencyTable(kind, resolution, fixed, table)


def cached_table(
    path: Path, detector: nn.Module, resolution: int, kind: str, *, min_run_time: float = 0.2
) -> LatencyTable:
    """The LUT of ``kind`` at ``resolution`` from the JSON cache ``path`` (keyed
    ``<kind>@<resolution>``), measured and added to it when missing."""
    cache = json.loads(path.read_text()) if path.is_file() else {}
    key = f"{kind}@{resolution}"
    if key in cache:
        return LatencyTable(**cache[key])
    lut = build_table(detector, resolution, kind, min_run_time=min_run_time)
    log.info(
        "LUT %s: baseline %.3f %s, minimum %.3f %s",
        key,
        lut.baseline,
        lut.unit,
        lut.minimum,
        lut.unit,
    )
    cache[key] = asdict(lut)
    write_json_atomic(path, cache)
    return lut
