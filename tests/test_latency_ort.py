"""``measured:onnxruntime``'s LUT timed in place (:mod:`nasdet.methods.latency.ort_inplace`): on
a tiny space (three MobileNetV2 blocks, two of them skippable, and a conv head), the exported
nodes of every variant are found by their torch module scopes and still found, tagged, among the
nodes onnxruntime's profiler times after fusing them; a skip exports none; the table has one
entry per variant, 0 for a skip; and the profiler's cost per node is taken off as stated."""

from __future__ import annotations

import statistics
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual

from nasdet.cost.onnx_runtime import onnx_session_pair, optimized_graph, profiled_runs
from nasdet.methods.latency import ort_inplace
from nasdet.methods.latency.latency import Network, build_table
from nasdet.methods.latency.nets import LatencySupernet
from nasdet.methods.latency.ort_inplace import (
    _TAG,
    layout_variants,
    profiler_cost,
    run_samples,
    tag_variants,
    variant_of,
    variant_paths,
    variant_tag,
)
from nasdet.models.backbone import FeatureBackbone, ShapeSpec


class _Holder(nn.Module):
    """A detector's backbone as :func:`~nasdet.methods.latency.nets.space_body` finds it."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.body(x)


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 4, 1)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(xs[0])


class _TinyDetector(nn.Module):
    """What :class:`~nasdet.methods.latency.latency.Network` runs: ``head(list(backbone(x)
    .values()))``; blocks 0 and 2 have a skip variant (a residual), block 1 not (stride 2)."""

    def __init__(self, multipliers: list[float]) -> None:
        super().__init__()
        torch.manual_seed(0)
        seq = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1),
            InvertedResidual(8, 8, 1, 4),
            InvertedResidual(8, 16, 2, 4),
            InvertedResidual(16, 16, 1, 4),
        )
        body = FeatureBackbone(seq, {"3": "c3"}, [ShapeSpec(16, 4)])
        self.backbone = _Holder(LatencySupernet(body, multipliers))
        self.head = _Head()


def _tiny(multipliers: list[float] = (0.5,)) -> _TinyDetector:
    return _TinyDetector(list(multipliers)).eval()


def test_variant_nodes_are_found_by_scope_and_survive_fusion() -> None:
    det = _tiny()
    body = det.backbone.body
    net = Network(det)
    paths = variant_paths(net, body)
    assert sorted(paths.values()) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]  # no skip
    body.set_active_subnet(body.space.all_of([2, 1, 0]))  # a skip, a pruned copy, a baseline
    found: list[set] = []

    def edit(model) -> None:  # noqa: ANN001 (onnx.ModelProto)
        found.append({variant_of(n, paths) for n in model.graph.node})
        tag_variants(model, paths)

    x = torch.zeros(1, 3, 32, 32)
    plain, profiled, feed = onnx_session_pair(net, x, threads=1, edit=edit)
    assert found == [{None, (1, 1), (2, 0)}]  # the stem and head: None
    profiled.run(None, feed)
    assert plain.run(None, feed)[0].shape == profiled.run(None, feed)[0].shape == (1, 4, 8, 8)
    runs = profiled_runs(profiled)
    assert len(runs) == 2
    # through onnxruntime's fusions, the profiled nodes of each active variant carry its tag
    tags = {(int(m[1]), int(m[2])) for name, _ in runs[-1] if (m := _TAG.search(name))}
    assert tags == {(1, 1), (2, 0)}
    assert any(_TAG.search(name) is None for name, _ in runs[-1])  # the stem and the head
    graph = optimized_graph(profiled)  # the profile's names are its nodes'
    assert {name for name, _ in runs[-1]} <= {n.name for n in graph.node}
    assert set(layout_variants(graph).values()) <= {(1, 1), (2, 0)}


def test_onnxruntime_table_has_an_entry_per_variant_and_zero_for_skips(monkeypatch) -> None:
    """Variants: the baseline and a skip (blocks 0 and 2), the baseline alone (block 1): a
    round is two architectures, two exports. Every variant but the skips is timed (its
    samples; a tiny block's entry may floor at 0, its nodes costing less than the profiler's
    mean cost per node)."""
    seen: list[list[list[list[float]]]] = []
    real = ort_inplace.ort_inplace_samples

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        rest, samples = real(*args, **kwargs)
        seen.append(samples)
        return rest, samples

    monkeypatch.setattr(ort_inplace, "ort_inplace_samples", spy)
    det = _tiny(multipliers=[])
    body = det.backbone.body
    lut = build_table(det, 32, "measured:onnxruntime", min_run_time=0.01)
    assert [len(row) for row in lut.table] == [2, 1, 2]
    assert lut.table[0][1] == 0.0 and lut.table[2][1] == 0.0
    assert all(v >= 0.0 for row in lut.table for v in row)
    (samples,) = seen
    assert [[len(s) > 0 for s in row] for row in samples] == [[True, False], [True], [True, False]]
    assert lut.kind == "measured:onnxruntime" and lut.resolution == 32 and lut.unit == "ms"
    assert body.active_subnet() == body.space.baseline  # restored


@pytest.mark.parametrize("fail", [False, True])
def test_no_onnxruntime_file_is_left_in_the_temporary_folder(monkeypatch, tmp_path, fail) -> None:
    """The profiled sessions write a profile and an optimised graph to the temporary folder:
    read and deleted after a build, and deleted when the build fails half-way (here: the
    timing of the second session raises)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    calls = []
    real = ort_inplace.time_session

    def timing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if fail and len(calls) == 2:
            raise RuntimeError("stopped half-way")
        return real(*args, **kwargs)

    monkeypatch.setattr(ort_inplace, "time_session", timing)
    det = _tiny(multipliers=[])
    if fail:
        with pytest.raises(RuntimeError, match="half-way"):
            build_table(det, 32, "measured:onnxruntime", min_run_time=0.01)
    else:
        build_table(det, 32, "measured:onnxruntime", min_run_time=0.01)
    assert len(calls) >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_run_samples_take_the_profilers_cost_per_node_off() -> None:
    """Nodes whose plain cost is 1 ms each, profiled at 1.5 ms (0.5 ms of profiler per node):
    the samples are the plain costs, the rest the run's nodes outside every variant plus its
    own cost; a layout node onnxruntime inserted is charged where ``layout`` says."""
    run = [("stem", 1.5), (variant_tag(0, 1) + "conv", 1.5), (variant_tag(0, 1) + "dw", 1.5),
           ("fused " + variant_tag(2, 0) + "x_nchwc", 1.5), ("ReorderInput_token_3", 1.5),
           ("head", 1.5)]  # fmt: skip
    plain = [6.2, 6.3, 6.2]  # 6 nodes of 1 ms, and 0.2 ms of the run itself
    profiled = [9.2, 9.3, 9.2]  # + 6 x 0.5 ms
    delta = profiler_cost([plain, [1.0]], [profiled, [1.5]], [6, 1])
    assert delta == pytest.approx(0.5)
    layout = {"ReorderInput_token_3": (2, 0)}
    rest, samples = run_samples(plain, [run, run], delta, layout)
    assert samples == [{(0, 1): pytest.approx(2.0), (2, 0): pytest.approx(2.0)}] * 2
    assert rest == [pytest.approx(statistics.median(plain) - 4.0)] * 2


def test_layout_nodes_are_charged_to_the_variant_whose_output_they_convert() -> None:
    from onnx import helper

    def node(op: str, name: str, src: str, out: str):  # noqa: ANN202
        return helper.make_node(op, [src], [out], name=name)

    nodes = [
        node("Conv", "stem_nchwc", "input", "s"),
        node("ReorderOutput", "ReorderOutput", "s", "s2"),  # stem -> block 0: read by b0 only
        node("Conv", variant_tag(0, 1) + "conv", "s2", "a"),
        node("ReorderInput", "ReorderInput_token_1", "a", "a2"),  # converts b0's output
        node("Conv", variant_tag(1, 0) + "conv", "a2", "b"),
        node("ReorderOutput", "ReorderOutput_token_2", "b", "b2"),  # b1's output, to the head
        node("Conv", "head", "b2", "h"),
        node("ReorderOutput", "ReorderOutput_token_3", "h", "out"),  # outside every variant
    ]
    graph = helper.make_graph(nodes, "g", [], [])
    assert layout_variants(graph) == {
        "ReorderOutput": (0, 1),
        "ReorderInput_token_1": (0, 1),
        "ReorderOutput_token_2": (1, 0),
    }


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_head_conv_entries_map_to_their_modules(detector: str) -> None:
    """A head tower conv's keep variant maps to its modules' paths: RetinaNet's conv is one
    registered module; FCOS's is an unregistered view of its conv, GroupNorm and ReLU, whose
    children carry the paths (the ONNX scopes)."""
    from test_latency_head import FCOS
    from test_latency_kinds import RETINANET

    from nasdet.build import build_detector
    from nasdet.methods import Model
    from nasdet.methods.latency.nets import space_body, to_space_detector

    arch = {"retinanet": RETINANET, "fcos": FCOS}[detector]
    det = to_space_detector(build_detector(Model.model_validate(arch), 11, load_weights=False))
    body = space_body(det)
    paths = ort_inplace.variant_paths(Network(det), body)
    heads = range(len(body.blocks()) - 2 * det.head.classification_head.conv.convs.__len__(),
                  len(body.blocks()))  # fmt: skip
    per_conv = 1 if detector == "retinanet" else 3
    for b in heads:
        mine = sorted(p for p, bv in paths.items() if bv == (b, 0))
        assert len(mine) == per_conv, (b, mine)
        assert all(".head." in p and ".conv." in p for p in mine)
        assert not any(bv == (b, 1) for bv in paths.values())  # the skip has no nodes
