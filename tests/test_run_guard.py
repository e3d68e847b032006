"""What every method's run shares (nasdet.pipeline and the CLI): a resumed run with a changed
config is refused or explicitly restarted, exit codes, the run log, seed keys that are ignored
are named, and config mistakes of the methods are caught when the config is read."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from nasdet import __version__
from nasdet.cli import main
from nasdet.errors import ConfigError
from nasdet.methods import METHODS, load_run_config
from nasdet.pipeline import changed_keys, check_resume
from nasdet.search.records import RecordStore


def _spnas(digits_root: Path, **search: object) -> dict:
    cfg = tiny_config(digits_root, epochs=1)
    cfg["search"] = {"epochs": 1, "block": "basic", "base_width": 8, **search}
    cfg["fine_tune"] = {"pipe_step": {"type": "TrainPipeStep"}}
    cfg["serial"] = {
        "pipe_step": {"type": "SearchPipeStep"},
        "search_algorithm": {"type": "SpNasS", "max_sample": 2},
        "search_space": {
            "hyperparameters": [
                {"key": "network.backbone.code", "type": "CATEGORY", "range": ["11-21-21-21"]}
            ]
        },
    }
    cfg["fully_train"] = {"pipe_step": {"type": "TrainPipeStep"}}
    return cfg


def _load(tmp_path: Path, raw: dict, name: str = "run.yaml") -> object:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return load_run_config(path)


def test_changed_keys() -> None:
    old = {"a": 1, "b": {"c": 2, "d": [1, 2]}, "pipeline": ["x"]}
    new = {"a": 1, "b": {"c": 3, "d": [1, 2], "e": 0}, "pipeline": ["y"]}
    assert changed_keys(old, new) == ["b.c", "b.e", "pipeline"]
    assert changed_keys(old, new, ("pipeline", "b.e")) == ["b.c"]


def test_resume_with_a_changed_config_is_refused(digits_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    method = METHODS["spnas"]
    first = _load(tmp_path, _spnas(digits_root))
    check_resume(method, first, out, None)
    check_resume(method, first, out, None)  # the same config resumes
    raw = _spnas(digits_root, epochs=2, workers=3)  # workers: an executor key, may change
    raw["train"]["lr"] = 0.5
    with pytest.raises(ConfigError, match=r"search\.epochs, train\.lr changed") as err:
        check_resume(method, _load(tmp_path, raw), out, None)
    assert "--restart-from" in str(err.value) and "\n" not in str(err.value)
    # only executor or pipeline keys changed: allowed
    raw = _spnas(digits_root, workers=3)
    raw["pipeline"] = ["fine_tune", "serial"]
    check_resume(method, _load(tmp_path, raw), out, None)


def test_restart_from_removes_that_step_and_later(digits_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    method = METHODS["spnas"]
    check_resume(method, _load(tmp_path, _spnas(digits_root)), out, None)
    store = RecordStore(out / "records.sqlite")
    for step in ("fine_tune", "serial", "fully_train"):
        store.add(step, "11-21-21-21")
        (out / "output" / step).mkdir(parents=True)
    changed = _load(tmp_path, _spnas(digits_root, epochs=3))
    with pytest.raises(ConfigError, match="no step 'seria'"):
        check_resume(method, changed, out, "seria")
    check_resume(method, changed, out, "serial")
    assert [r.step for r in store.records()] == ["fine_tune"]
    assert (out / "output" / "fine_tune").is_dir() and not (out / "output" / "serial").exists()
    check_resume(method, changed, out, None)  # the new config is the run's config now


def test_config_mistakes_caught_when_read(digits_root: Path, tmp_path: Path) -> None:
    raw = _spnas(digits_root)
    raw["serial"]["search_algorithm"]["objective_keys"] = ["params", "flops"]
    with pytest.raises(ConfigError, match="no metric to maximise"):
        _load(tmp_path, raw)
    raw = _spnas(digits_root)
    raw["serial"]["search_algorithm"]["objective_keys"] = ["mAP", "speed"]
    with pytest.raises(ConfigError, match="unknown objective key 'speed'"):
        _load(tmp_path, raw)
    raw = _spnas(digits_root)
    raw["fine_tune"]["pipe_step"]["type"] = "SearchPipeStep"
    with pytest.raises(ConfigError, match="fine_tune.pipe_step.type"):
        _load(tmp_path, raw)
    raw = _spnas(digits_root)
    raw["data"] = {"format": "voc", "root": str(tmp_path)}
    raw["reignition"] = {"pipe_step": {"type": "TrainPipeStep"}}
    with pytest.raises(ConfigError, match="search.classification_data"):
        _load(tmp_path, raw)
    det = {
        "method": "detnas",
        "model": {"backbone": {"name": "shufflenet_supernet", "width_mult": 0.25}},
        "evolution_search": {"num_candidates": 4, "num_mutation": 3, "num_crossover": 2},
    }
    with pytest.raises(ConfigError, match=r"num_mutation \+ num_crossover \(3 \+ 2\)"):
        _load(tmp_path, det)
    det["evolution_search"] = {"objective_keys": ["backbone_flops", "mAP"]}
    with pytest.raises(ConfigError, match="must be a metric"):
        _load(tmp_path, det)
    det["evolution_search"] = {}
    det["data"] = {"format": "voc", "root": str(tmp_path)}
    det["supernet_pretrain"] = {"epochs": 1}
    with pytest.raises(ConfigError, match="supernet_pretrain.data"):
        _load(tmp_path, det)


def test_ignored_seed_keys_are_named(digits_root: Path, tmp_path: Path) -> None:
    raw = _spnas(digits_root)
    raw["serial"]["search_space"]["hyperparameters"][0]["range"].append("111-2111-211111-211")
    raw["serial"]["trainer"] = {"callbacks": "SomethingElse"}
    raw["serial"]["model"] = {"pretrained_model_file": "{local_base_path}/x.pth"}
    raw["fully_train"]["model"] = {"model_desc": {"freeze_swap_keys": True}}
    keys = dict(_load(tmp_path, raw).ignored_keys())
    assert set(keys) == {
        "model.backbone.width_mult",  # tiny_config's resnet18 x0.25: SP-NAS starts from serial
        "serial.search_space.hyperparameters[network.backbone.code].range[1:]",
        "serial.trainer.callbacks",
        "serial.model.pretrained_model_file",
        "fully_train.model.model_desc.freeze_swap_keys",
    }
    raw = _spnas(digits_root)
    del raw["model"]["backbone"]
    assert _load(tmp_path, raw).ignored_keys() == []  # a plain run config warns of nothing


def test_cli_exit_codes_version_and_log(
    digits_root: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["run"])  # usage mistake
    assert e.value.code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: nas\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown method 'nas'" in capsys.readouterr().err

    def boom(cfg: object, out: object, **kw: object) -> None:
        logging.getLogger("PIL.PngImagePlugin").debug("STREAM b'IDAT'")  # a library's chatter
        logging.getLogger("nasdet.pipeline").debug("our own debug line")
        raise RuntimeError("something unexpected")

    monkeypatch.setattr("nasdet.pipeline.run_pipeline", boom)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(_spnas(digits_root)))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "RuntimeError: something unexpected" in err
    assert "rerun with -v" in err and str(out / "nasdet.log") in err
    log = (out / "nasdet.log").read_text()
    assert "Traceback" in log and "our own debug line" in log and "STREAM" not in log

    def interrupted(cfg: object, out: object, **kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("nasdet.pipeline.run_pipeline", interrupted)
    assert main(["run", str(cfg), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "rerun the same command to resume" in err and "--resume" not in err
    ours = [h for h in logging.getLogger().handlers if str(out) in getattr(h, "baseFilename", "")]
    assert not ours  # main() removes its log file handler


def test_the_primary_metric_is_the_configs_not_map(digits_root: Path, tmp_path: Path) -> None:
    """No step assumes mAP: the winner is chosen by the first maximised objective."""
    from nasdet.methods.spnas.steps import _objectives
    from nasdet.search.records import Record
    from nasdet.search.selection import Selection, select

    raw = _spnas(digits_root)
    raw["serial"]["search_algorithm"]["objective_keys"] = ["params", "AP50"]
    cfg = _load(tmp_path, raw)
    assert cfg.primary_metric == "AP50" and _objectives(cfg) == ["params", "AP50"]

    def rec(i: int, ap50: float, m_ap: float) -> Record:
        return Record(
            i,
            "serial",
            f"g{i}",
            None,
            "done",
            {"AP50": ap50, "mAP": m_ap},
            {},
            None,
            None,
            0.0,
            None,
            None,
            None,
            {},
        )

    best = Selection(rule="best")
    assert select([rec(1, 0.9, 0.1), rec(2, 0.5, 0.6)], _objectives(cfg), best).record.id == 1
    det = {
        "method": "detnas",
        "model": {"backbone": {"name": "shufflenet_supernet", "width_mult": 0.25}},
        "evolution_search": {"objective_keys": ["+AR100", "backbone_flops"]},
    }
    assert _load(tmp_path, det, "det.yaml").primary_metric == "AR100"
