"""ONNX export and onnxruntime (CPU) latency of backbone/neck modules.

Export uses ``torch.onnx.export`` with the torch.export-based ("dynamo") exporter, PyTorch's default
since 2.9, which needs the ``onnxscript`` package; without it the legacy TorchScript exporter
(deprecated) is used and a warning is logged. Modules returning an ``OrderedDict`` (the backbone
contract) or a list are wrapped to return a flat tuple of tensors.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nasdet.cost._utils import eval_mode, flatten_tensors, module_device
from nasdet.cost.latency import Latency, summarize_times

logger = logging.getLogger(__name__)

__all__ = ["OnnxMismatchError", "export_onnx", "onnx_latency", "onnx_session", "time_session"]

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


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


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


def onnx_session(
    module: nn.Module,
    example: Tensor,
    *,
    threads: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> tuple[Any, dict[str, Any]]:
    """Export ``module`` (see :func:`export_onnx`; on the CPU, moved back to its device
    afterwards) to a temporary file, open an onnxruntime CPU session on it (``threads`` intra-op
    threads; ``None``: ``torch.get_num_threads()``) and check its outputs against PyTorch's
    (``torch.allclose(atol, rtol)``; a mismatch raises :class:`OnnxMismatchError`).

    Returns:
        ``(session, feed)``: the session and its input dict for ``example``.
    """
    threads = threads or torch.get_num_threads()
    example = example.detach().cpu()
    original = module_device(module)
    try:
        module.cpu()
        with eval_mode(module), torch.no_grad():
            expected = [t.detach() for t in flatten_tensors(module(example))]
        with tempfile.TemporaryDirectory(prefix="nasdet-onnx-") as tmp:
            path = export_onnx(module, example, Path(tmp) / "model.onnx")
            session = _session(path, threads)
    finally:
        module.to(original)
    feed = {session.get_inputs()[0].name: example.numpy()}
    _check_outputs(expected, session.run(None, feed), atol=atol, rtol=rtol)
    return session, feed


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
