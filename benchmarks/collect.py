"""Assemble docs/benchmarks.md from the fragments the benchmark scripts write and the notes
written by hand.

python benchmarks/collect.py

Each section is ``docs/benchmarks/<name>.md``, the fragment its benchmark script regenerates on
every ``make bench`` (``demo.md`` is the exception: no script writes it), followed by
``docs/benchmarks/<name>.notes.md`` when that file exists. Notes are hand-written (the reading
of the numbers, reruns, caveats); no script writes them, so ``make bench`` keeps them. Write
prose there, never in a generated fragment: the next ``make bench`` would erase it. A leading
``<!-- ... -->`` comment of a notes file (its header) is left out of docs/benchmarks.md.
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
SECTIONS = [
    ("Training throughput: nasdet loop vs bare torchvision loop", "train_throughput.md"),
    ("COCO evaluation time: faster-coco-eval vs pycocotools", "coco_eval.md"),
    ("Baseline detectors on the bundled digits", "baselines.md"),
    ("SP-NAS on the bundled digits", "spnas.md"),
    ("make demo (the SP-NAS preset)", "demo.md"),
    ("DetNAS on the bundled digits", "detnas.md"),
    ("DetNAS ranking ablation", "detnas_ablation.md"),
    ("OFA on the bundled digits", "ofa.md"),
    ("OFA result over 3 seeds (nasdet compare)", "ofa_compare.md"),
    ("Latency-constrained search (ENOT's flow) on the bundled digits", "latency.md"),
    ("Latency search result over 3 seeds, from scratch (nasdet compare)", "latency_compare.md"),
    ("GPU: training throughput, FLOP/s, latency and scoring on one device", "gpu.md"),
]
HEADER = """# Benchmarks

Every table below was produced by the command under it, on the machine it names; `make bench`
(about 5 hours on 2 cores) reruns them all but the `make demo` timing, the DetNAS ranking
ablation (its own command, about 2 hours) and the GPU section;
`make bench-gpu` reruns the GPU section on a machine with one CUDA device. Targets are stated with
each table. Nothing here is a unit test: speed and quality targets are measured here, not
asserted in `tests/`. The text after each section's Command/Machine lines is a hand-written
reading of the numbers (`docs/benchmarks/<name>.notes.md`), kept when the numbers are remeasured.

Since 2026-11-28 a search's winner is picked by `selection` (docs/usage.md, "Selection";
default `auto`: the best within the constraints when any is set, else the knee of the front).
The SP-NAS, DetNAS and OFA results (2026-11-29) were measured with it; the benchmark configs
all set a cost limit, so they take the best within it.
"""
_HEADER_COMMENT = re.compile(r"\A\s*<!--.*?-->\s*", re.DOTALL)


def notes_path(fragment: Path) -> Path:
    """The hand-written notes beside a fragment: ``<name>.notes.md`` for ``<name>.md``."""
    return fragment.with_name(f"{fragment.stem}.notes.md")


def section(title: str, fragment: Path) -> str:
    """One section: the generated fragment, then its notes when present."""
    body = fragment.read_text().strip() if fragment.is_file() else "_Not measured yet._"
    notes = notes_path(fragment)
    if notes.is_file():
        text = _HEADER_COMMENT.sub("", notes.read_text()).strip()
        if text:
            body = f"{body}\n\n{text}"
    return f"## {title}\n\n{body}\n"


def main() -> None:
    parts = [HEADER]
    for title, name in SECTIONS:
        parts.append(section(title, DOCS / "benchmarks" / name))
    (DOCS / "benchmarks.md").write_text("\n".join(parts))
    print(f"wrote {DOCS / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
