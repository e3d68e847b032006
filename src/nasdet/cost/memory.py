"""Peak memory of one training step (forward, backward, optimizer step) at a given batch size.

Two ways to get it, told apart by :attr:`TrainingMemory.method`:

* ``"measured:cuda"``: a copy of the model trains for two steps on the CUDA device; the peak of
  the second step (the optimizer state exists by then, as in every step but the first) is
  ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``, less what
  was allocated before the copy was made. It includes the batch, cuDNN workspaces and temporaries.
* ``"estimated:cpu"``: parameters + gradients + optimizer state + activations. Gradients are one
  copy of the trainable parameters, the optimizer state one copy for SGD with momentum and two for
  AdamW (``exp_avg``, ``exp_avg_sq``); the activations are the tensors autograd saves for backward,
  recorded with :func:`torch.autograd.graph.saved_tensors_hooks` during one real training forward
  at that batch. Temporaries freed during the forward and the allocator's rounding are not
  counted, and activations and gradients are assumed to coexist (an upper bound there).

Both run in fp32 without autocast: with AMP training needs less. All sizes are bytes; ``mib``
divides by 2**20.
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from nasdet.cost._utils import flatten_tensors, module_device, to_device
from nasdet.cost.detector import is_detector
from nasdet.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["OPTIMIZER_STATE_COPIES", "TrainingMemory", "training_memory"]

Optimizer = Literal["sgd", "adamw"]
Method = Literal["measured:cuda", "estimated:cpu"]
OPTIMIZER_STATE_COPIES: dict[str, int] = {"sgd": 1, "adamw": 2}  # per trainable parameter
_SEED = 0  # random images and any sampling inside the model are the same on every call


@dataclass(frozen=True)
class TrainingMemory:
    """Peak memory of one training step and its parts, all in bytes.

    Attributes:
        peak_bytes: the peak. Estimated: exactly the sum of the four parts. Measured: the CUDA
            allocator's peak during the step (then the parts are the sizes of those tensors, which
            do not all coexist at the peak, and the batch and temporaries are not among them).
        params_bytes: every parameter, trainable or frozen (buffers such as BN statistics are
            not counted).
        grads_bytes: gradients of the trainable parameters.
        optimizer_bytes: optimizer state (momentum buffer; AdamW's two moments).
        activations_bytes: tensors saved for backward by the training forward, each storage once;
            parameters and buffers saved for backward are not activations.
        method: ``"measured:cuda"`` or ``"estimated:cpu"``.
        batch_size: images per step.
        image_size: (H, W) of each image as given to the model (a detector resizes it itself).
        optimizer: ``"sgd"`` or ``"adamw"``.
    """

    peak_bytes: int
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    method: Method
    batch_size: int
    image_size: tuple[int, int]
    optimizer: Optimizer

    @property
    def mib(self) -> float:
        """``peak_bytes`` in MiB (2**20 bytes)."""
        return self.peak_bytes / 2**20

    @property
    def measured(self) -> bool:
        """Whether the peak was measured (CUDA) rather than estimated (CPU)."""
        return self.method == "measured:cuda"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all fields (``image_size`` as ``[H, W]``) plus ``mib``."""
        out = asdict(self)
        out["image_size"] = list(self.image_size)
        out["mib"] = self.mib
        return out


def training_memory(
    model: nn.Module,
    image: int | tuple[int, int] | Tensor,
    *,
    batch_size: int,
    optimizer: Optimizer = "sgd",
    device: str | torch.device = "cpu",
) -> TrainingMemory:
    """Peak memory of one training step of ``model`` on ``batch_size`` images.

    A torchvision detector is called as ``model(images, targets)`` in train mode with one box
    (the centre half of the image, label 1) per image and its loss dict summed; any other module
    as ``model(batch)`` with the sum of its outputs as the loss. ``model`` itself is never
    trained: its weights, buffers, gradients, device and training flags are as before.

    Args:
        model: the model, on any device.
        image: one image (C, H, W), copied ``batch_size`` times, or its size: ``s`` for s x s or
            ``(H, W)``, giving seeded random 3-channel images in [0, 1].
        batch_size: images per step.
        optimizer: ``"sgd"`` (with momentum: one state copy) or ``"adamw"`` (two).
        device: ``"cpu"`` estimates (see the module docstring); ``"cuda"``/``"cuda:N"`` measures.

    Returns:
        :class:`TrainingMemory` (bytes; ``.mib`` for MiB; ``.method`` says how it was obtained).

    Raises:
        ConfigError: batch_size < 1, an unknown optimizer, or CUDA requested but unavailable.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size}: the memory batch must be at least 1")
    if optimizer not in OPTIMIZER_STATE_COPIES:
        raise ConfigError(f"optimizer '{optimizer}': expected one of sgd, adamw")
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available; use cpu")
    inputs = _training_inputs(model, _sample(image), batch_size)
    size = (int(inputs.image_hw[0]), int(inputs.image_hw[1]))
    if target.type == "cuda":
        parts = _measure_cuda(model, inputs, optimizer, target)
        method: Method = "measured:cuda"
    else:
        parts = _estimate(model, inputs, optimizer)
        method = "estimated:cpu"
    mem = TrainingMemory(
        **parts, method=method, batch_size=batch_size, image_size=size, optimizer=optimizer
    )
    logger.debug("%s training memory: %s", type(model).__name__, mem)
    return mem


def _sample(image: int | tuple[int, int] | Tensor) -> Tensor:
    """One (C, H, W) image: the given tensor, or a seeded random 3-channel image of that size."""
    if isinstance(image, Tensor):
        if image.dim() != 3:
            raise ConfigError(f"image of shape {tuple(image.shape)}: expected one (C, H, W) image")
        return image.detach()
    height, width = (image, image) if isinstance(image, int) else image
    generator = torch.Generator().manual_seed(_SEED)
    return torch.rand(3, int(height), int(width), generator=generator)


@dataclass(frozen=True)
class _Inputs:
    """The positional arguments of one training call and the image size they hold."""

    args: tuple[Any, ...]
    detector: bool
    image_hw: tuple[int, int]

    def to(self, device: torch.device) -> _Inputs:
        return _Inputs(to_device(self.args, device), self.detector, self.image_hw)


def _training_inputs(model: nn.Module, sample: Tensor, batch_size: int) -> _Inputs:
    height, width = int(sample.shape[-2]), int(sample.shape[-1])
    if not is_detector(model):
        return _Inputs((sample.unsqueeze(0).repeat(batch_size, 1, 1, 1),), False, (height, width))
    box = torch.tensor([[width / 4, height / 4, 3 * width / 4, 3 * height / 4]])
    images = [sample.clone() for _ in range(batch_size)]
    targets = [{"boxes": box.clone(), "labels": torch.tensor([1])} for _ in range(batch_size)]
    return _Inputs((images, targets), True, (height, width))


def _loss(model: nn.Module, inputs: _Inputs) -> Tensor:
    out = model(*inputs.args)
    if inputs.detector:
        return torch.stack([v for v in out.values()]).sum()
    return torch.stack([t.sum() for t in flatten_tensors(out)]).sum()


class _SavedActivations:
    """Bytes of the tensors autograd saves for backward, each storage once.

    Tensors sharing a storage with a parameter or buffer of ``model`` are not counted. Only
    weak references are kept, so the count (:meth:`alive_bytes`) covers the tensors still held by
    a live graph at the time it is taken and changes nothing about when memory is freed.
    """

    def __init__(self, model: nn.Module) -> None:
        state = [*model.parameters(), *model.buffers()]
        self._skip = {t.untyped_storage().data_ptr() for t in state}
        self._saved: list[weakref.ref[Tensor]] = []

    @contextmanager
    def recording(self) -> Iterator[None]:
        def pack(tensor: Tensor) -> Tensor:
            self._saved.append(weakref.ref(tensor))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            yield

    def alive_bytes(self) -> int:
        storages: dict[int, int] = {}
        for ref in self._saved:
            tensor = ref()
            if tensor is None:
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self._skip:
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())


def _tensor_bytes(tensors: Sequence[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Restore every buffer (BN statistics) and training flag of ``model`` after the block."""
    flags = {name: sub.training for name, sub in model.named_modules()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        for name, sub in model.named_modules():
            sub.training = flags[name]


def _estimate(model: nn.Module, inputs: _Inputs, optimizer: Optimizer) -> dict[str, int]:
    """Parts of the CPU estimate; the activations come from one training forward on the CPU."""
    params = list(model.parameters())
    trainable = _tensor_bytes([p for p in params if p.requires_grad])
    recorder = _SavedActivations(model)
    batch = inputs.to(module_device(model))
    with _untouched(model), torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(_SEED)
        model.train()
        with recorder.recording():
            loss = _loss(model, batch)
        activations = recorder.alive_bytes()
        del loss
    parts = {
        "params_bytes": _tensor_bytes(params),
        "grads_bytes": trainable,
        "optimizer_bytes": OPTIMIZER_STATE_COPIES[optimizer] * trainable,
        "activations_bytes": activations,
    }
    return {"peak_bytes": sum(parts.values()), **parts}


def _make_optimizer(model: nn.Module, name: Optimizer) -> torch.optim.Optimizer:
    """The trainer's optimizers (:func:`nasdet.engine.train.make_optimizer`), default settings."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    return torch.optim.AdamW(trainable, lr=1e-4, weight_decay=1e-4)


def _measure_cuda(
    model: nn.Module, inputs: _Inputs, optimizer: Optimizer, device: torch.device
) -> dict[str, int]:
    """Train a copy of ``model`` on ``device`` for two steps; the second step's peak, in bytes."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    net = copy.deepcopy(model).to(device).train()
    opt = _make_optimizer(net, optimizer)
    batch = inputs.to(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index]):
        torch.manual_seed(_SEED)
        _loss(net, batch).backward()  # warm-up: creates the optimizer state, picks algorithms
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        recorder = _SavedActivations(net)
        with recorder.recording():
            loss = _loss(net, batch)
        activations = recorder.alive_bytes()
        loss.backward()
        del loss
        opt.step()
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    params = list(net.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, Tensor)]
    parts = {
        "peak_bytes": peak,
        "params_bytes": _tensor_bytes(params),
        "grads_bytes": _tensor_bytes(grads),
        "optimizer_bytes": _tensor_bytes(state),
        "activations_bytes": activations,
    }
    del net, opt, batch, params, grads, state
    torch.cuda.empty_cache()
    return parts
