"""GPU benchmark: training throughput, achieved FLOP/s, latency and scoring speed on one device.

On synthetic COCO-sized input (640 px, 80 classes, 7 boxes per image) it measures, within a time
budget (default: the whole script in under 8 minutes on one H100/H200):

- training images/s of the FCOS ResNet-18 baseline, the DetNAS supernet (single path), the OFA
  supernet (single path, SSDLite) and YOLOv3 (Darknet-53), each in fp32, AMP bf16 and bf16 +
  channels_last, at the largest batch that fits (doubling until out of memory, capped);
- the achieved FLOP/s (FlopCounterMode count of one step x steps/s) as a fraction of the
  device's bf16 dense peak, for the detector and for its backbone alone (target: >= 40 % on the
  backbone's forward+backward);
- inference latency at batch 1, and DetNAS one-shot candidate scoring (candidates/s, BN
  recalibration included); nasdet's own Trainer on the baseline;
- the suite's CUDA-only tests (pytest on the tests that skip without CUDA).

It prints each row as it is measured and writes the markdown at the end (partial when
interrupted).

    python benchmarks/gpu.py --out docs/benchmarks/gpu.md
    python benchmarks/gpu.py --device cpu --dry-run --out /tmp/gpu.md   # tiny, seconds
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _gpu_parts as parts
import torch
from _common import machine_line, write_fragment
from _gpu_report import (
    ROOT,
    Report,
    TestRun,
    bf16_peak_tflops,
    cuda_only_tests,
    device_lines,
    device_name,
    run_cuda_tests,
)

from nasdet.cost import measure_latency

log = logging.getLogger("gpu")
MODELS = [b.name for b in parts.benches(640, tiny=False)]
DEFAULT_OUT = ROOT / "docs" / "benchmarks" / "gpu.md"
GiB = 2**30


@dataclass(frozen=True)
class Settings:
    """Sizes and time budgets of one run (the full run's, or the dry run's tiny ones)."""

    size: int = 640
    batch: int = 0  # 0: the largest that fits, doubling from start_batch up to max_batch
    start_batch: int = 4
    max_batch: int = 64
    max_backbone_batch: int = 256
    paths: int = 4  # single paths cycled by a supernet's steps
    warmup: int = 3  # steps before timing (+ one per supernet path after the first)
    min_steps: int = 3
    seconds: float = 3.0  # timed per measurement
    latency_s: float = 1.0
    score_s: float = 10.0
    calibrate_images: int = 64
    score_images: int = 128
    score_batch: int = 16
    min_candidates: int = 2
    trainer_steps: int = 8
    tests: bool = True


DRY = Settings(size=64, start_batch=2, max_batch=2, max_backbone_batch=2, paths=2, warmup=0,
               min_steps=1, seconds=0.0, latency_s=0.01, score_s=0.0, calibrate_images=2,
               score_images=2, score_batch=2, min_candidates=1, trainer_steps=2, tests=False)


class Clock:
    """The run's time budget: a measurement starts only while enough of it is left."""

    def __init__(self, budget_s: float) -> None:
        self.deadline = time.perf_counter() + budget_s

    def allows(self, need_s: float) -> bool:
        return time.perf_counter() + need_s <= self.deadline


class Bench:
    """Runs the measurements into a :class:`Report`."""

    def __init__(self, s: Settings, device: torch.device, clock: Clock, report: Report,
                 peak: float | None) -> None:
        self.s, self.device, self.clock, self.report, self.peak = s, device, clock, report, peak

    def attempt(self, what: str, need_s: float, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` unless the budget is spent (a note) or it fails (a failure, the run
        goes on); returns its result or ``None``."""
        if not self.clock.allows(need_s):
            self.report.notes.append(f"{what}: skipped, the time budget was spent")
            return None
        failed = False
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 -- recorded loudly, the other measurements go on
            log.exception("%s failed", what)
            first = str(e).splitlines()[0] if str(e) else ""
            self.report.failures.append(f"{what}: {type(e).__name__}: {first}")
            failed = True
            return None
        finally:  # a failure's traceback holds its frames' tensors until collected
            parts.release(self.device, collect=failed)

    def model(self, bench: parts.Bench) -> int | None:
        """Throughput (detector and backbone) and latency of one model; returns the batch."""
        s, dev = self.s, self.device
        model = bench.build().to(dev)
        paths = parts.Paths(model, s.paths)

        def detector(batch: int, precision: str = "fp32") -> Any:
            return parts.detector_step(model, paths, batch, s.size, precision, dev)

        batch = s.batch or self.attempt(f"{bench.name} batch search", 60, self.search,
                                        bench.title, detector, s.start_batch, s.max_batch)
        if batch:
            self.throughput("train", bench.title, detector, paths, batch)
        body = parts.backbone_of(model)

        def backbone(b: int, precision: str = "fp32") -> Any:
            return parts.backbone_step(body, paths, b, s.size, precision, dev)

        body_batch = s.batch or (batch and self.attempt(
            f"{bench.name} backbone batch search", 30, self.search, f"{bench.title} backbone",
            backbone, batch, s.max_backbone_batch))
        if body_batch:
            self.throughput("backbone", bench.title, backbone, paths, body_batch)
        paths.apply(0)
        image = [torch.rand(3, s.size, s.size, device=dev)]
        for precision in parts.PRECISIONS:
            self.attempt(f"{bench.name} latency {precision}", s.latency_s + 10, self.latency,
                         bench.title, model, image, precision)
        return batch or None

    def search(self, what: str, make: Any, start: int, cap: int) -> int:
        torch.backends.cudnn.benchmark = False  # no autotuning per probed batch size
        try:
            batch, reason = parts.largest_batch(make, start, cap, self.device)
        finally:
            torch.backends.cudnn.benchmark = self.device.type == "cuda"
        if batch == 0:
            raise RuntimeError(f"batch {start} does not fit ({reason})")
        self.report.notes.append(f"{what}: batch {batch}, " + (
            f"the search stopped at {reason}" if reason else f"the cap ({cap})"))
        return batch

    def throughput(self, table: str, title: str, make: Any, paths: parts.Paths,
                   batch: int) -> None:
        flops = self.attempt(f"{title} {table} FLOP count", 20, parts.flops_per_image, make,
                             paths)
        for precision in parts.PRECISIONS:
            self.attempt(f"{title} {table} {precision}", self.s.seconds + 20, self.timed,
                         table, title, make, paths, batch, precision, flops)

    def timed(self, table: str, title: str, make: Any, paths: parts.Paths, batch: int,
              precision: str, flops: float | None) -> None:
        s = self.s
        step = make(batch, precision)
        t = parts.time_steps(step, self.device, warmup=s.warmup + len(paths) - 1,
                             seconds=s.seconds, min_steps=s.min_steps)
        images_per_s = t.steps_per_s * batch
        achieved = flops * images_per_s / 1e12 if flops else None
        share = f"{100 * achieved / self.peak:.1f}" if achieved and self.peak else "n/a"
        self.report.add(table, [
            title, precision, str(batch), f"{images_per_s:.1f}", f"{1e3 / t.steps_per_s:.1f}",
            f"{flops / 1e9:.3g}" if flops else "n/a",
            f"{achieved:.1f}" if achieved is not None else "n/a", share,
            f"{t.peak_bytes / GiB:.1f}" if self.device.type == "cuda" else "n/a",
        ])

    def latency(self, title: str, model: Any, image: list, precision: str) -> None:
        parts.set_layout(model, precision)
        wrapped = parts.Autocast(model, precision, self.device)
        lat = measure_latency(wrapped, image, device=str(self.device),
                              min_run_time=self.s.latency_s)
        self.report.add("latency", [title, precision, f"{lat.median_ms:.2f}",
                                    f"{lat.iqr_ms:.2f}", str(lat.runs)])

    def scoring(self, bench: parts.Bench) -> None:
        s = self.s
        model = bench.build().to(self.device)
        paths = parts.Paths(model, 1000, seed=1)
        calibrate = parts.SyntheticDetection(s.calibrate_images, s.size, seed=1)
        scored = parts.SyntheticDetection(s.score_images, s.size, seed=2)
        t = parts.score_candidates(model, paths, calibrate, scored, batch=s.score_batch,
                                   device=self.device, seconds=s.score_s,
                                   min_candidates=s.min_candidates)
        self.report.add("scoring", [
            bench.title, f"{t.steps_per_s:.2f}", f"{1 / t.steps_per_s:.2f}",
            str(s.calibrate_images), str(s.score_images), str(s.score_batch),
            f"{t.peak_bytes / GiB:.1f}" if self.device.type == "cuda" else "n/a",
        ])

    def trainer(self, bench: parts.Bench, batch: int) -> None:
        data = parts.SyntheticDetection(batch * self.s.trainer_steps, self.s.size)
        with tempfile.TemporaryDirectory() as out:
            ips = parts.trainer_images_per_s(bench.build(), data, batch=batch,
                                             device=self.device, out_dir=Path(out))
        bare = next((r[3] for r in self.report.train
                     if r[0] == bench.title and r[1] == "bf16+cl"), "n/a")
        self.report.add("trainer", [bench.title, str(batch), f"{ips:.1f}", bare])


def run(s: Settings, device: torch.device, clock: Clock, report: Report,
        peak: float | None, names: list[str]) -> None:
    """Everything, in order of importance: the tests (quick), then each model, then scoring
    and the Trainer."""
    ids = cuda_only_tests()
    if s.tests:
        report.tests = run_cuda_tests(ids, timeout=150)
        print(f"[tests] {report.tests.summary}", flush=True)
    else:
        report.tests = TestRun(ids, summary="not run (dry run)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bench = Bench(s, device, clock, report, peak)
    models = [b for b in parts.benches(s.size, tiny=s.size < 640) if b.name in names]
    batches = {}
    for b in models:
        batches[b.name] = bench.attempt(f"{b.name}", 30, bench.model, b)
    for b in models:
        if b.name == "detnas":
            bench.attempt("detnas scoring", s.score_s + 20, bench.scoring, b)
    for b in models:
        if b.name == "fcos_r18" and batches.get(b.name):
            bench.attempt("Trainer", 40, bench.trainer, b, batches[b.name])


def header(device: torch.device, peak: float | None, peak_source: str, s: Settings,
           dry: bool) -> list[str]:
    name = device_name(device)
    peak_line = (f"bf16 dense peak used: {peak:.0f} TFLOP/s ({peak_source})" if peak
                 else f"bf16 dense peak: not known for '{name}' (pass --peak-tflops), so no "
                      "fraction of peak is given")
    return [
        "Synthetic COCO-sized input" + (" (dry run: tiny models and sizes)" if dry else "")
        + f": {s.size}x{s.size} px images, 81 classes, 7 random boxes per image.",
        "",
        *[f"{line}  " for line in device_lines(device)],
        peak_line,
        "",
        (f"Batch: {s.batch}, for all three precisions" if s.batch else
         "Batch: the largest that fits for two fp32 training steps, doubling from "
         f"{s.start_batch} up to {s.max_batch} (backbone alone: from the detector's batch up "
         f"to {s.max_backbone_batch}), used for all three precisions")
        + ". bf16 = AMP autocast to "
        "bfloat16; +cl = channels_last weights and inputs. A supernet trains one path per step, "
        f"cycling {s.paths} sampled paths; its FLOPs are their mean. FLOPs are "
        "FlopCounterMode's (2 per multiply-add; convolutions and matrix products; each "
        "convolution gradient counted as one forward convolution, as torch's backward formula "
        "ignores groups) of one image's forward+backward; TFLOP/s = FLOPs x images/s. Target: "
        ">= 40 % of the bf16 peak on the backbone's forward+backward. Weights are random: the "
        "number of boxes reaching NMS (latency, scoring) is not a trained model's.",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny models, 64 px, batch 2, 2 steps, no tests: checks the script")
    p.add_argument("--models", nargs="+", choices=MODELS, default=MODELS,
                   help="the models to measure (default all)")
    p.add_argument("--budget", type=float, default=420.0,
                   help="seconds for all measurements (default 420: under 8 min in all)")
    p.add_argument("--max-batch", type=int, default=Settings.max_batch,
                   help="cap of the batch search (default %(default)s)")
    p.add_argument("--batch", type=int, default=0,
                   help="one batch for every model and backbone: no batch search (a quicker "
                        "rerun)")
    p.add_argument("--peak-tflops", type=float, help="the device's bf16 dense peak, TFLOP/s")
    p.add_argument("--out", type=Path,
                   help=f"markdown to write (default {DEFAULT_OUT.relative_to(ROOT)}; none in "
                        "a dry run)")
    given = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(given)
    out = args.out or (None if args.dry_run else DEFAULT_OUT)
    if args.dry_run and out is not None and out.resolve() == DEFAULT_OUT.resolve():
        print(f"gpu.py: --dry-run would overwrite {DEFAULT_OUT} — give another --out path",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu.py: --device {args.device} but CUDA is not available — use --device cpu "
              "--dry-run to check the script here", file=sys.stderr)
        return 2
    s = DRY if args.dry_run else Settings(max_batch=args.max_batch, batch=args.batch)
    name = device_name(device)
    peak = args.peak_tflops or (bf16_peak_tflops(name) if device.type == "cuda" else None)
    source = "--peak-tflops" if args.peak_tflops else f"data sheet figure for '{name}'"
    report = Report(header(device, peak, source, s, args.dry_run))
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a timeout's kill: write what is
    start = time.perf_counter()                             # measured so far
    try:
        run(s, device, Clock(args.budget), report, peak, args.models)
    except KeyboardInterrupt:
        report.partial = f"interrupted after {time.perf_counter() - start:.0f} s"
    finally:
        signal.signal(signal.SIGTERM, previous)
        command = shlex.join(["python", "benchmarks/gpu.py", *given])
        text = report.render([
            f"Wall time: {time.perf_counter() - start:.0f} s.  ",
            f"Command: `{command}`  ",
            f"Machine: {machine_line()}",
        ])
        print(text)
        if out is not None:
            write_fragment(out, text)
    if report.partial:
        return 130
    failed_tests = report.tests is not None and report.tests.returncode not in (None, 0)
    return 1 if report.failures or failed_tests else 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
