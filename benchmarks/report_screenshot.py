"""A screenshot of a run's report.html in headless Chromium (what docs/report_screenshot.png is).

    python benchmarks/report_screenshot.py RUN_DIR [--out docs/report_screenshot.png]
        [--sections step-1,lineage,training] [--size 1280,2000]

Regenerates ``RUN_DIR/report.html`` as ``nasdet report`` does (the record store is only read),
copies it with a script that, once the page has loaded, hovers the best point of the first
figure (so the image shows a candidate's hover box), and shoots it with Debian's ``chromium``
(network off). ``--sections`` keeps the title and only these sections of the page (ids:
``summary``, ``step-<i>``, ``lineage``, ``training``, ``timeline``, ``compare``, ``failures``;
default: all), so that one window shows the parts wanted.

docs/report_screenshot.png: ``nasdet run`` of configs/spnas_demo.yaml shrunk to run in about
half an hour on 2 busy CPU cores (``data.train: 400``, ``data.val: 120``, ``train.epochs: 2``,
``train.warmup_iters: 20``, ``search.epochs: 3``, ``search.fully_train_epochs: 1``; hence the
low mAP), then ``--sections step-1,lineage,training,timeline --size 1280,2560``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from nasdet.report.run import regenerate_report

# Hovers the highest point of the first figure shown, once plotly has drawn it.
HOVER = """<script>
addEventListener("load", () => setTimeout(() => {
  const figs = [...document.querySelectorAll(".js-plotly-plot")];
  const gd = figs.find(f => f.offsetParent !== null);
  if (!gd || !gd.data.length) return;
  const ys = gd.data[0].y || [];
  const best = ys.indexOf(Math.max(...ys));
  if (best >= 0) Plotly.Fx.hover(gd, [{curveNumber: 0, pointNumber: best}]);
}, 200));
</script>"""


def screenshot(run_dir: Path, out: Path, *, sections: str = "", size: str = "1280,2000") -> Path:
    """Write ``out`` (PNG): ``run_dir``'s report as Chromium shows it at ``size`` pixels, only
    the ``sections`` (comma-separated ids) if given."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed: apt-get install chromium")
    page = regenerate_report(run_dir).read_text(encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="report-shot-") as tmp:
        shown = Path(tmp) / "report.html"
        if sections:
            kept = "".join(f":not(#{s.strip()})" for s in sections.split(","))
            page = page.replace("</style>", f"body > section{kept} {{ display: none }}</style>", 1)
        shown.write_text(page.replace("</body>", HOVER + "</body>", 1), encoding="utf-8")
        cmd = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={Path(tmp) / 'profile'}",
            "--virtual-time-budget=5000", f"--window-size={size}",
            f"--screenshot={out.resolve()}", shown.as_uri(),
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    if result.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the --out of a nasdet run")
    parser.add_argument("--out", type=Path, default=Path("docs/report_screenshot.png"))
    parser.add_argument("--sections", default="", help="section ids to keep, e.g. step-1,lineage")
    parser.add_argument("--size", default="1280,2000", help="window WIDTH,HEIGHT in pixels")
    args = parser.parse_args(argv)
    print(screenshot(args.run_dir, args.out, sections=args.sections, size=args.size))


if __name__ == "__main__":
    sys.exit(main())
