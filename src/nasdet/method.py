"""The contract between a search method and the generic layers.

A method (``nasdet/methods/<name>/``) is one :class:`Method` value in the table of
:mod:`nasdet.methods`. The generic pipeline (:mod:`nasdet.pipeline`) reads the run config with
``Method.config``, checks that a resumed run has the same config, runs ``Method.run`` and writes
the report and ``result.json`` from the :class:`MethodResult` it returns. Nothing generic knows
what a method's steps do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasdet.config import BackboneSpec, NeckSpec, RunConfig
from nasdet.report.sections import Section
from nasdet.search.records import Record


@dataclass(frozen=True)
class MethodResult:
    """What a method's run produced.

    Attributes:
        final: the winner's record (``weights_path`` a model file), or ``None`` when the steps
            run produce no model (e.g. ``supernet_train`` alone).
        baseline: the reference the winner is compared with in the report, or ``None``.
        baseline_note: what the baseline is and which budget it had, for the report.
        report_steps: the steps whose records the report shows.
        objectives: the Pareto objectives of the report; the first is the primary metric.
        model: the winner's model file when it is not ``final.weights_path``.
        sections: the method's own report sections (tables and plots as plain data), shown
            after the summary.
        units: the unit of a cost or metric key whose name does not say it (e.g.
            ``{"latency_lut": "MMAC"}``), for the report's tables and axes.
    """

    final: Record | None
    baseline: Record | None = None
    baseline_note: str = ""
    report_steps: list[str] = field(default_factory=list)
    objectives: list[str] = field(default_factory=lambda: ["mAP", "params"])
    model: Path | None = None
    sections: list[Section] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Converter:
    """``nasdet convert <name> CKPT --out OUT``: a peer's checkpoint as a nasdet model file.

    ``convert(checkpoint, out, min_size=, max_size=)`` writes the file and returns one line
    describing what it wrote."""

    help: str
    convert: Callable[..., str]


@dataclass(frozen=True)
class Method:
    """One search method.

    Attributes:
        name: the run config's ``method:`` value.
        title: a human name for reports (``"SP-NAS"``).
        config: the run config schema (a :class:`~nasdet.config.RunConfig` subclass).
        run: ``run(cfg, out_dir) -> MethodResult``: runs ``cfg.steps`` in order into
            ``out_dir``, resuming what a kill stopped.
        backbones, necks: the spec classes the method adds to ``model.backbone`` and
            ``model.neck`` (every trained model of the method can be loaded through them).
        converters: ``nasdet convert`` kinds the method brings.
        torchrun_steps: steps that may run under ``torchrun`` (DDP).
        volatile_keys: dotted config keys that may change between a run and its resume
            (executor settings...), besides the generic ones.
    """

    name: str
    title: str
    config: type[RunConfig]
    run: Callable[[Any, Path], MethodResult]
    backbones: tuple[type[BackboneSpec], ...] = ()
    necks: tuple[type[NeckSpec], ...] = ()
    converters: Mapping[str, Converter] = field(default_factory=dict)
    torchrun_steps: tuple[str, ...] = ()
    volatile_keys: tuple[str, ...] = ()
