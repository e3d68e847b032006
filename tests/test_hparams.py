"""Candidates in TensorBoard: each finished one a run with its curves and an HParams session
(genotype, step, parent → metrics, cost), read back from the event files."""

from __future__ import annotations

from pathlib import Path

import pytest
from _report_run import async_run


def test_candidates_in_tensorboard_hparams(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from nasdet.search.hparams import log_candidate

    store, recs = async_run(tmp_path / "run")
    log_dir = tmp_path / "tb"
    for rec in recs:
        log_candidate(log_dir, rec)
    log_candidate(log_dir, recs[1])  # a second write replaces the first
    assert sorted(p.name for p in log_dir.iterdir()) == [f"candidate_{r.id}" for r in recs]
    acc = EventAccumulator(str(log_dir / f"candidate_{recs[1].id}"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([1.9, 1.4, 0.9])
    assert [e.value for e in acc.Scalars("metrics/mAP")] == pytest.approx([0.2])
    assert [e.value for e in acc.Scalars("cost/params")] == pytest.approx([2e6])
    content = acc.PluginTagToContent("hparams")
    plugin = [plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()]
    start = next(p.session_start_info for p in plugin if p.HasField("session_start_info"))
    assert start.hparams["genotype"].string_value == "g1"
    assert start.hparams["step"].string_value == "search"
    assert start.hparams["parent"].string_value == str(recs[0].id)
    experiment = next(p.experiment for p in plugin if p.HasField("experiment"))
    tags = {m.name.tag for m in experiment.metric_infos}
    assert tags == {"metrics/mAP", "cost/params", "cost/flops"}
