"""Latency-constrained search as pipeline steps, with the seed's names (ENOT + MMDetection):

1. ``baseline`` (optional): the baseline detector (``model``) trained with ``train``.
2. ``pretrain``: the space made from ``baseline_ckpt`` (variant 0 = the baseline's blocks, the
   pruned variants from its most important channels), trained with one uniformly random
   architecture per training step (drawn from (seed, step), so a resumed run draws the same).
   ``multiresolution_pretrain`` also draws the input side per step from ``resolution_range``
   (multiples of 32). With ``distill``, the loss adds ``kd_ratio`` times the distillation loss
   from the baseline's head outputs (:mod:`nasdet.methods.latency.teacher`).
3. ``search`` / ``search_with_resolution``: :mod:`nasdet.methods.latency.search`.
4. ``tune``: the searched net (``searched_arch``, or the architecture stored in
   ``ss_checkpoint``, or this run's search) extracted from the space's weights (or from
   ``scratch``) and trained with ``train``, exactly the baseline's setup.

Before any step, a ``target_latency`` below the space's minimum (every block at its cheapest
variant) is refused with one line stating the minimum; a target above the baseline's latency is
a warning (the baseline already fits).
"""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import torch

from nasdet.build import build_datasets, build_detector, make_trainer, num_classes
from nasdet.errors import ConfigError
from nasdet.method import MethodResult
from nasdet.methods.latency.common import (
    load_space,
    lut,
    resolutions,
    set_resolution,
    space_from_baseline,
    space_model,
)
from nasdet.methods.latency.config import LatencyRunConfig, TrainConfig
from nasdet.methods.latency.latency import unit_of
from nasdet.methods.latency.nets import space_body
from nasdet.methods.latency.report import sections as report_sections
from nasdet.methods.latency.search import SearchOutcome, genotype_of, search
from nasdet.methods.latency.space import LatencyArch
from nasdet.methods.latency.teacher import BaselineDistill
from nasdet.models.io import atomic_save, load_state_dict_checked, read_model_file, save_model
from nasdet.search.records import Record, RecordStore, commit_result, done_record
from nasdet.search.supernet import export_subnet
from nasdet.training import config_fingerprint, train_step

log = logging.getLogger(__name__)
SPACE = "space"  # genotype of the pretrained space's record


def check_target(cfg: LatencyRunConfig, out: Path) -> None:
    """Refuse a target below the space's minimum latency (ConfigError, one line); warn when the
    baseline already meets it."""
    sc = cfg.search_cfg
    if sc is None or not ({"search", "search_with_resolution"} & set(cfg.steps)):
        return
    key = "search_with_resolution" if cfg.search_with_resolution else "search"
    detector = build_detector(space_model(cfg), num_classes(cfg.data), load_weights=False)
    sizes = resolutions(getattr(sc, "resolution_range", None), cfg.model.min_size)
    tables = [lut(cfg, out, detector, r) for r in sizes]
    low = min(tables, key=lambda t: t.minimum)
    if sc.target_latency < low.minimum:
        raise ConfigError(
            f"{key}.target_latency: {sc.target_latency:g} {low.unit} is below the space's minimum "
            f"{low.minimum:.4g} {low.unit} ({cfg.latency}, every block at its cheapest variant, "
            f"{low.resolution} px) — raise it to at least that"
        )
    base = lut(cfg, out, detector, cfg.model.min_size)
    if sc.target_latency >= base.baseline:
        log.warning(
            "%s.target_latency %g %s is above the baseline's %.4g %s: the baseline already fits",
            key,
            sc.target_latency,
            base.unit,
            base.baseline,
            base.unit,
        )


def baseline(cfg: LatencyRunConfig, store: RecordStore, out: Path) -> Record:
    """Step ``baseline``: train ``model`` with ``train``; its record (model file)."""
    found = done_record(store, "baseline", "baseline")
    if found is not None:
        return found
    run_dir = out / "output" / "baseline"
    result = train_step(
        TrainConfig.model_validate(cfg.base()),
        run_dir,
        resume=(run_dir / "checkpoint.pt").is_file(),
    )
    detector = build_detector(space_model(cfg), num_classes(cfg.data), load_weights=False)
    cost = {
        "latency_lut": lut(cfg, out, detector, cfg.model.min_size).baseline,
        "params": float(result.params),
    }
    return commit_result(
        store,
        "baseline",
        "baseline",
        result.metrics,
        weights=result.model_path,
        cost=cost,
        extra={"role": "baseline"},
    )


def resolution_for_step(seed: int, step: int, sizes: list[int]) -> int:
    """The input side ``multiresolution_pretrain`` trains training step ``step`` at."""
    return random.Random(f"{seed}:res:{step}").choice(sizes)


def pretrain(cfg: LatencyRunConfig, store: RecordStore, out: Path) -> Path:
    """Step ``pretrain`` / ``multiresolution_pretrain``: the trained space's model file."""
    step = "multiresolution_pretrain" if cfg.multiresolution_pretrain else "pretrain"
    pc = cfg.pretrain_cfg
    assert pc is not None
    step_dir = out / "output" / step
    dest = step_dir / "search_space.pt"
    if done_record(store, step, SPACE) and dest.is_file():
        return dest
    ckpt = pc.baseline_ckpt or out / "output" / "baseline" / "model.pt"
    if not Path(ckpt).is_file():
        raise ConfigError(
            f"{step}.baseline_ckpt: {ckpt} not found — name the baseline's model file or run "
            "the baseline step first"
        )
    torch.manual_seed(cfg.seed)
    train = cfg.train.model_copy(update={"epochs": pc.epochs or cfg.train.epochs})
    tcfg = TrainConfig.model_validate({**cfg.base(), "train": train.model_dump(mode="json")})
    data = build_datasets(cfg.data, seed=cfg.seed)
    model = space_from_baseline(cfg, Path(ckpt), len(data.categories) + 1)
    body = space_body(model)
    sizes = resolutions(getattr(pc, "resolution_range", None), cfg.model.min_size)
    trainer = make_trainer(
        model,
        data.train,
        tcfg,
        step_dir,
        find_unused_parameters=True,
        fingerprint=config_fingerprint(cfg) + f"|{step}",
    )

    def before_step(i: int) -> None:
        body.sample_active_subnet(random.Random(f"{cfg.seed}:arch:{i}"))
        if len(sizes) > 1:
            set_resolution(model, resolution_for_step(cfg.seed, i, sizes))

    trainer.before_step = before_step
    if pc.distill:
        teacher = build_detector(cfg.model, len(data.categories) + 1, load_weights=False)
        load_state_dict_checked(teacher, read_model_file(ckpt)["state_dict"], str(ckpt))
        kind = "softmax" if cfg.model.detector in ("ssd", "ssdlite") else "sigmoid"
        trainer.step_hook = BaselineDistill(teacher, pc.kd_ratio, kind)
        trainer.forwards_per_step = 1
    history = trainer.fit(resume=trainer.checkpoint_path.is_file())
    body.set_active_subnet(body.space.baseline)
    set_resolution(model, cfg.model.min_size)
    save_model(
        dest,
        model.cpu(),
        architecture=space_model(cfg).model_dump(mode="json"),
        categories=data.categories,
        cat_ids=data.cat_ids,
        meta={"epochs": train.epochs, "history": history, "baseline_ckpt": str(ckpt)},
    )
    loss = float(history[-1]["loss"]) if history else math.nan
    commit_result(store, step, SPACE, {"train_loss": loss}, weights=dest)
    return dest


def _space_file(out: Path) -> Path | None:
    for step in ("search_with_resolution", "search", "multiresolution_pretrain", "pretrain"):
        path = out / "output" / step / "search_space.pt"
        if path.is_file():
            return path
    return None


def _pretrained_file(out: Path) -> Path | None:
    for step in ("multiresolution_pretrain", "pretrain"):
        path = out / "output" / step / "search_space.pt"
        if path.is_file():
            return path
    return None


def fit_arch(cfg: LatencyRunConfig, given: object, key: str) -> LatencyArch:
    """``given`` (a list of ints, or its text ``"[0, 3, 6]"``) as an architecture of the space
    of ``cfg``; :class:`ConfigError` (one line naming ``key``) when it does not parse or does
    not fit the space (length, or an index beyond a block's variants)."""
    spec = space_model(cfg).backbone
    try:
        return spec.parse_genotype(str(LatencyArch.parse(given)))
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def tune_start(cfg: LatencyRunConfig, out: Path) -> tuple[LatencyArch, int, Path | None]:
    """What ``tune`` trains: the architecture, the input side and the space model file whose
    weights it starts from (``None``: scratch)."""
    tc = cfg.tune
    assert tc is not None
    space_path = tc.ss_checkpoint or _space_file(out)
    if space_path is not None and not Path(space_path).is_file():
        raise ConfigError(f"tune.ss_checkpoint: {space_path} not found")
    meta = read_model_file(space_path)["meta"] if space_path is not None else {}
    given = tc.searched_arch if tc.searched_arch is not None else meta.get("searched_arch")
    if given is None:
        raise ConfigError(
            "tune: no architecture — set tune.searched_arch, or tune.ss_checkpoint (a search "
            "space checkpoint, output/search/search_space.pt), or run search first"
        )
    arch = fit_arch(cfg, given, "tune.searched_arch")
    res = tc.resolution or int(meta.get("resolution", cfg.model.min_size))
    if tc.init == "search_space" and space_path is None:
        raise ConfigError("tune.init: search_space needs tune.ss_checkpoint or this run's space")
    return arch, res, Path(space_path) if tc.init == "search_space" and space_path else None


def extracted_weights(
    cfg: LatencyRunConfig, space_path: Path, arch: LatencyArch
) -> dict[str, torch.Tensor]:
    """The state dict of the static detector of ``arch``, cut from the space model file: the
    chosen variants' weights, the rest of the detector as the space holds it."""
    space = load_space(space_path)
    static, _ = export_subnet(space, space_model(cfg), arch, len(space.categories) + 1)
    return static.state_dict()


def tune(cfg: LatencyRunConfig, store: RecordStore, out: Path) -> Record:
    """Step ``tune``: train the searched net with ``train`` (the baseline's setup)."""
    arch, res, space_path = tune_start(cfg, out)
    name = genotype_of(arch, res)
    found = done_record(store, "tune", name)
    if found is not None:
        return found
    run_dir = out / "output" / "tune"
    run_dir.mkdir(parents=True, exist_ok=True)
    smodel = space_model(cfg)
    sub_arch = smodel.backbone.subnet_model(smodel, arch).model_copy(
        update={"min_size": res, "max_size": res}
    )
    init = None
    if space_path is not None:
        init = run_dir / "init_from_space.pt"
        if not init.is_file():
            atomic_save(extracted_weights(cfg, space_path, arch), init)
    config = cfg.base()
    config["model"] = sub_arch.model_dump(mode="json")
    result = train_step(
        TrainConfig.model_validate(config),
        run_dir,
        init_weights=init,
        resume=(run_dir / "checkpoint.pt").is_file(),
    )
    detector = build_detector(smodel, num_classes(cfg.data), load_weights=False)
    table = lut(cfg, out, detector, res)
    cost = {"latency_lut": table.predict(arch), "params": float(result.params)}
    log.info("tune: arch %s at %d px: %s", arch.to_list(), res, result.metrics)
    return commit_result(
        store,
        "tune",
        name,
        result.metrics,
        weights=result.model_path,
        cost=cost,
        extra={"arch": arch.to_list(), "resolution": res, "unit": table.unit},
    )


def run(cfg: LatencyRunConfig, out: Path) -> MethodResult:
    """Run the latency steps of ``cfg`` into ``out``."""
    store = RecordStore(out / "records.sqlite")
    check_target(cfg, out)
    final: Record | None = None
    base: Record | None = None
    model: Path | None = None
    space_path: Path | None = None
    outcome: SearchOutcome | None = None
    for name in cfg.steps:
        log.info("== step %s ==", name)
        if name == "baseline":
            base = baseline(cfg, store, out)
        elif name in ("pretrain", "multiresolution_pretrain"):
            space_path = pretrain(cfg, store, out)
        elif name in ("search", "search_with_resolution"):
            given = cfg.search_cfg.space_checkpoint
            if given is not None and not Path(given).is_file():
                raise ConfigError(f"{name}.space_checkpoint: {given} not found")
            space_path = given or space_path or _pretrained_file(out)
            if space_path is None:
                raise ConfigError(
                    f"{name}: no pretrained space in {out} — run pretrain first or set "
                    f"{name}.space_checkpoint"
                )
            outcome = search(cfg, store, out, space_path)
            final = outcome.record
            model = out / "output" / name / "search_space.pt"
        else:
            final, model = tune(cfg, store, out), None
    shown = [s for s in cfg.steps if s != "baseline"]
    note = "the baseline trained with train (the tune setup)" if base is not None else ""
    if outcome is not None:
        log.info(
            "searched architecture %s at %d px (%s)",
            outcome.arch.to_list(),
            outcome.resolution,
            outcome.how,
        )
    sections = report_sections(
        cfg,
        store,
        out,
        base=base or done_record(store, "baseline", "baseline"),
        tuned=final if final is not None and final.step == "tune" else None,
        chosen=outcome.record if outcome is not None else None,
    )
    return MethodResult(
        sections=sections,
        units={"latency_lut": unit_of(cfg.latency)},
        final=final,
        baseline=base,
        baseline_note=note,
        report_steps=shown,
        objectives=["mAP", "latency_lut"],
        model=model,
    )
