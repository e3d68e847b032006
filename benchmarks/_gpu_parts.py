"""The pieces of benchmarks/gpu.py: the models, synthetic COCO-sized data and the measurements.

Every measurement takes a built model and plain numbers and returns plain numbers; the script
(gpu.py) decides what to measure within its time budget and writes the table.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from nasdet.build import build_detector
from nasdet.engine.bn import recalibrate_detector_bn
from nasdet.engine.evaluate import predict
from nasdet.engine.train import Trainer, make_optimizer, make_scheduler
from nasdet.methods import Model
from nasdet.search.supernet import Supernet, body_prefix

NUM_CLASSES = 81  # COCO's 80 classes + background
PRECISIONS = ("fp32", "bf16", "bf16+cl")  # AMP bf16 autocast; +cl: channels_last weights/input
BOXES_PER_IMAGE = 7  # about COCO's mean number of objects per image


@dataclass(frozen=True)
class Bench:
    """One model of the benchmark: a ``model`` section (as a config file holds it)."""

    name: str
    title: str
    section: dict[str, Any]

    def build(self) -> nn.Module:
        """The detector, random weights (nothing is loaded or downloaded)."""
        return build_detector(Model.model_validate(self.section), NUM_CLASSES, load_weights=False)


def benches(size: int, *, tiny: bool) -> list[Bench]:
    """The four models at ``size`` px: COCO widths, or CPU-sized widths when ``tiny``."""
    fpn, convs = (64, 1) if tiny else (256, 4)  # GroupNorm: 32 groups
    fcos = dict(detector="fcos", fpn_channels=fpn, fcos_num_convs=convs, extra_levels="p6p7",
                min_size=size, max_size=size)
    r18 = {"name": "resnet18", "width_mult": 0.25 if tiny else 1.0, "levels": [3, 4, 5]}
    detnas = {"name": "shufflenet_supernet", "width_mult": 0.25 if tiny else 1.0,
              "depths": [1, 1, 1, 1] if tiny else [4, 4, 8, 4], "levels": [3, 4, 5]}
    ofa = {"name": "ofa_supernet", "backbone_type": "mbv3_backbone",
           "width_mult": 0.35 if tiny else 1.0, "levels": [4, 5]}
    darknet = {"name": "darknet53", "width_mult": 0.125 if tiny else 1.0, "levels": [3, 4, 5]}
    extra = [32, 32] if tiny else [512, 256, 256, 128]
    return [
        Bench("fcos_r18", "FCOS ResNet-18 (baseline)", {**fcos, "backbone": r18}),
        Bench("detnas", "DetNAS supernet, FCOS (single path)", {**fcos, "backbone": detnas}),
        Bench("ofa", "OFA supernet, SSDLite (single path)",
              dict(detector="ssdlite", backbone=ofa, ssd_extra_channels=extra, min_size=size,
                   max_size=size)),
        Bench("yolov3", "YOLOv3 Darknet-53", dict(detector="yolov3", backbone=darknet,
                                                   min_size=size, max_size=size)),
    ]


def backbone_of(detector: nn.Module) -> nn.Module:
    """The backbone body of a detector (what a search changes)."""
    return detector.get_submodule(body_prefix(detector).rstrip("."))


class Paths:
    """The single paths a supernet trains on, cycled step by step (SPOS / OFA sampling); a
    plain backbone has one path, its own."""

    def __init__(self, detector: nn.Module, count: int, seed: int = 0) -> None:
        body = backbone_of(detector)
        self.body = body if isinstance(body, Supernet) else None
        rng = random.Random(seed)
        self.genotypes = (
            [self.body.sample_active_subnet(rng) for _ in range(count)] if self.body else [None]
        )

    def __len__(self) -> int:
        return len(self.genotypes)

    def apply(self, step: int) -> None:
        if self.body is not None:
            self.body.set_active_subnet(self.genotypes[step % len(self.genotypes)])


def synthetic_target(size: int, gen: torch.Generator, image_id: int) -> dict[str, Any]:
    """``BOXES_PER_IMAGE`` random boxes (sides 1/16 to 1/2 of ``size``) with random labels."""
    wh = torch.empty(BOXES_PER_IMAGE, 2).uniform_(size / 16, size / 2, generator=gen)
    xy = torch.rand(BOXES_PER_IMAGE, 2, generator=gen) * (size - wh)
    labels = torch.randint(1, NUM_CLASSES, (BOXES_PER_IMAGE,), generator=gen)
    return {"boxes": torch.cat([xy, xy + wh], 1), "labels": labels, "image_id": image_id}


def device_batch(
    batch: int, size: int, device: torch.device, seed: int = 0
) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """A batch of random ``size`` x ``size`` images in [0, 1] and targets, on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=gen).to(device) for _ in range(batch)]
    targets = [
        {k: v.to(device) if isinstance(v, Tensor) else v
         for k, v in synthetic_target(size, gen, i).items()}
        for i in range(batch)
    ]
    return images, targets


class SyntheticDetection(Dataset):
    """``length`` COCO-sized items ``(image, target)`` on the CPU, as a dataset returns them:
    images drawn from a pool of 8 random ones (little host memory), one target each."""

    def __init__(self, length: int, size: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.length, self.size = length, size
        self.pool = [torch.rand(3, size, size, generator=gen) for _ in range(8)]
        self.targets = [synthetic_target(size, gen, i) for i in range(length)]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        return self.pool[i % len(self.pool)], self.targets[i]


def precision_context(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """Autocast to bfloat16 for the bf16 precisions, nothing for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def set_layout(module: nn.Module, precision: str) -> None:
    """channels_last weights for ``bf16+cl``, contiguous otherwise."""
    fmt = torch.channels_last if precision.endswith("+cl") else torch.contiguous_format
    module.to(memory_format=fmt)


def training_step(
    module: nn.Module, paths: Paths, precision: str, device: torch.device,
    loss: Callable[[], Tensor],
) -> Callable[[int], None]:
    """``step(i)``: path ``i`` of ``paths``, ``loss()`` under ``precision``, backward, an SGD
    step; no host-device synchronisation. ``module``'s layout is set for ``precision``
    (channels_last weights for ``bf16+cl``)."""
    set_layout(module, precision)
    opt = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9)
    module.train()

    def step(i: int) -> None:
        paths.apply(i)
        opt.zero_grad(set_to_none=True)
        with precision_context(precision, device):
            value = loss()
        value.backward()
        opt.step()

    return step


def detector_step(
    model: nn.Module, paths: Paths, batch: int, size: int, precision: str, device: torch.device
) -> Callable[[int], None]:
    """A training step of a detector on a fixed batch of ``batch`` images on ``device``."""
    images, targets = device_batch(batch, size, device)  # batched by the detector's transform
    return training_step(model, paths, precision, device,
                         lambda: sum(model(images, targets).values()))


def backbone_step(
    body: nn.Module, paths: Paths, batch: int, size: int, precision: str, device: torch.device
) -> Callable[[int], None]:
    """A training step of a backbone body alone on a ``batch`` x 3 x ``size`` x ``size`` tensor
    (channels_last for ``bf16+cl``); the loss is the sum of the levels' means."""
    x = torch.randn(batch, 3, size, size, device=device)
    if precision.endswith("+cl"):
        x = x.contiguous(memory_format=torch.channels_last)
    return training_step(body, paths, precision, device,
                         lambda: sum(level.float().mean() for level in body(x).values()))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device, *, collect: bool = False) -> None:
    """Return the cached memory the last measurement left (its closures must be gone) to the
    device; ``collect``: first free reference cycles (those of an exception's traceback)."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(error: BaseException) -> bool:
    """An out-of-memory error (also cuDNN/cuBLAS failing to allocate their workspace)."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in text or "ALLOC_FAILED" in text)
    )


def largest_batch(
    make_step: Callable[[int], Callable[[int], None]], start: int, cap: int,
    device: torch.device,
) -> tuple[int, str]:
    """The largest batch, doubling from ``start`` up to ``cap``, whose two training steps run
    (the second holds the optimizer state too), and what stopped the search (``""``: the cap).

    Out of memory stops it (0 when even ``start`` does not fit). Another ``RuntimeError`` at a
    batch that is not ``start`` stops it too (cuDNN may report a failed allocation as an
    internal error), named in the reason; at ``start`` it propagates, as any other error does.
    """
    fits, batch, reason = 0, start, ""
    while batch <= cap:
        try:
            step = make_step(batch)
            step(0)
            step(1)
            synchronize(device)
            fits = batch
        except Exception as e:  # noqa: BLE001 -- only a failure to fit ends the search
            if not (is_oom(e) or (isinstance(e, RuntimeError) and batch > start)):
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            reason = f"batch {batch}: {type(e).__name__}: {first[:160]}"
        finally:
            step = None  # noqa: F841 -- drop the closure (its batch and optimizer)
        release(device, collect=bool(reason))  # a traceback's frames hold the step's tensors
        if reason:
            break
        batch *= 2
    return fits, reason


@dataclass(frozen=True)
class Timing:
    """Steps timed after the warm-up: ``steps`` in ``seconds`` (wall clock, synchronised)."""

    steps: int
    seconds: float
    peak_bytes: int

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


def time_steps(
    step: Callable[[int], None], device: torch.device, *, warmup: int, seconds: float,
    min_steps: int,
) -> Timing:
    """Run ``warmup`` steps, time one more, then time enough steps to last about ``seconds``
    (at least ``min_steps``; just ``min_steps`` when ``seconds`` is 0), synchronising only
    before and after them."""
    for i in range(warmup):
        step(i)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n, done = min_steps, warmup
    if seconds > 0:
        start = time.perf_counter()
        step(done)
        synchronize(device)
        done += 1
        n = max(min_steps, min(1000, int(seconds / max(time.perf_counter() - start, 1e-6))))
    start = time.perf_counter()
    for i in range(n):
        step(done + i)
    synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return Timing(n, elapsed, peak)


def conv_backward_flops(
    grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias: Any,
    _stride: Any, _padding: Any, _dilation: Any, transposed: bool, _output_padding: Any,
    _groups: int, output_mask: list[bool], out_shape: Any = None, **kwargs: Any,
) -> int:
    """FLOPs of ``aten.convolution_backward``: each gradient asked for (input, weight) costs
    what the forward convolution costs. torch's own formula ignores ``groups`` (a 64-channel
    depthwise 3x3 conv counts 65x its true backward), which would inflate the depthwise nets
    (DetNAS's ShuffleNet, OFA's MobileNet); for ``groups=1`` the two agree."""
    per_gradient = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return per_gradient * (int(output_mask[0]) + int(output_mask[1]))


def flops_per_image(make_step: Callable[[int], Callable[[int], None]], paths: Paths) -> float:
    """FLOPs of one image's forward+backward (``FlopCounterMode``, 2 per multiply-add:
    convolutions and matrix products; the optimizer step is not counted), the mean over
    ``paths``; counted on 2-image steps in fp32."""
    step, counts = make_step(2), []
    fixed = {torch.ops.aten.convolution_backward: conv_backward_flops}
    for i in range(len(paths)):
        with FlopCounterMode(display=False, custom_mapping=fixed) as counter:
            step(i)
        counts.append(counter.get_total_flops() / 2)
    return sum(counts) / len(counts)


class Autocast(nn.Module):
    """``module`` run under bf16 autocast (for latency under a precision)."""

    def __init__(self, module: nn.Module, precision: str, device: torch.device) -> None:
        super().__init__()
        self.module, self.precision, self.device = module, precision, device

    def forward(self, *args: Any) -> Any:
        with precision_context(self.precision, self.device):
            return self.module(*args)


def score_candidates(
    model: nn.Module, paths: Paths, calibrate: Dataset, scored: Dataset, *, batch: int,
    device: torch.device, seconds: float, min_candidates: int,
) -> Timing:
    """One-shot scoring as ``nasdet.methods.detnas.scoring.score_subnet`` does it: per
    candidate, the supernet's BN statistics as trained, the candidate's path, BN recalibrated on
    ``calibrate`` (:func:`recalibrate_detector_bn`), detections on ``scored`` (:func:`predict`,
    outputs copied to the host). The COCO matching of those detections (CPU work, see
    docs/benchmarks/coco_eval.md) is not included. After one warm-up candidate, candidates run
    for about ``seconds`` (at least ``min_candidates``); ``Timing.steps`` counts them."""
    pristine = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}

    def one(i: int) -> None:
        model.load_state_dict(pristine, strict=False)
        paths.apply(i)
        recalibrate_detector_bn(
            model, calibrate, num_samples=len(calibrate), batch_size=batch, device=device, seed=i
        )
        predict(model, scored, batch_size=batch, device=device)

    one(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, n = time.perf_counter(), 0
    while n < min_candidates or time.perf_counter() - start < seconds:
        n += 1
        one(n)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return Timing(n, time.perf_counter() - start, peak)


def trainer_images_per_s(
    model: nn.Module, dataset: Dataset, *, batch: int, device: torch.device, out_dir: Path
) -> float:
    """Images/s of nasdet's own ``Trainer`` (its CUDA defaults: AMP with GradScaler,
    channels_last; gradient clipping; batches from a host dataset through its DataLoader) over
    one epoch of ``dataset``, after a warm-up epoch."""
    opt = make_optimizer(model, "sgd", lr=1e-4, momentum=0.9, weight_decay=1e-4)
    sched = make_scheduler(opt, "constant", total_iters=2 * len(dataset) // batch)
    trainer = Trainer(
        model=model, train_set=dataset, optimizer=opt, scheduler=sched, out_dir=out_dir,
        epochs=2, batch_size=batch, device=device, grad_clip=10.0, tensorboard=False,
    )
    trainer._train_epoch(0, None)  # warm-up: cuDNN autotuning, allocator
    return float(trainer._train_epoch(1, None)["images_per_s"])
