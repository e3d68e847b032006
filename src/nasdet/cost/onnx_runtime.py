"""ONNX export and onnxruntime (CPU) latency of backbone/neck modules.

Export uses ``torch.onnx.export`` with the torch.export-based ("dynamo") exporter, PyTorch's default
since 2.9, which needs the ``onnxscript`` package; without it the legacy TorchScript exporter
(deprecated) is used and a warning is logged. Modules returning an ``OrderedDict`` (the backbone
contract) or a list are wrapped to return a flat tuple of tensors.

Per-node times: a session opened with profiling (:func:`onnx_session_pair`) records each node's
kernel time per run (:func:`profiled_runs`). onnxruntime renames the nodes it fuses (after a
node or after its output), so a caller that must find its nodes in the profile tags them and
their outputs first (:func:`tag_nodes`, e.g. from the torch module scopes the dynamo exporter
records: :func:`torch_scopes`).
"""

from __future__ import annotations

import ast
import bisect
import importlib.util
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nasdet.cost._utils import eval_mode, flatten_tensors, module_device
from nasdet.cost.latency import Latency, summarize_times

logger = logging.getLogger(__name__)

__all__ = [
    "OnnxMismatchError",
    "discard_profiling",
    "export_onnx",
    "onnx_latency",
    "onnx_session",
    "onnx_session_pair",
    "optimized_graph",
    "profiled_runs",
    "tag_nodes",
    "time_session",
    "torch_scopes",
]

_WARMUP_RUNS = 3
_MIN_RUNS = 5
# the dynamo exporter's graph passes log every rewrite at INFO
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")


class OnnxMismatchError(RuntimeError):
    """onnxruntime's outputs differ from PyTorch's for the same input: the export is wrong."""


class _TupleOutput(nn.Module):
    """Wraps a module so that it returns a flat tuple of tensors (dict values in order)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(flatten_tensors(self.module(x)))


@contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """Raise the exporter's loggers to WARNING for the block, then restore their levels."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _use_dynamo() -> bool:
    if importlib.util.find_spec("onnxscript") is not None:
        return True
    logger.warning("onnxscript is not installed: using the deprecated TorchScript ONNX exporter")
    return False


def export_onnx(module: nn.Module, example: Tensor, path: str | Path) -> Path:
    """Export ``module`` (eval mode, fixed input shape of ``example``) to an ONNX file.

    The output is a flat tuple of tensors named ``output0``, ``output1``, ... (dict values in
    order); the input is named ``input``. Weights are stored inside the file. The model is checked
    with ``onnx.checker.check_model``.

    Args:
        module: a module taking one tensor and returning tensors, a tuple/list or a dict of them.
        example: an input tensor, e.g. (1, 3, H, W); its shape is baked into the graph.
        path: the ``.onnx`` file to write (parent folders are created).

    Returns:
        The path written.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _TupleOutput(module)
    with eval_mode(wrapped), torch.no_grad(), _quiet_exporter_logs():
        n_outputs = len(wrapped(example))
        kwargs: dict[str, Any] = {
            "verbose": False,
            "input_names": ["input"],
            "output_names": [f"output{i}" for i in range(n_outputs)],
        }
        if _use_dynamo():
            torch.onnx.export(
                wrapped, (example,), str(path), dynamo=True, external_data=False, **kwargs
            )
        else:
            torch.onnx.export(wrapped, (example,), str(path), dynamo=False, **kwargs)
    onnx.checker.check_model(str(path), full_check=True)
    logger.debug("exported %s to %s", type(module).__name__, path)
    return path


def _session(model: Path | bytes, threads: int, *, profile: bool = False) -> Any:
    """An onnxruntime CPU session on an ONNX file or its bytes; ``profile``: with profiling on,
    its file in the temporary folder (read by :func:`profiled_runs`), and the optimised graph
    the profile names written there too (read by :func:`optimized_graph`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    optimized = None
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "nasdet-ort-profile")
        fd, optimized = tempfile.mkstemp(prefix="nasdet-ort-optimized-", suffix=".onnx")
        os.close(fd)
        options.optimized_model_filepath = optimized
        options.log_severity_level = 3  # not the warning that an NCHWc graph is hardware-bound
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except BaseException:
        if optimized is not None:
            Path(optimized).unlink(missing_ok=True)
        raise


def _check_outputs(expected: list[Tensor], actual: list[Any], *, atol: float, rtol: float) -> None:
    """Raise :class:`OnnxMismatchError` unless every onnxruntime output matches PyTorch's."""
    if len(expected) != len(actual):
        raise OnnxMismatchError(
            f"onnxruntime returned {len(actual)} outputs, PyTorch {len(expected)}"
        )
    for i, (ref, got) in enumerate(zip(expected, actual, strict=True)):
        got_t = torch.from_numpy(got)
        if tuple(got_t.shape) != tuple(ref.shape):
            raise OnnxMismatchError(
                f"output {i}: onnxruntime shape {tuple(got_t.shape)}, PyTorch {tuple(ref.shape)}"
            )
        if not torch.allclose(got_t.to(ref.dtype), ref, atol=atol, rtol=rtol):
            diff = (got_t.to(ref.dtype) - ref).abs().max().item()
            raise OnnxMismatchError(
                f"output {i}: onnxruntime differs from PyTorch by up to {diff:.3g} "
                f"(atol={atol}, rtol={rtol})"
            )


def _export_checked(
    module: nn.Module,
    example: Tensor,
    threads: int,
    atol: float,
    rtol: float,
    edit: Callable[[Any], object] | None,
) -> tuple[bytes, Any, dict[str, Any]]:
    """Export ``module`` on the CPU (moved back afterwards), apply ``edit`` to the
    ``onnx.ModelProto``, open a session on it and check its outputs against PyTorch's: the
    model's bytes, the session and its feed."""
    import onnx

    example = example.detach().cpu()
    original = module_device(module)
    try:
        module.cpu()
        with eval_mode(module), torch.no_grad():
            expected = [t.detach() for t in flatten_tensors(module(example))]
        with tempfile.TemporaryDirectory(prefix="nasdet-onnx-") as tmp:
            model = onnx.load(str(export_onnx(module, example, Path(tmp) / "model.onnx")))
    finally:
        module.to(original)
    if edit is not None:
        edit(model)
    data = model.SerializeToString()
    session = _session(data, threads)
    feed = {session.get_inputs()[0].name: example.numpy()}
    _check_outputs(expected, session.run(None, feed), atol=atol, rtol=rtol)
    return data, session, feed


def onnx_session(
    module: nn.Module,
    example: Tensor,
    *,
    threads: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    edit: Callable[[Any], object] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Export ``module`` (see :func:`export_onnx`; on the CPU, moved back to its device
    afterwards), open an onnxruntime CPU session on it (``threads`` intra-op threads; ``None``:
    ``torch.get_num_threads()``) and check its outputs against PyTorch's
    (``torch.allclose(atol, rtol)``; a mismatch raises :class:`OnnxMismatchError`). ``edit``
    changes the exported ``onnx.ModelProto`` in place before the session opens (e.g.
    :func:`tag_nodes`).

    Returns:
        ``(session, feed)``: the session and its input dict for ``example``.
    """
    threads = threads or torch.get_num_threads()
    _, session, feed = _export_checked(module, example, threads, atol, rtol, edit)
    return session, feed


def onnx_session_pair(
    module: nn.Module, example: Tensor, *, threads: int, edit: Callable[[Any], object] | None
) -> tuple[Any, Any, dict[str, Any]]:
    """:func:`onnx_session`'s export and check (its default tolerances), the model opened
    twice: ``(plain, profiled, feed)``, ``profiled`` with onnxruntime's profiling on (read it
    with :func:`profiled_runs` and :func:`optimized_graph`). One export for both, so that they
    run the very same graph."""
    data, session, feed = _export_checked(module, example, threads, 1e-4, 1e-4, edit)
    return session, _session(data, threads, profile=True), feed


def torch_scopes(node: Any) -> list[str]:
    """The torch module scopes the dynamo exporter recorded for an ONNX node (metadata
    ``pkg.torch.onnx.name_scopes``), outermost first: e.g. ``["", "module", "module.backbone",
    "module.backbone.body.3", ..., "add_1"]`` (the last: the torch op). Empty when the node
    has none (the legacy TorchScript exporter records none)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            return [str(s) for s in scopes] if isinstance(scopes, list | tuple) else []
    return []


def tag_nodes(model: Any, tag_of: Callable[[Any], str | None]) -> int:
    """Prefix, in place, the name of each node of ``model`` (an ``onnx.ModelProto``, main graph)
    for which ``tag_of(node)`` gives a tag, and the names of the values it outputs (the graph's
    outputs excepted), with that tag: onnxruntime names a node it makes by fusing others after
    one of them or after its output, so the fused node still carries a tag. Returns how many
    nodes were tagged."""
    graph = model.graph
    kept = {o.name for o in graph.output}
    renamed: dict[str, str] = {}
    tagged = 0
    for node in graph.node:
        tag = tag_of(node)
        if tag is None:
            continue
        node.name = tag + node.name
        renamed.update({o: tag + o for o in node.output if o and o not in kept})
        tagged += 1
    for node in graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)
    return tagged


def optimized_graph(session: Any) -> Any:
    """The graph a session opened by :func:`onnx_session_pair` with profiling runs, as
    onnxruntime optimised it (an ``onnx.ModelProto``: its node names are the profile's, with
    the nodes it inserted, e.g. the NCHWc layout's ``ReorderInput`` / ``ReorderOutput``); the
    file is deleted."""
    import onnx

    path = Path(session.get_session_options().optimized_model_filepath)
    try:
        return onnx.load(str(path)).graph
    finally:
        os.unlink(path)


def discard_profiling(session: Any) -> None:
    """Delete the files of a session opened by :func:`onnx_session_pair` with profiling (its
    profile, ended here if it still runs, and its optimised graph) that :func:`profiled_runs`
    and :func:`optimized_graph` have not read and deleted: a caller that fails half-way leaves
    nothing in the temporary folder. Safe to call more than once."""
    profile = session.end_profiling()  # "" once ended
    if profile:
        Path(profile).unlink(missing_ok=True)
    Path(session.get_session_options().optimized_model_filepath).unlink(missing_ok=True)


def profiled_runs(session: Any) -> list[list[tuple[str, float]]]:
    """End the profiling of a session opened by :func:`onnx_session_pair` and read its profile
    (the file is deleted): per ``session.run``, in order, its nodes in execution order as
    ``(node name, span in ms)``, a node's span being its kernel time plus the gap since the
    previous node's kernel ended (the executor's own cost of the node; the first node: its
    kernel time alone). onnxruntime's node names are those of the optimised graph (fused nodes
    renamed)."""
    path = Path(session.end_profiling())
    try:
        events = json.loads(path.read_text())
    finally:
        os.unlink(path)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    starts = [start for start, _ in runs]
    nodes: list[list[dict[str, Any]]] = [[] for _ in runs]
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            i = bisect.bisect_right(starts, e["ts"]) - 1
            if i >= 0 and e["ts"] <= runs[i][1]:
                nodes[i].append(e)
    out: list[list[tuple[str, float]]] = []
    for run in nodes:
        run.sort(key=lambda e: e["ts"])
        spans, end = [], None
        for e in run:
            begin = e["ts"] if end is None else min(end, e["ts"])
            end = e["ts"] + e["dur"]
            spans.append((e["name"].removesuffix("_kernel_time"), (end - begin) / 1e3))
        out.append(spans)
    return out


def time_session(session: Any, feed: dict[str, Any], *, min_run_time: float = 1.0) -> list[float]:
    """Seconds per ``session.run(None, feed)``, after a few warm-up runs, for at least
    ``min_run_time`` seconds and at least 5 runs (``time.perf_counter``)."""
    for _ in range(_WARMUP_RUNS):
        session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < _MIN_RUNS or time.perf_counter() - start < min_run_time:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return times


def onnx_latency(
    module: nn.Module,
    example: Tensor,
    *,
    threads: int | None = None,
    min_run_time: float = 1.0,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> Latency:
    """Export ``module`` to ONNX and time it with onnxruntime's CPUExecutionProvider
    (:func:`onnx_session`, then :func:`time_session`).

    The module is exported on the CPU (see :func:`export_onnx`; it is moved back to its device
    afterwards) to a temporary file, and its onnxruntime outputs are compared with PyTorch's
    (``torch.allclose(atol, rtol)``; a mismatch raises :class:`OnnxMismatchError`). Then
    ``session.run`` is timed with ``time.perf_counter`` after a few warm-up runs, for at least
    ``min_run_time`` seconds and at least 5 runs.

    Args:
        module: backbone/neck-like module taking one tensor (e.g. (1, 3, H, W)).
        example: the input used for export, checking and timing.
        threads: onnxruntime ``intra_op_num_threads``; ``None`` uses ``torch.get_num_threads()``.
        min_run_time: seconds of timing at least.

    Returns:
        :class:`Latency` (``backend="onnxruntime"``, ``device="cpu"``) with median and IQR per
        call in ms over ``runs`` timed runs.
    """
    threads = threads or torch.get_num_threads()
    session, feed = onnx_session(module, example, threads=threads, atol=atol, rtol=rtol)
    times = time_session(session, feed, min_run_time=min_run_time)
    median_ms, iqr_ms = summarize_times(times)
    latency = Latency(median_ms, iqr_ms, threads, "cpu", len(times), backend="onnxruntime")
    logger.info("%s onnxruntime latency: %s", type(module).__name__, latency)
    return latency
