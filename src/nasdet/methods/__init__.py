"""The search methods: one explicit table from a run config's ``method:`` to its
:class:`~nasdet.method.Method`.

Each method lives in its own folder (``nasdet/methods/<name>/``: config schema, steps, space,
networks, scoring, converters); adding one is one folder plus one line in :data:`METHODS`. Only
the glue (``nasdet.cli``, ``nasdet.pipeline``, :func:`nasdet.load_model`) imports this module;
the generic packages never import a method (a test walks the imports).

The union of every method's model parts gives :data:`TrainConfig` (what ``nasdet train`` reads)
and :data:`Model` (what every nasdet model file's ``architecture`` is).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nasdet.config import (
    BASE_NECKS,
    BASE_SPECS,
    Config,
    ModelConfig,
    parse_config,
    read_yaml,
    spec_union,
)
from nasdet.errors import ConfigError
from nasdet.method import Method
from nasdet.methods.detnas import METHOD as DETNAS
from nasdet.methods.latency import METHOD as LATENCY
from nasdet.methods.ofa import METHOD as OFA
from nasdet.methods.spnas import METHOD as SPNAS

METHODS: dict[str, Method] = {
    SPNAS.name: SPNAS,
    DETNAS.name: DETNAS,
    OFA.name: OFA,
    LATENCY.name: LATENCY,
}
DEFAULT_METHOD = "spnas"  # a run config without ``method:`` (the SP-NAS seed has none)

Backbone = spec_union(BASE_SPECS + tuple(b for m in METHODS.values() for b in m.backbones))
Neck = spec_union(BASE_NECKS + tuple(n for m in METHODS.values() for n in m.necks))
TrainConfig = Config[Backbone, Neck]  # type: ignore[valid-type]
Model = ModelConfig[Backbone, Neck]  # type: ignore[valid-type]


def list_methods() -> list[str]:
    """The method names, as a run config's ``method:`` takes them."""
    return list(METHODS)


def get_method(name: str, *, source: str = "<config>") -> Method:
    """The method ``name``; :class:`ConfigError` naming the known ones otherwise."""
    if name not in METHODS:
        raise ConfigError(
            f"{source}: method: unknown method {name!r} — expected one of {', '.join(METHODS)}"
        )
    return METHODS[name]


def load_run_config(
    path: str | Path,
    *,
    pipeline: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    option: str = "",
) -> Any:
    """Read and validate a run config with its method's schema (``pipeline`` replaces the
    config's, e.g. from ``--steps``; ``overrides`` sets ``section.key`` values, e.g. from a
    command-line ``option`` that errors then name); :class:`ConfigError` (one line) on any
    mistake."""
    raw = read_yaml(path)
    method = get_method(str(raw.get("method", DEFAULT_METHOD)), source=str(path))
    notes = []
    if pipeline is not None:
        raw = {**raw, "pipeline": pipeline}
        notes.append("--steps")
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        raw = {**raw, section: {**(raw.get(section) or {}), name: value}}
    if overrides:
        notes.append(option or "overrides")
    source = f"{path} ({', '.join(notes)})" if notes else str(path)
    return parse_config(raw, source=source, schema=method.config)


def method_of(cfg: Any) -> Method:
    """The method whose run config ``cfg`` is."""
    return get_method(cfg.method)
