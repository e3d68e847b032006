"""Assemble docs/benchmarks.md from the fragments the benchmark scripts write.

python benchmarks/collect.py
"""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
SECTIONS = [
    ("Training throughput: nasdet loop vs bare torchvision loop", "train_throughput.md"),
    ("COCO evaluation time: faster-coco-eval vs pycocotools", "coco_eval.md"),
    ("Baseline detectors on the bundled digits", "baselines.md"),
    ("SP-NAS on the bundled digits", "spnas.md"),
    ("make demo (the SP-NAS preset)", "demo.md"),
    ("DetNAS on the bundled digits", "detnas.md"),
]
HEADER = """# Benchmarks

Every table below was produced by the command under it, on the machine it names; `make bench`
reruns them all (tens of minutes on 2 cores). Targets are stated with each table. Nothing here is
a unit test: speed and quality targets are measured here, not asserted in `tests/`.
"""


def main() -> None:
    parts = [HEADER]
    for title, name in SECTIONS:
        path = DOCS / "benchmarks" / name
        body = path.read_text().strip() if path.is_file() else "_Not measured yet._"
        parts.append(f"## {title}\n\n{body}\n")
    (DOCS / "benchmarks.md").write_text("\n".join(parts))
    print(f"wrote {DOCS / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
