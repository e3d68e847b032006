"""The HTML run report and the lineage of a record, on a synthetic two-step record store."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from _report_run import COMPARE, async_run, figures, hovers
from plotly.offline import get_plotlyjs

from nasdet.report import REPORT_FILENAME, lineage, write_report
from nasdet.search import Record, RecordStore, RecordStoreError

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


def check_tags(page: str) -> _TagChecker:
    """Every tag of ``page`` closed in order (the inlined plotly.js, 4 MB, left out)."""
    checker = _TagChecker()
    checker.feed(page.replace(get_plotlyjs(), "", 1))
    checker.close()
    return checker


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

    checker = check_tags(page)
    assert checker.stack == [] and checker.tags.count("script") == 1 + 6  # plotly.js, figures
    assert "<title>digits &amp; co</title>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "resnet18 &lt;fcos&gt;" in page
    # plotly.js inlined once, nothing fetched
    assert page.count(get_plotlyjs()[:2000]) == 1 and "<script src" not in page

    figs = figures(page)
    titles = [layout["title"]["text"] for _, layout in figs]
    steps, axes = ("serial", "parallel"), ("params", "flops")
    assert titles[:4] == [f"{s}: mAP vs {x}" for s in steps for x in axes]
    assert titles[4:] == ["lineage tree: mAP", "candidates per worker"]  # no curves kept
    serial = hovers(figs[0][0])
    child = next(h for h in serial if f"<b>#{r['child'].id}</b>" in h)
    for part in ("111-2111-211111-2111", "mAP: 0.3500", "params: 8.000 M", "flops: 20.000 G",
                 f"parent: #{r['root'].id}", f"weights: runs/w{r['child'].id}.pt"):  # fmt: skip
        assert part in child
    assert any("&lt;script&gt;alert(1)" in h for h in serial)  # escaped in the hover too
    tree = {t["name"]: t for t in figs[4][0]}
    lit = tree["winner's lineage"]["hovertext"]
    assert [int(re.search(r"#(\d+)", h).group(1)) for h in lit] == [
        r[k].id for k in ("root", "child", "xss", "par", "win")
    ]
    assert tree["winner's lineage"]["x"] == [0, 1, 2, 3, 4]  # generations from the root
    timeline = {t["name"]: t for t in figs[5][0]}
    assert set(timeline) == {"serial", "serial (failed)", "parallel"}  # the infeasible: no start

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
    assert not check_tags(page).stack
    section = page[page.index('id="method-0"') : page.index('id="step-0"')]
    assert "Extra &lt;s&gt;" in section and "text &amp; more" in section
    assert "caption &lt;x&gt;" in section and "&lt;w&gt;" in section
    assert '<tr class="winner"><td class="num">1</td>' in section  # the marked row
    assert "1.5000" in section and "—" in section
    (data, layout), *_ = figures(section)
    assert layout["title"]["text"] == "visited &lt;all&gt;"
    assert [t["name"] for t in data] == ["candidates (2)", "baseline", "chosen"]
    assert data[0]["x"] == [1.0, 2.0] and data[0]["y"] == [0.3, 0.4]  # shown as given
    assert "9.5e+06 weights" in page and "9.500 M" not in page  # the unit the run gave


def test_curves_timeline_and_compare_of_a_run(tmp_path: Path) -> None:
    from nasdet.report.run import write_run_report

    store, recs = async_run(tmp_path / "run")
    (tmp_path / "run" / "cmp").mkdir()
    (tmp_path / "run" / "cmp" / "compare.json").write_text(json.dumps(COMPARE))
    path = write_run_report(
        tmp_path / "run", store, steps=["search"], objectives=["mAP", "params"], title="t",
        winner_id=recs[3].id,
    )  # fmt: skip
    page = path.read_text(encoding="utf-8")
    figs = {layout["title"]["text"]: data for data, layout in figures(page)}

    curves = {t["name"]: t for t in figs["training loss per candidate"]}
    assert list(curves) == [f"#{r.id} g{i}" for i, r in enumerate(recs)]
    assert curves[f"#{recs[1].id} g1"]["y"] == pytest.approx([1.9, 1.4, 0.9])
    assert "weights: w1.pt" in curves[f"#{recs[1].id} g1"]["hovertext"][0]

    bars = figs["candidates per worker"][0]
    assert bars["y"] == ["actor-0", "actor-1", "actor-1", "actor-0"]
    assert bars["base"] == [0.0, 1.0, 40.0, 31.0] and bars["x"] == [30.0, 19.0, 10.0, 29.0]
    timeline = page[page.index('id="timeline"') : page.index('id="compare"')]
    # actor-0: 59 s busy over 60 s; actor-1: 29 s over 49 s
    assert "actor-0: 2 candidate(s), busy 98 %" in timeline
    assert "actor-1: 2 candidate(s), busy 59 %" in timeline

    section = page[page.index('id="compare"') : page.index('id="failures"')]
    assert "Equal-budget comparison" in section and "searched &lt;a&gt;" in section
    assert str(tmp_path / "run" / "cmp" / "compare.json") in section
    (data, layout), *_ = figures(section)
    assert [t["name"] for t in data] == ["baseline", "searched &lt;a&gt;"]
    assert data[1]["error_y"]["array"] == [0.01] and data[1]["y"] == [0.33]


def test_a_broken_compare_json_is_named(tmp_path: Path) -> None:
    from nasdet.errors import ConfigError
    from nasdet.report.run import find_compare

    assert find_compare(tmp_path) is None
    (tmp_path / "compare.json").write_text('{"pairs": []}')
    with pytest.raises(ConfigError, match=r"compare\.json: no 'architectures' list"):
        find_compare(tmp_path)
