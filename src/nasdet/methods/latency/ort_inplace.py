"""``measured:onnxruntime``'s LUT timed in place: whole networks profiled node by node.

Hooks cannot time a block inside an onnxruntime session, but its profiler times every node.
Each architecture of :func:`~nasdet.methods.latency.nets.round_archs`' rounds (every
variant of every block among random neighbours) is exported whole (:class:`~nasdet.methods.
latency.latency.Network`, one export per architecture: the build's main cost) and opened twice,
plainly and with profiling (:func:`~nasdet.cost.onnx_runtime.onnx_session_pair`, one thread).
Before the sessions open, the nodes of each variant (found by the torch module scopes the
dynamo exporter records, :func:`variant_paths`) and their outputs are tagged ``lut_b<b>_v<v>__``
(:func:`~nasdet.cost.onnx_runtime.tag_nodes`), so that the nodes onnxruntime fuses from them
keep the tag. A skip variant exports no node and costs 0. onnxruntime also inserts layout nodes
(``ReorderInput`` / ``ReorderOutput``, NCHW <-> NCHWc) where a width-pruned variant's channels do
not fill its blocks of 8 or 16 channels: each is charged to the variant whose output it converts
(:func:`layout_variants`, from the optimised graph), else to the variant that reads it.

Profiling costs each node run ~13-29 us (measured on ``configs/latency_digits.yaml``'s network
on a loaded 2-core machine, ~160 nodes: profiled runs 25-50 % slower than plain ones), part of
it inside the kernel time it reports. So each architecture's plain and profiled runs are both
timed (interleaved, in passes over all the sessions), and that cost per node, ``delta``, the
median over the architectures of ``(median profiled - median plain run) / nodes``
(:func:`profiler_cost`), is taken off every node's span (:func:`run_samples`). Per profiled
run, a variant's sample is the sum of its nodes' spans less ``delta`` each, and the rest is the
architecture's median plain run less its variants' samples. An entry is the median of its
variant's samples (floored at 0), ``fixed`` the median of the rests. Without it, the cheapest
network of that space was predicted 24 % low (its skips' nodes kept the profiler's cost).
"""

from __future__ import annotations

import random
import re
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nasdet.cost.onnx_runtime import (
    discard_profiling,
    onnx_session_pair,
    optimized_graph,
    profiled_runs,
    tag_nodes,
    time_session,
    torch_scopes,
)
from nasdet.methods.latency.nets import LatencySupernet, Network, round_archs, space_body
from nasdet.progress import Bar

_TAG = re.compile(r"lut_b(\d+)_v(\d+)__")
# the nodes onnxruntime inserts to change a tensor's layout (NCHW <-> NCHWc blocks of channels)
_LAYOUT_OPS = ("ReorderInput", "ReorderOutput")
# timing passes over all the sessions (a slow spell of a shared machine hits them alike), and
# each session's first runs (cold caches, allocations) left out of the samples
_PASSES = 5
_COLD_RUNS = 3


def variant_tag(block: int, variant: int) -> str:
    return f"lut_b{block}_v{variant}__"


def variant_paths(net: nn.Module, body: LatencySupernet) -> dict[str, tuple[int, int]]:
    """The module path in ``net`` (``named_modules``, e.g. ``detector.backbone.body.3.
    variants.2``) of every variant that is not a skip, to its ``(block, variant)``. A variant
    that is not itself in the module tree (an FCOS head conv: an unregistered view of its conv,
    GroupNorm and ReLU, see :class:`~nasdet.methods.latency.head.SkippableTower`) maps through
    its children's paths."""
    names = {id(m): name for name, m in net.named_modules(remove_duplicate=False)}
    paths: dict[str, tuple[int, int]] = {}
    for b, block in enumerate(body.blocks()):
        for v, variant in enumerate(block.variants):
            if isinstance(variant, nn.Identity):
                continue
            mods = [variant] if id(variant) in names else list(variant.children())
            for m in mods:
                paths[names[id(m)]] = (b, v)
    return paths


def variant_of(node: Any, paths: dict[str, tuple[int, int]]) -> tuple[int, int] | None:
    """The ``(block, variant)`` whose module scope holds an ONNX node (innermost scope first;
    the exporter prefixes the paths of :func:`variant_paths` with its own wrapper's), or
    ``None`` for a node outside every variant."""
    for scope in reversed(torch_scopes(node)):
        for path, bv in paths.items():
            if scope == path or scope.endswith("." + path):
                return bv
    return None


def tag_variants(model: Any, paths: dict[str, tuple[int, int]]) -> int:
    """Tag (:func:`~nasdet.cost.onnx_runtime.tag_nodes`) the nodes of each variant of an
    exported network ``variant_tag(b, v)``; how many were tagged."""

    def tag_of(node: Any) -> str | None:
        bv = variant_of(node, paths)
        return None if bv is None else variant_tag(*bv)

    return tag_nodes(model, tag_of)


def _tagged(name: str) -> tuple[int, int] | None:
    match = _TAG.search(name)
    return None if match is None else (int(match[1]), int(match[2]))


def layout_variants(graph: Any) -> dict[str, tuple[int, int]]:
    """The variant each untagged layout node of onnxruntime's optimised graph
    (:func:`~nasdet.cost.onnx_runtime.optimized_graph`; ``ReorderInput`` / ``ReorderOutput``,
    inserted where a variant's channels do not fill NCHWc blocks) is charged to: the variant of
    the node whose output it converts, else the one variant of the nodes that read its output;
    none (the fixed part) between nodes outside every variant."""
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    charged: dict[str, tuple[int, int]] = {}

    def variant(node: Any) -> tuple[int, int] | None:
        return _tagged(node.name) or charged.get(node.name)

    for node in graph.node:  # topological: a producer before its readers
        if node.op_type not in _LAYOUT_OPS or _tagged(node.name):
            continue
        source = producer.get(node.input[0])
        bv = None if source is None else variant(source)
        if bv is None:
            found = {variant(r) for r in readers.get(node.output[0], [])}
            bv = found.pop() if len(found) == 1 else None
        if bv is not None:
            charged[node.name] = bv
    return charged


def profiler_cost(
    plain_ms: Sequence[Sequence[float]],
    profiled_ms: Sequence[Sequence[float]],
    nodes: Sequence[int],
) -> float:
    """The profiler's own cost per node run (ms): over the architectures, the median of
    ``(median(profiled) - median(plain)) / nodes`` (each architecture's plain and profiled runs'
    wall-clock times, ms, and its profiled runs' node count)."""
    return statistics.median(
        (statistics.median(p) - statistics.median(t)) / max(1, n)
        for t, p, n in zip(plain_ms, profiled_ms, nodes, strict=True)
    )


def run_samples(
    plain_ms: Sequence[float],
    runs: Sequence[list[tuple[str, float]]],
    delta: float,
    layout: dict[str, tuple[int, int]] | None = None,
) -> tuple[list[float], list[dict[tuple[int, int], float]]]:
    """One architecture's samples from its plain runs' times (ms, wall clock) and its profiled
    runs' node spans (:func:`~nasdet.cost.onnx_runtime.profiled_runs`, nodes tagged by
    :func:`tag_variants`, and the layout nodes ``layout`` charges to a variant:
    :func:`layout_variants`), ``delta`` the profiler's cost per node (:func:`profiler_cost`).

    Per profiled run, a variant's sample is the sum over its nodes of ``span - delta``, and the
    rest is ``median(plain_ms)`` minus the run's variant samples.

    Returns:
        ``(rest, samples)``: per run, the rest (ms), and ``{(block, variant): ms}``.
    """
    plain = statistics.median(plain_ms)
    rest: list[float] = []
    samples: list[dict[tuple[int, int], float]] = []
    for run in runs:
        sums: dict[tuple[int, int], float] = {}
        for name, span in run:
            bv = _tagged(name) or (layout or {}).get(name)
            if bv is not None:
                sums[bv] = sums.get(bv, 0.0) + span - delta
        rest.append(plain - sum(sums.values()))
        samples.append(sums)
    return rest, samples


def ort_inplace_samples(
    detector: nn.Module,
    resolution: int,
    *,
    min_run_time: float,
    rounds: int = 1,
    seed: int = 0,
    bar: Bar | None = None,
) -> tuple[list[float], list[list[list[float]]]]:
    """Time every block variant of a space detector in place with onnxruntime (module
    docstring): ``rounds`` rounds of architectures exported whole, then :data:`_PASSES` passes
    over their plain and profiled sessions (one thread), ``min_run_time`` s per entry in all.

    Returns:
        ``(rest, samples)`` as :func:`~nasdet.methods.latency.latency.inplace_samples`: per
        profiled run, its plain time minus its variants' times (ms); ``samples[b][v]``: the
        times of variant ``v`` of block ``b`` (ms; empty for a skip).
    """
    body: LatencySupernet = space_body(detector)
    net = Network(detector)
    x = torch.zeros(1, 3, resolution, resolution)
    paths = variant_paths(net, body)
    rng = random.Random(seed)
    archs = [a for _ in range(rounds) for a in round_archs(body, rng)]
    sessions: list[tuple[Any, Any, dict[str, Any]]] = []
    try:
        for arch in archs:
            body.set_active_subnet(arch)
            active = [b.variants[c] for b, c in zip(body.blocks(), arch.choices, strict=True)]

            def edit(model: Any, active: list[nn.Module] = active) -> None:
                if not tag_variants(model, paths) and any(
                    not isinstance(v, nn.Identity) for v in active
                ):
                    raise RuntimeError(
                        "measured:onnxruntime: no ONNX node of the exported network lies in a "
                        "block variant's module scope (the dynamo exporter's "
                        "pkg.torch.onnx.name_scopes); install onnxscript so that "
                        "torch.onnx.export uses it"
                    )

            sessions.append(onnx_session_pair(net, x, threads=1, edit=edit))
            if bar is not None:
                bar.advance()
        n_entries = sum(len(b.variants) for b in body.blocks())
        slot = min_run_time * n_entries / (_PASSES * len(archs) * 2)
        plain: list[list[float]] = [[] for _ in archs]
        profiled: list[list[float]] = [[] for _ in archs]
        for _ in range(_PASSES):
            for i, (plain_session, profiled_session, feed) in enumerate(sessions):
                plain[i] += [t * 1e3 for t in time_session(plain_session, feed, min_run_time=slot)]
                profiled[i] += [
                    t * 1e3 for t in time_session(profiled_session, feed, min_run_time=slot)
                ]
            if bar is not None:
                bar.advance()
        runs = [profiled_runs(s)[_COLD_RUNS:] for _, s, _ in sessions]
        layouts = [layout_variants(optimized_graph(s)) for _, s, _ in sessions]
    finally:  # a failure half-way leaves no profile or graph file in the temporary folder
        for _, profiled_session, _ in sessions:
            discard_profiling(profiled_session)
    delta = profiler_cost(plain, profiled, [len(r[0]) if r else 0 for r in runs])
    samples: list[list[list[float]]] = [[[] for _ in b.variants] for b in body.blocks()]
    rest: list[float] = []
    for times, arch_runs, layout in zip(plain, runs, layouts, strict=True):
        arch_rest, arch_samples = run_samples(times, arch_runs, delta, layout)
        rest += arch_rest
        for sums in arch_samples:
            for (b, v), ms in sums.items():
                samples[b][v].append(ms)
    _check_every_variant_timed(body, samples)
    return rest, samples


def _check_every_variant_timed(body: LatencySupernet, samples: list[list[list[float]]]) -> None:
    for b, block in enumerate(body.blocks()):
        for v, variant in enumerate(block.variants):
            if not isinstance(variant, nn.Identity) and not samples[b][v]:
                raise RuntimeError(
                    f"measured:onnxruntime: no profiled onnxruntime node of block {b} "
                    f"({body.block_names[b]}) variant {v}: its nodes were not found in the "
                    "profile"
                )


def ort_inplace_table(
    detector: nn.Module, resolution: int, min_run_time: float, bar: Bar | None = None
) -> tuple[float, list[list[float]]]:
    """``(fixed, table)`` in ms from :func:`ort_inplace_samples`: each entry the median of its
    variant's samples, floored at 0 (a tiny variant's nodes may cost less than the profiler's
    mean cost per node; 0 for a skip), ``fixed`` the median of the rests."""
    rest, samples = ort_inplace_samples(detector, resolution, min_run_time=min_run_time, bar=bar)
    table = [[max(0.0, statistics.median(s)) if s else 0.0 for s in row] for row in samples]
    return statistics.median(rest), table
