"""The run report in a real browser: headless Chromium opens report.html from disk with its
network off, every plotly figure draws its SVG, and no JavaScript error reaches the console.

Needs Debian's ``chromium``: skipped without it on a workstation, a failure in CI (``CI=true``,
where ``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _report_run import COMPARE, async_run

from nasdet.report import Scatter, Section
from nasdet.report.plots import Point
from nasdet.report.run import write_run_report

CHROMIUM = shutil.which("chromium")
IN_CI = os.environ.get("CI", "").lower() == "true"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
    "--v=0", "--virtual-time-budget=10000",
)  # fmt: skip

# Put first in <head>: collects uncaught errors, unhandled rejections and console.error calls,
# and writes them into an attribute of <html> on load, which --dump-dom then shows.
PROBE = """<script>
window.__errors = [];
addEventListener("error", e => __errors.push("Uncaught " + e.message));
addEventListener("unhandledrejection", e => __errors.push("Unhandled " + e.reason));
const consoleError = console.error;
console.error = (...a) => { __errors.push(a.join(" ")); consoleError(...a); };
addEventListener("load", () => setTimeout(() =>
  document.documentElement.setAttribute("data-js-errors", JSON.stringify(__errors)), 0));
</script>"""

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not IN_CI,
    reason="chromium is not installed (apt-get install chromium); CI installs it",
)


def test_report_renders_in_chromium_without_js_errors(tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.fail("CI=true but chromium is not on PATH: .ci/run installs it before make test")
    store, recs = async_run(tmp_path / "run")
    (tmp_path / "run" / "compare.json").write_text(json.dumps(COMPARE))
    scatter = Scatter(
        [Point(1.0, 0.3, "a"), Point(2.0, 0.4, "b")], "cost (MMAC)", "mAP", "visited",
        chosen=Point(1.0, 0.3, "a"), x_line=(1.5, "limit"),
    )  # fmt: skip
    report = write_run_report(
        tmp_path / "run", store, steps=["search"], objectives=["mAP", "params"], title="browser",
        winner_id=recs[3].id, baseline={"mAP": 0.2, "params": 3e6, "flops": 5e9},
        sections=[Section("method", plots=[scatter])],
    )  # fmt: skip
    page = report.read_text(encoding="utf-8")
    expected = page.count('class="plotly-graph-div"')
    # scatter section, 2 Pareto plots, tree, curves, timeline, 2 compare plots
    assert expected == 8
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")

    result = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         probed.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    errors = re.search(r'<html[^>]*data-js-errors="([^"]*)"', dom)
    assert errors, "the page never reached its load event:\n" + result.stderr[-2000:]
    assert json.loads(errors.group(1).replace("&quot;", '"')) == []
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "ERROR" in line], console
    plots = re.findall(r'<div[^>]*class="plotly-graph-div js-plotly-plot"', dom)
    assert len(plots) == expected  # plotly.js ran and took every figure
    assert dom.count('<svg class="main-svg"') >= expected  # each drew its SVG
    assert dom.count('class="scatterlayer') >= expected - 1  # axes with data (timeline: bars)
