"""Shared bits of the benchmark scripts: the machine line and markdown fragments."""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

import torch

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                    datefmt="%H:%M:%S", stream=sys.stderr)


def machine_line() -> str:
    """Platform, CPU, core count, torch version and threads, GPU if any."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads{gpu}"
    )


def write_fragment(path: str | Path, text: str) -> None:
    """Write one benchmark's markdown (collected into docs/benchmarks.md by collect.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
