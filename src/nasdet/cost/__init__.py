"""Cost model: parameters, FLOPs/MACs, PyTorch and onnxruntime latency and training memory of
models and detectors.

Units: ``flops`` count 2 per multiply-accumulate (``torch.utils.flop_counter``), ``macs`` = flops
// 2 (torchvision's ``meta["_ops"]`` "GFLOPS" are GMACs), latencies are in ms per forward call,
training memory in bytes (``TrainingMemory.mib``: MiB, 2**20 bytes).

``onnx``/``onnxruntime`` are imported only when :func:`export_onnx` or :func:`onnx_latency` run.
"""

from nasdet.cost.detector import DetectorCost, backbone_body, detector_cost, is_detector
from nasdet.cost.flops import FlopCount, count_flops
from nasdet.cost.latency import Latency, measure_latency
from nasdet.cost.measure import COST_KEYS, measure_cost
from nasdet.cost.memory import TrainingMemory, training_memory
from nasdet.cost.onnx_runtime import OnnxMismatchError, export_onnx, onnx_latency
from nasdet.cost.params import count_params
from nasdet.cost.report import cost_report, format_input_size, parse_input_size, torchvision_model

__all__ = [
    "COST_KEYS",
    "DetectorCost",
    "FlopCount",
    "Latency",
    "OnnxMismatchError",
    "TrainingMemory",
    "backbone_body",
    "cost_report",
    "count_flops",
    "count_params",
    "detector_cost",
    "export_onnx",
    "format_input_size",
    "is_detector",
    "measure_cost",
    "measure_latency",
    "onnx_latency",
    "parse_input_size",
    "torchvision_model",
    "training_memory",
]
