"""The device description, the bf16 peaks, the CUDA-only tests and the markdown of
benchmarks/gpu.py."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# bf16 dense tensor-core peaks (no sparsity), TFLOP/s, from NVIDIA's data sheets. The first
# entry whose text the device name contains wins: longer names come before their prefixes.
BF16_PEAK_TFLOPS: list[tuple[str, float | None]] = [
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A10G", None),  # AWS's variant: no published dense bf16 figure
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
]


def bf16_peak_tflops(name: str) -> float | None:
    """The bf16 dense peak of the device called ``name`` (``None``: not known here)."""
    lowered = name.lower()
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in lowered:
            return peak
    return None


def driver_version() -> str:
    """The NVIDIA driver version as ``nvidia-smi`` reports it, or why it is unknown."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.split()
        return out[0] if out else "unknown (nvidia-smi printed nothing)"
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown (nvidia-smi: {type(e).__name__})"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def device_lines(device: torch.device) -> list[str]:
    """What ran the numbers: the device, driver, CUDA/cuDNN and torch versions, math settings."""
    torch_line = f"torch {torch.__version__}"
    if device.type != "cuda":
        return [f"Device: CPU ({os.cpu_count()} cores), {torch_line}"]
    props = torch.cuda.get_device_properties(device)
    return [
        f"Device: {device_name(device)} (compute capability {props.major}.{props.minor}, "
        f"{props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs), "
        f"driver {driver_version()}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}, {torch_line}",
        f"Math: TF32 for convolutions {torch.backends.cudnn.allow_tf32}, for matmul "
        f"{torch.backends.cuda.matmul.allow_tf32} (torch's defaults: fp32 convolutions run in "
        "TF32); cudnn.benchmark on while timing",
    ]


def cuda_only_tests(root: Path = ROOT) -> list[str]:
    """The pytest node ids of the suite's tests that are skipped without CUDA: a test function
    (or a module, through ``pytestmark``) whose ``skipif`` mentions CUDA."""
    ids: list[str] = []
    for path in sorted((root / "tests").glob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(text)
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
            ) and _skips_without_cuda(ast.get_source_segment(text, node.value) or ""):
                ids.append(rel)
                break
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and any(
                _skips_without_cuda(ast.get_source_segment(text, d) or "")
                for d in node.decorator_list
            ):
                ids.append(f"{rel}::{node.name}")
    return ids


def _skips_without_cuda(source: str) -> bool:
    return "skipif" in source and "cuda" in source.lower()


@dataclass
class TestRun:
    """The CUDA-only tests' outcome: one ``(outcome, test)`` per test, pytest's summary."""

    ids: list[str]
    outcomes: list[tuple[str, str]] = field(default_factory=list)
    summary: str = "not run"
    returncode: int | None = None


def run_cuda_tests(ids: list[str], timeout: float) -> TestRun:
    """Run the tests ``ids`` with pytest in a subprocess (this checkout's ``src`` first)."""
    run = TestRun(ids)
    if not ids:
        run.summary = "no CUDA-only test found"
        return run
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT / "src"), env.get("PYTHONPATH")] if p)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *ids]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        run.summary = f"timed out after {timeout:.0f} s"
        return run
    run.returncode = proc.returncode
    lines = proc.stdout.splitlines()
    for line in lines:
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS"):
            run.outcomes.append((word, rest.strip()))
    run.summary = next((x.strip("= ") for x in reversed(lines) if x.strip()), "no output")
    return run


@dataclass
class Report:
    """What the script measured so far, as markdown tables (rendered at the end, or partly
    when interrupted)."""

    header: list[str]
    train: list[list[str]] = field(default_factory=list)
    backbone: list[list[str]] = field(default_factory=list)
    latency: list[list[str]] = field(default_factory=list)
    scoring: list[list[str]] = field(default_factory=list)
    trainer: list[list[str]] = field(default_factory=list)
    tests: TestRun | None = None
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    partial: str = ""

    def add(self, table: str, row: list[str]) -> None:
        getattr(self, table).append(row)
        print(f"[{table}] " + " | ".join(row), flush=True)

    def render(self, footer: list[str]) -> str:
        parts = list(self.header)
        if self.partial:
            parts += ["", f"**Partial: {self.partial}.** The tables hold what was measured."]
        parts += _table(
            "Training throughput (synthetic batches resident on the device; forward, backward "
            "and SGD step; no host-device synchronisation inside the timed steps)",
            TRAIN_HEADERS, self.train)
        parts += _table(
            "Backbone alone (forward + backward of the body on a batch tensor; the target "
            "applies here)", TRAIN_HEADERS, self.backbone)
        parts += self._target()
        parts += _table("Inference latency at batch 1 (eval mode, torch.utils.benchmark.Timer, "
                        "CUDA synchronised; boxes decoded and NMS included)",
                        ["model", "precision", "median ms", "IQR ms", "calls"], self.latency)
        parts += _table(
            "One-shot candidate scoring (per candidate: BN statistics reset, the path set, BN "
            "recalibrated, detections on the scored images; COCO matching not included)",
            ["supernet", "candidates/s", "s / candidate", "calibration images",
             "scored images", "batch", "peak GiB"], self.scoring)
        parts += _table(
            "nasdet's Trainer (its CUDA defaults: AMP fp16 with GradScaler, channels_last, "
            "gradient clipping; batches from a host dataset through its DataLoader)",
            ["model", "batch", "Trainer images/s", "bare-step bf16+cl images/s"], self.trainer)
        parts += self._tests()
        if self.notes or self.failures:
            parts += ["", "Notes:", *[f"- {n}" for n in self.notes],
                      *[f"- **failed**: {f}" for f in self.failures]]
        return "\n".join([*parts, "", *footer]).rstrip() + "\n"

    def _target(self) -> list[str]:
        """The best backbone row against the target (>= 40 % of the bf16 peak)."""
        shares = [(float(r[7]), r[0], r[1]) for r in self.backbone if _number(r[7])]
        if not shares:
            return [] if not self.backbone else ["", "Target (>= 40 % of the bf16 peak): not "
                                                     "assessed, no peak for this device."]
        best, model, precision = max(shares)
        verdict = "met" if best >= TARGET_PERCENT else "missed"
        return ["", f"Target (>= {TARGET_PERCENT:.0f} % of the bf16 peak on the backbone's "
                    f"forward+backward): {verdict}; best {best:.1f} % ({model}, {precision})."]

    def _tests(self) -> list[str]:
        if self.tests is None:
            return ["", "### CUDA-only tests", "", "Not run."]
        lines = ["", "### CUDA-only tests", "",
                 f"`pytest` on the {len(self.tests.ids)} tests that skip without CUDA: "
                 f"{self.tests.summary}."]
        if self.tests.outcomes:
            lines += ["", "| test | outcome |", "|---|---|"]
            lines += [f"| `{test}` | {word} |" for word, test in self.tests.outcomes]
        elif self.tests.ids:
            lines += ["", *[f"- `{i}`" for i in self.tests.ids]]
        return lines


TARGET_PERCENT = 40.0
TRAIN_HEADERS = ["model", "precision", "batch", "images/s", "step ms", "GFLOP / image",
                 "TFLOP/s", "% of bf16 peak", "peak GiB"]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _table(title: str, headers: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["", f"### {title}", "", "Not measured."]
    align = ["---" if i < 2 else "---:" for i in range(len(headers))]
    return [
        "", f"### {title}", "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(align) + "|",
        *["| " + " | ".join(r) + " |" for r in rows],
    ]
