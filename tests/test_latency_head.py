"""Head skip variants of the latency space (issue 11: "the head's conv stacks also get a skip
variant"): ``model.head_skip`` builds a RetinaNet or FCOS head with identities at the skipped
tower convs (names kept); the space of such a baseline appends the tower convs as [keep, skip]
entries after the blocks; a searched net with head skips rebuilds from its model file and runs
what the space runs; the LUT counts a head conv over the FPN levels and a skip as 0; mistakes
are one-line errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from test_latency_kinds import RETINANET
from test_latency_lut import virtual_samples
from torch import nn

import nasdet
from nasdet.build import build_detector
from nasdet.config import BaseConfig, parse_config
from nasdet.errors import ConfigError
from nasdet.methods import Model
from nasdet.methods.latency.common import load_space, space_model
from nasdet.methods.latency.config import LatencyRunConfig
from nasdet.methods.latency.latency import Network, build_table, cached_table
from nasdet.methods.latency.nets import space_body, to_space_detector
from nasdet.methods.latency.parts import LatencySpaceSpec
from nasdet.methods.latency.search import choices_table
from nasdet.methods.latency.space import LatencyArch
from nasdet.methods.latency.steps import extracted_weights, fit_arch, tune_start
from nasdet.models.io import save_model
from nasdet.search.supernet import export_subnet

FCOS = {**RETINANET, "detector": "fcos", "fpn_channels": 32, "fcos_num_convs": 2}
HEADS = {"retinanet": (RETINANET, 4, 1), "fcos": (FCOS, 2, 3)}  # convs per tower, modules per conv
CATEGORIES = dict(categories=[str(i) for i in range(10)], cat_ids=list(range(1, 11)))


def _build(arch: dict, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_detector(Model.model_validate(arch), 11, load_weights=False)
    for m in model.modules():  # non-trivial normalisation, so that a skipped conv shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.2)
    return model.eval()


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(Network(model.eval())(x).values())


def _space_spec(arch: dict, head_convs: int) -> LatencySpaceSpec:
    bb = arch["backbone"]
    return LatencySpaceSpec(baseline=bb["name"], width_mult=bb["width_mult"], levels=[3, 4, 5],
                            multipliers=[0.5], head_convs=head_convs)  # fmt: skip


@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_skip_puts_identities_where_the_convs_were(name: str) -> None:
    arch, n, group = HEADS[name]
    plain = _build(arch)
    skipped = build_detector(Model.model_validate({**arch, "head_skip": [1, n]}), 11)
    cls, reg = skipped.head.classification_head.conv, skipped.head.regression_head.conv
    gone = {("classification_head", j) for j in range(group, 2 * group)}  # conv 1: cls's second
    gone |= {("regression_head", j) for j in range(group)}  # conv n: reg's first
    for tower, j in gone:
        assert isinstance((cls if tower == "classification_head" else reg)[j], nn.Identity)
    assert len(cls) == len(reg) == n * group  # positions kept, so the names are
    dropped = tuple(f"head.{t}.conv.{j}." for t, j in gone)
    want = {k: v for k, v in plain.state_dict().items() if not k.startswith(dropped)}
    assert len(want) < len(plain.state_dict()) and set(skipped.state_dict()) == set(want)
    skipped.load_state_dict(want)
    for t, j in gone:  # the plain head with those convs replaced by hand
        plain.head.get_submodule(f"{t}.conv")[j] = nn.Identity()
    x = torch.rand(1, 3, 64, 64)
    for got, ref in zip(_outputs(skipped, x), _outputs(plain, x), strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_the_space_of_a_retinanet_has_its_head_convs_as_skip_entries() -> None:
    cfg = LatencyRunConfig.model_validate(
        {"method": "latency", "model": RETINANET, "space": {"multipliers": [0.5]}}
    )
    smodel = space_model(cfg)
    assert smodel.backbone.head_convs == 4 and smodel.head_skip is None
    space = build_detector(smodel, 11, load_weights=False)  # the spec finishes the head
    body = space_body(space)
    heads = [f"head.{t}.{i}" for t in ("cls", "reg") for i in range(4)]
    assert body.num_body_blocks == 16 and body.block_names[16:] == heads
    assert body.space.num_variants[16:] == (2,) * 8 and smodel.backbone.space == body.space
    # the searchable head keeps the plain head's parameter names
    plain = build_detector(Model.model_validate(RETINANET), 11)
    assert {k for k in space.state_dict() if k.startswith("head.")} == {
        k for k in plain.state_dict() if k.startswith("head.")
    }
    off = LatencyRunConfig.model_validate(
        {"method": "latency", "model": RETINANET, "space": {"head_skip": False}}
    )
    assert space_model(off).backbone.head_convs == 0
    fcos = LatencyRunConfig.model_validate({"method": "latency", "model": FCOS})
    assert space_model(fcos).backbone.head_convs == 2


@pytest.mark.parametrize("name", sorted(HEADS))
def test_a_searched_net_with_head_skips_runs_what_the_space_runs(name: str, tmp_path: Path) -> None:
    arch, n, _ = HEADS[name]
    space = to_space_detector(_build(arch), [0.5])
    body = space_body(space)
    head = [0, 1] + [0] * (n - 2) + [1] + [0] * (n - 1)  # cls conv 1 and reg conv 0 skipped
    genotype = LatencyArch(body.space.sample(random.Random(5)).choices[: -2 * n] + tuple(head))
    smodel = Model.model_validate({**arch, "backbone": _space_spec(arch, n).model_dump()})
    static, sub = export_subnet(space, smodel, genotype, 11)
    assert sub.head_skip == [1, n] and sub.backbone.name == "latency_subnet"
    path = save_model(tmp_path / "net.pt", static, architecture=sub.model_dump(mode="json"),
                      **CATEGORIES)  # fmt: skip
    loaded = nasdet.load_model(path)  # rebuilt from the model file alone
    assert isinstance(loaded.head.regression_head.conv[0], nn.Identity)
    body.set_active_subnet(genotype)
    x = torch.rand(1, 3, 64, 64)
    want = _outputs(space, x)
    for got, ref in zip(_outputs(loaded, x), want, strict=True):
        torch.testing.assert_close(got, ref)
    # the space's own model file loads by name into a space with the head's entries
    spath = save_model(tmp_path / "space.pt", space, architecture=smodel.model_dump(mode="json"),
                       **CATEGORIES)  # fmt: skip
    again = load_space(spath)
    space_body(again).set_active_subnet(genotype)
    for got, ref in zip(_outputs(again, x), want, strict=True):
        torch.testing.assert_close(got, ref)


def test_the_lut_counts_a_head_conv_over_the_levels_and_a_skip_as_zero() -> None:
    space = to_space_detector(_build(RETINANET), [0.5])
    body = space_body(space)
    lut = build_table(space, 64, "mmac")
    levels = 8 * 8 + 4 * 4 + 2 * 2  # P3, P4, P5 at 64 px, the head shared over them
    for row in lut.table[16:]:
        assert row == [pytest.approx(16 * 16 * 9 * levels / 1e6), 0.0]  # a 3x3 16 -> 16 conv
    genotype = LatencyArch((0,) * 16 + (1, 0, 0, 0, 0, 0, 1, 1))
    rows = choices_table(body, genotype, lut)
    assert [(r["block"], r["width"], r["cost"]) for r in (rows[16], rows[22])] == [
        ("head.cls.0", 0.0, 0.0), ("head.reg.2", 0.0, 0.0)]  # fmt: skip
    assert lut.predict(genotype) == pytest.approx(lut.baseline - 3 * lut.table[16][0])
    # timed in place: a head conv's sample is its calls of one forward summed (3 levels)
    _, samples = virtual_samples(space, min_rounds=1)
    for keep, skip in samples[16:]:
        assert keep and all(s == pytest.approx(3 * 16 * 16 * 9) for s in keep) and skip == []


def test_head_skip_mistakes_are_one_line(tmp_path: Path) -> None:
    ssd = {"detector": "ssdlite", "backbone": {"name": "mobilenet_v2"}, "head_skip": [0]}
    with pytest.raises(ConfigError, match="head_skip is for detector retinanet or fcos, not ssd"):
        parse_config({"model": ssd}, schema=BaseConfig)
    retina = {**RETINANET, "backbone": {"name": "resnet18"}}
    with pytest.raises(ConfigError, match=r"head_skip: retinanet's head has convs 0\.\.7 .*got 8"):
        parse_config({"model": {**retina, "head_skip": [8]}}, schema=BaseConfig)
    with pytest.raises(ConfigError, match="head_skip: an index is listed twice"):
        parse_config({"model": {**retina, "head_skip": [2, 2]}}, schema=BaseConfig)
    cfg = LatencyRunConfig.model_validate(
        {"method": "latency", "model": RETINANET, "space": {"multipliers": [0.5]}}
    )
    with pytest.raises(ConfigError, match="tune.searched_arch: .* 16 entries, the space 24"):
        fit_arch(cfg, [0] * 16, "tune.searched_arch")  # the head's 8 entries missing
    with pytest.raises(ValueError, match="model.head_skip: the space is made from the full"):
        LatencyRunConfig.model_validate(
            {"method": "latency", "model": {**RETINANET, "head_skip": [0]}}
        )


def test_space_head_skip_counts_in_the_resume_fingerprint_only_where_a_head_has_towers() -> None:
    """A latency run killed before head skips existed resumes when its head has no conv towers
    (ssdlite: ``space.head_skip`` changes nothing there); a retinanet's space did change."""
    from nasdet.training import config_fingerprint

    def fingerprint(model: dict, head_skip: bool) -> str:
        raw = {"method": "latency", "model": model, "space": {"head_skip": head_skip}}
        return config_fingerprint(LatencyRunConfig.model_validate(raw))

    ssd = {"detector": "ssdlite", "backbone": {"name": "mobilenet_v2"}, "min_size": 96}
    assert "head_skip" not in fingerprint(ssd, True)
    assert fingerprint(ssd, True) == fingerprint(ssd, False)
    assert '"head_skip": true' in fingerprint(RETINANET, True)
    assert fingerprint(RETINANET, True) != fingerprint(RETINANET, False)


def test_tune_from_indices_equals_tune_from_ss_checkpoint_with_head_entries(
    tmp_path: Path,
) -> None:
    raw = {"method": "latency", "model": RETINANET, "space": {"multipliers": [0.5]}}
    cfg = LatencyRunConfig.model_validate(raw)
    space = to_space_detector(_build(RETINANET), [0.5])
    chosen = [0] * 16 + [0, 0, 1, 0, 1, 0, 0, 0]
    ss = save_model(tmp_path / "ss.pt", space, architecture=space_model(cfg).model_dump(
        mode="json"), meta={"searched_arch": chosen, "resolution": 64}, **CATEGORIES)  # fmt: skip
    starts = []
    for tune in ({"ss_checkpoint": str(ss)}, {"ss_checkpoint": str(ss), "searched_arch": chosen}):
        c = LatencyRunConfig.model_validate({**raw, "tune": tune})
        arch, res, path = tune_start(c, tmp_path)
        starts.append((arch, res, extracted_weights(c, path, arch)))
    (a1, r1, w1), (a2, r2, w2) = starts
    assert a1 == a2 == LatencyArch(tuple(chosen)) and r1 == r2 == 64
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not any(k.startswith("head.classification_head.conv.2.") for k in w1)


def test_a_cached_lut_of_the_space_without_head_entries_is_measured_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "lut.json"
    without = cached_table(path, to_space_detector(_build(RETINANET), [0.5], head_skip=False),
                           64, "mmac")  # fmt: skip
    with caplog.at_level("WARNING"):
        lut = cached_table(path, to_space_detector(_build(RETINANET), [0.5]), 64, "mmac")
    assert "for another space" in caplog.text
    assert len(without.table) == 16 and len(lut.table) == 24
    assert lut.baseline == pytest.approx(without.baseline)  # the same network at variant 0
