"""benchmarks/gpu.py: its CPU dry run (tiny models, every table), the batch search, the bf16
peaks, the CUDA-only test discovery and the partial report. No timing is asserted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu

    return gpu


def rows(text: str, title: str) -> list[list[str]]:
    """The body rows of the markdown table under the heading that starts with ``title``."""
    section = text.split(f"### {title}", 1)[1].split("###", 1)[0]
    lines = [x for x in section.splitlines() if x.startswith("| ")][1:]
    return [[c.strip() for c in x.strip("|").split("|")] for x in lines]


def test_dry_run_measures_every_table(gpu, tmp_path: Path) -> None:
    docs = gpu.DEFAULT_OUT
    before = docs.read_bytes() if docs.is_file() else None
    out = tmp_path / "gpu.md"
    argv = ["--device", "cpu", "--dry-run", "--models", "fcos_r18", "detnas", "--out", str(out)]
    assert gpu.main(argv) == 0
    text = out.read_text()
    assert "**failed**" not in text and "Partial" not in text
    for table in ("Training throughput", "Backbone alone"):
        got = rows(text, table)
        assert [(r[0], r[1]) for r in got] == [
            (title, p)
            for title in ("FCOS ResNet-18 (baseline)", "DetNAS supernet, FCOS (single path)")
            for p in ("fp32", "bf16", "bf16+cl")
        ]
        for r in got:
            assert r[2] == "2" and float(r[3]) > 0 and float(r[5]) > 0  # batch, img/s, GFLOP
            assert r[7] == "n/a"  # no bf16 peak for a CPU
    # the detector's FLOPs include its backbone's
    det, body = rows(text, "Training throughput")[0], rows(text, "Backbone alone")[0]
    assert float(det[5]) > float(body[5])
    assert len(rows(text, "Inference latency")) == 6
    (score,) = rows(text, "One-shot candidate scoring")
    assert score[0].startswith("DetNAS") and float(score[1]) > 0
    (trainer,) = rows(text, "nasdet's Trainer")
    assert float(trainer[2]) > 0 and trainer[3] == rows(text, "Training throughput")[2][3]
    assert "- FCOS ResNet-18 (baseline): batch 2, the cap (2)" in text  # the batch search ran
    assert "- DetNAS supernet, FCOS (single path) backbone: batch 2, the cap (2)" in text
    assert "tests/test_cost.py::test_measure_latency_cuda_moves_back" in text
    assert "not run (dry run)" in text
    assert f"Command: `python benchmarks/gpu.py {' '.join(argv)}`" in text
    assert (docs.read_bytes() if docs.is_file() else None) == before


def test_dry_run_never_writes_the_docs_page(gpu, capsys: pytest.CaptureFixture) -> None:
    before = gpu.DEFAULT_OUT.read_bytes() if gpu.DEFAULT_OUT.is_file() else None
    assert gpu.main(["--device", "cpu", "--dry-run", "--out", str(gpu.DEFAULT_OUT)]) == 2
    assert "--out" in capsys.readouterr().err
    assert (gpu.DEFAULT_OUT.read_bytes() if gpu.DEFAULT_OUT.is_file() else None) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_missing_cuda_is_one_line(gpu, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert gpu.main(["--out", str(tmp_path / "x.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert "CUDA is not available" in err and "\n" not in err
    assert not (tmp_path / "x.md").exists()


def test_interrupted_run_writes_a_partial_page(gpu, monkeypatch, tmp_path: Path) -> None:
    def interrupted(s, device, clock, report, peak, names) -> None:
        report.add("latency", ["some model", "fp32", "1.00", "0.10", "5"])
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu, "run", interrupted)
    out = tmp_path / "gpu.md"
    assert gpu.main(["--device", "cpu", "--dry-run", "--out", str(out)]) == 130
    text = out.read_text()
    assert "**Partial: interrupted after" in text
    assert rows(text, "Inference latency") == [["some model", "fp32", "1.00", "0.10", "5"]]


def test_largest_batch_doubles_until_out_of_memory(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _gpu_parts as parts

    tried: list[int] = []

    def make(batch: int):
        tried.append(batch)

        def step(i: int) -> None:
            if batch > 8 and i == 1:  # the second step (optimizer state) runs out
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        return step

    cpu = torch.device("cpu")
    fits, reason = parts.largest_batch(make, 2, 64, cpu)
    assert fits == 8 and tried == [2, 4, 8, 16]
    assert reason.startswith("batch 16: OutOfMemoryError: CUDA out of memory")
    assert parts.largest_batch(make, 16, 64, cpu)[0] == 0
    assert parts.largest_batch(make, 1, 4, cpu) == (4, "")  # capped

    def cudnn(batch: int):
        def step(i: int) -> None:
            if batch > 4:  # how cuDNN may report a failed workspace allocation
                raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")
            if batch == 1:
                raise RuntimeError("Expected all tensors to be on the same device")

        return step

    assert parts.largest_batch(cudnn, 2, 64, cpu) == (
        4, "batch 8: RuntimeError: cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")
    with pytest.raises(RuntimeError, match="same device"):  # at the first batch: a real error
        parts.largest_batch(cudnn, 1, 64, cpu)
    with pytest.raises(ValueError, match="bad"):

        def broken(batch: int):
            raise ValueError("bad")

        parts.largest_batch(broken, 2, 64, cpu)


def test_bf16_peaks_by_device_name(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _gpu_report import bf16_peak_tflops

    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H100 NVL") == 835.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.0
    assert bf16_peak_tflops("NVIDIA GH200 480GB") == 989.0
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("NVIDIA A10") == 125.0
    assert bf16_peak_tflops("NVIDIA L4") == 121.0
    assert bf16_peak_tflops("NVIDIA L40S") == 362.0
    assert bf16_peak_tflops("Tesla V100-SXM2-16GB") is None
    assert bf16_peak_tflops("NVIDIA A10G") is None


def test_cuda_only_tests_are_found(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _gpu_report import cuda_only_tests

    found = cuda_only_tests(ROOT)
    assert "tests/test_cost.py::test_measure_latency_cuda_moves_back" in found
    assert "tests/test_memory.py::test_cuda_measures_one_real_training_step" in found
    # the tests that skip *with* CUDA are not CUDA-only
    assert not any("unavailable_cuda" in t for t in found)
    assert all(re.fullmatch(r"tests/test_\w+\.py(::test_\w+)?", t) for t in found)

    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "import pytest, torch\n"
        "pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='GPU')\n"
        "def test_x(): pass\n"
    )
    (tmp_path / "tests" / "test_b.py").write_text(
        "import pytest, torch\n"
        "@pytest.mark.skipif(\n    not torch.cuda.is_available(),\n    reason='x',\n)\n"
        "def test_multi_line(): pass\n"
        "@pytest.mark.skipif(sys.platform == 'win32', reason='posix')\n"
        "def test_other(): pass\n"
    )
    assert cuda_only_tests(tmp_path) == ["tests/test_a.py", "tests/test_b.py::test_multi_line"]



def test_target_line_reads_the_best_backbone_row(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _gpu_report import Report

    report = Report(["header"])
    row = ["FCOS ResNet-18 (baseline)", "bf16+cl", "64", "900.0", "71.1", "30.00", "27.0"]
    report.backbone = [row + ["27.3", "20.0"], [*row[:1], "bf16", *row[2:], "41.5", "20.0"]]
    assert "met; best 41.5 % (FCOS ResNet-18 (baseline), bf16)" in report.render([])
    report.backbone = [row + ["27.3", "20.0"]]
    assert "missed; best 27.3 %" in report.render([])
    report.backbone = [row + ["n/a", "n/a"]]
    assert "not assessed, no peak for this device" in report.render([])


@pytest.mark.parametrize("groups", [1, 4, 32])
def test_flop_count_of_a_grouped_conv_step_is_three_forwards(monkeypatch, groups: int) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _gpu_parts as parts

    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 32, 16, 16, requires_grad=True)  # grad of the input and of the weight
    forward = 2 * 2 * 32 * (32 // groups) * 9 * 16 * 16  # 2 FLOPs per multiply-add, 2 images

    def make(batch: int):
        def step(i: int) -> None:
            conv(x).sum().backward()

        return step

    class OnePath:
        def __len__(self) -> int:
            return 1

    assert parts.flops_per_image(make, OnePath()) == 3 * forward / 2
