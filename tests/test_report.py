"""The HTML run report and the lineage of a record, on a synthetic two-step record store."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from nasdet.report import REPORT_FILENAME, lineage, write_report
from nasdet.search import Record, RecordStore, RecordStoreError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_VOID = {"meta", "img", "br", "hr", "link", "input"}


def _done(
    store: RecordStore, step: str, genotype: str, parent: Record | None, m_ap: float, mparams: float
) -> Record:
    rec = store.add(step, genotype, parent.id if parent else None)
    assert store.claim(rec.id)
    cost = {"params": int(mparams * 1e6), "flops": mparams * 2.5e9}
    return store.finish(rec.id, {"mAP": m_ap}, f"runs/w{rec.id}.pt", cost=cost)


@pytest.fixture()
def run(tmp_path: Path) -> tuple[RecordStore, dict[str, Record]]:
    """Step ``serial`` (a chain, a failure, an infeasible one) then ``parallel`` (the winner)."""
    store = RecordStore(tmp_path / "run")
    r: dict[str, Record] = {}
    r["root"] = _done(store, "serial", "111-2111-211111-211", None, 0.30, 10.0)
    r["child"] = _done(store, "serial", "111-2111-211111-2111", r["root"], 0.35, 8.0)
    r["big"] = _done(store, "serial", "1111-2111-211111-211", r["root"], 0.31, 14.0)
    oom = store.add("serial", "11-21-21-21", r["root"].id)
    store.claim(oom.id)
    r["oom"] = store.fail(oom.id, "RuntimeError: CUDA out of memory")
    slow = store.add("serial", "1-2-2-2", r["root"].id)
    r["slow"] = store.mark_infeasible(slow.id, "latency 93 ms > 50 ms")
    r["xss"] = _done(store, "serial", "<script>alert(1)</script>", r["child"], 0.37, 9.0)
    r["par"] = _done(store, "parallel", "p-1", r["xss"], 0.40, 9.0)
    r["win"] = _done(store, "parallel", "p-2", r["par"], 0.42, 9.5)
    r["pending"] = store.add("parallel", "p-3", r["win"].id)
    return store, r


class _TagChecker(HTMLParser):
    """Records every start tag and fails on end tags that do not close the innermost open one."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def test_report_has_plots_tables_lineage_and_failures(
    run: tuple[RecordStore, dict[str, Record]], tmp_path: Path
) -> None:
    store, r = run
    baseline = {"name": "resnet18 <fcos>", "mAP": 0.33, "params": 11e6, "flops": 30e9}
    path = write_report(
        tmp_path / "out",
        store,
        steps=["serial", "parallel"],
        baseline=baseline,
        winner_id=r["win"].id,
        title="digits & co",
    )
    assert path == tmp_path / "out" / REPORT_FILENAME
    page = path.read_text(encoding="utf-8")

    checker = _TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.stack == [] and "script" not in checker.tags
    assert "<title>digits &amp; co</title>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "resnet18 &lt;fcos&gt;" in page

    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5  # 2 steps x (params, flops), plus the lineage plot
    assert all(base64.b64decode(img, validate=True).startswith(_PNG_SIGNATURE) for img in images)

    assert "p-2" in page  # the winner's genotype
    lineage_html = page[page.index('id="lineage"') : page.index('id="failures"')]
    order = [r[k].genotype for k in ("root", "child", "xss", "par", "win")]
    positions = [lineage_html.index(g.replace("<", "&lt;").replace(">", "&gt;")) for g in order]
    assert positions == sorted(positions)

    failures = page[page.index('id="failures"') :]
    assert "RuntimeError: CUDA out of memory" in failures and "infeasible" in failures
    assert "latency 93 ms &gt; 50 ms" in failures
    summary = page[page.index('id="summary"') : page.index('id="step-0"')]
    assert "0.4200" in summary and "p-2" in summary  # best mAP and the winner
    assert "runs/w" in page  # weights paths of the Pareto members


def test_report_without_winner_baseline_or_records(
    run: tuple[RecordStore, dict[str, Record]], tmp_path: Path
) -> None:
    store, r = run
    baseline = r["root"]  # a record as baseline
    path = write_report(
        tmp_path, store, steps=["parallel", "missing-step"], baseline=baseline, winner_id=999
    )
    page = path.read_text(encoding="utf-8")
    assert (
        "winner record 999 is not in the store" in page
        and "no candidate of this step finished" in page
    )
    assert f"baseline #{r['root'].id}" in page


def test_lineage_follows_parents_root_first(run: tuple[RecordStore, dict[str, Record]]) -> None:
    store, r = run
    chain = lineage(store, r["win"].id)
    assert [rec.id for rec in chain] == [r[k].id for k in ("root", "child", "xss", "par", "win")]
    assert [rec.id for rec in lineage(store, r["root"].id)] == [r["root"].id]
    with pytest.raises(RecordStoreError):
        lineage(store, 12345)


def test_lineage_stops_at_missing_parents_and_cycles(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    orphan = store.add("s", "a", parent_id=999)
    child = store.add("s", "b", parent_id=orphan.id)
    assert [rec.id for rec in lineage(store, child.id)] == [orphan.id, child.id]
    loop_a = store.add("s", "c", parent_id=child.id + 2)  # points at the next record
    loop_b = store.add("s", "d", parent_id=loop_a.id)
    assert loop_b.id == child.id + 2
    assert [rec.id for rec in lineage(store, loop_b.id)] == [loop_a.id, loop_b.id]


def test_method_sections_render_tables_and_plots_escaped(
    run: tuple[RecordStore, dict[str, Record]], tmp_path: Path
) -> None:
    from nasdet.report import Scatter, Section, Table
    from nasdet.report.plots import Point

    store, r = run
    table = Table(["block", "<w>", "cost"], [[0, "skip", 1.5], [1, 0.5, None]], "caption <x>", [1])
    plot = Scatter(
        [Point(1.0, 0.3), Point(2.0, 0.4)], "cost (MMAC)", "mAP", "visited <all>",
        baseline=Point(2.0, 0.4, "base"), chosen=Point(1.0, 0.3, "chosen"),
    )  # fmt: skip
    path = write_report(
        tmp_path, store, steps=["parallel"], sections=[Section("Extra <s>", "text & more",
                                                               [table], [plot])],
        units={"params": "weights"},
    )  # fmt: skip
    page = path.read_text(encoding="utf-8")
    checker = _TagChecker()
    checker.feed(page)
    assert not checker.stack
    section = page[page.index('id="method-0"') : page.index('id="step-0"')]
    assert "Extra &lt;s&gt;" in section and "text &amp; more" in section
    assert "caption &lt;x&gt;" in section and "&lt;w&gt;" in section
    assert '<tr class="winner"><td class="num">1</td>' in section  # the marked row
    assert "1.5000" in section and "—" in section
    png = re.search(r'alt="visited &lt;all&gt;" src="data:image/png;base64,([^"]+)"', section)
    assert png and base64.b64decode(png.group(1)).startswith(_PNG_SIGNATURE)
    assert "9.5e+06 weights" in page and "9.500 M" not in page  # the unit the run gave
