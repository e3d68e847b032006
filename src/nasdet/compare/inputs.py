"""What ``nasdet compare`` compares: architectures read from train configs or model files, one
budget applied identically to all of them, and the seeds.

An architecture is only a ``model`` section. The *budget* is everything else a training depends
on: the ``data``, ``train`` and ``eval`` sections and the input size (``model.min_size``,
``model.max_size``), taken from ``--budget CONFIG`` or else from the first config given. A config
whose budget differs is refused (one line naming the keys) unless ``--budget`` is given, which then
wins: the keys it replaced are listed per architecture. A model file's architecture is trained
from scratch (its weights are not used). Architectures trained on another dataset than the
budget's cannot be compared at all, ``--budget`` or not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nasdet.config import parse_config, read_yaml
from nasdet.errors import ConfigError, DataError
from nasdet.methods import Model, TrainConfig
from nasdet.models.io import read_model_file
from nasdet.pipeline import VOLATILE_KEYS, changed_keys

__all__ = [
    "Architecture",
    "ComparePlan",
    "budget_view",
    "make_plan",
    "parse_arch_arg",
    "parse_seeds",
    "train_config",
]

CONFIG_SUFFIXES = (".yaml", ".yml")
INPUT_SIZE_KEYS = ("min_size", "max_size")
# data keys that do not change which dataset it is (augmentation, loading)
DATA_SETTINGS = ("hflip", "search_fraction", "num_workers")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_IGNORED = tuple(k for k in VOLATILE_KEYS if k != "pipeline")


@dataclass(frozen=True)
class Architecture:
    """One architecture to train.

    Attributes:
        label: its name in the tables, the records and ``runs/<label>/``.
        source: the config or model file it came from.
        kind: ``"config"`` or ``"model file"``.
        model: the ``model`` section as plain data, input size already the budget's.
        overridden: budget keys (dotted) whose value the budget replaced.
    """

    label: str
    source: Path
    kind: Literal["config", "model file"]
    model: dict[str, Any]
    overridden: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ComparePlan:
    """The architectures, the budget (a parsed train config; its ``model`` is unused but for the
    input size), where the budget came from, whether ``--budget`` named it, and the seeds."""

    architectures: list[Architecture]
    budget: Any
    budget_source: Path
    explicit_budget: bool
    seeds: list[int]

    def config_for(self, arch: Architecture, seed: int) -> Any:
        """The train config of ``arch`` at ``seed``: the budget with ``arch``'s model."""
        raw = {**self.budget.model_dump(mode="json"), "model": arch.model, "seed": seed}
        return parse_config(raw, source=f"{arch.source} ({arch.label})", schema=TrainConfig)

    def inputs(self) -> dict[str, Any]:
        """What a resume must find unchanged, as plain data (``compare.yaml``)."""
        return {
            "seeds": list(self.seeds),
            "labels": [a.label for a in self.architectures],
            "budget": budget_view(self.budget.model_dump(mode="json")),
            "architectures": {a.label: {"model": a.model} for a in self.architectures},
        }


def train_config(raw: dict[str, Any]) -> Any:
    """A train config again from its plain data (what a worker receives)."""
    return TrainConfig.model_validate(raw)


def budget_view(config: dict[str, Any]) -> dict[str, Any]:
    """The budget part of a plain-data train config: data, train, eval and the input size."""
    model = config.get("model") or {}
    return {
        "data": config.get("data"),
        "train": config.get("train"),
        "eval": config.get("eval"),
        "model": {k: model.get(k) for k in INPUT_SIZE_KEYS},
    }


def parse_seeds(seeds: str | None, num_seeds: int | None) -> list[int]:
    """``--seeds 0,1,2`` or ``--num-seeds K`` (seeds 0..K-1); default 0, 1, 2."""
    if seeds is not None and num_seeds is not None:
        raise ConfigError("give --seeds or --num-seeds, not both")
    if num_seeds is not None:
        if num_seeds < 1:
            raise ConfigError(f"--num-seeds must be at least 1, got {num_seeds}")
        return list(range(num_seeds))
    if seeds is None:
        return [0, 1, 2]
    try:
        out = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(
            f"--seeds {seeds}: expected comma-separated integers, e.g. 0,1,2"
        ) from None
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"--seeds {seeds}: give distinct integers, e.g. 0,1,2")
    return out


def parse_arch_arg(text: str) -> tuple[str | None, Path]:
    """``[LABEL=]PATH`` as (label or ``None``, path); a path that exists as given wins."""
    label, sep, rest = text.partition("=")
    if sep and not Path(text).exists() and LABEL.fullmatch(label):
        return label, Path(rest)
    return None, Path(text)


def _default_label(path: Path) -> str:
    """A config's stem; a model file's folder name (``runs/demo/model.pt``: ``demo``)."""
    name = path.stem if path.suffix in CONFIG_SUFFIXES else (path.parent.name or path.stem)
    cleaned = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip("._+-")
    return cleaned or "arch"


def _read_config(path: Path) -> Any:
    raw = read_yaml(path)
    if "method" in raw:
        raise ConfigError(
            f"{path}: a run config (method: {raw['method']}) — give a train config (data, model, "
            "train) or the model.pt a run wrote"
        )
    return parse_config(raw, source=str(path), schema=TrainConfig)


def _read_model_file(path: Path, budget: Any, categories: list[str], cat_ids: list[int]) -> dict:
    """The architecture stored in a model file, checked to be for the budget's dataset."""
    stored = read_model_file(path)
    if (
        list(stored.get("categories", [])) != categories
        or [int(c) for c in stored.get("cat_ids", [])] != cat_ids
    ):
        n = len(stored.get("categories", []))
        raise DataError(
            f"{path}: cannot be compared — it was trained on other categories ({n} classes: "
            f"{', '.join(map(str, stored.get('categories', [])[:5]))}...) than the budget's "
            f"dataset ({len(categories)} classes: {', '.join(categories[:5])}...)"
        )
    try:
        return Model.model_validate(stored["architecture"]).model_dump(mode="json")
    except Exception as e:  # noqa: BLE001 - an architecture this nasdet cannot read: one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{path}: its architecture cannot be read ({first})") from None


def _dataset_keys(keys: list[str]) -> list[str]:
    return [
        k for k in keys if k.startswith("data") and k.removeprefix("data.") not in DATA_SETTINGS
    ]


def make_plan(args: list[str], seeds: list[int], budget_path: Path | None = None) -> ComparePlan:
    """Read the architectures ``args`` (``[LABEL=]PATH`` each) and the budget into a plan.

    Raises:
        ConfigError: fewer than two architectures, a duplicate or bad label, no config to take
            the budget from, a budget that differs without ``--budget`` (naming the keys).
        DataError: an architecture trained on another dataset than the budget's.
    """
    parsed = [parse_arch_arg(a) for a in args]
    if len(parsed) < 2:
        raise ConfigError(
            "nasdet compare needs at least two architectures (configs or model files)"
        )
    configs = {p: _read_config(p) for _, p in parsed if p.suffix in CONFIG_SUFFIXES}
    if budget_path is not None:
        budget, source = _read_config(budget_path), budget_path
    elif configs:
        source = next(p for _, p in parsed if p in configs)
        budget = configs[source]
    else:
        raise ConfigError(
            "every architecture is a model file: pass --budget CONFIG (the data and train "
            "sections to train them all with)"
        )
    base = budget.model_dump(mode="json")
    categories: tuple[list[str], list[int]] | None = None
    archs: list[Architecture] = []
    for label, path in parsed:
        label = label or _default_label(path)
        if path in configs:
            given = configs[path].model_dump(mode="json")
            kind: Literal["config", "model file"] = "config"
        else:
            if categories is None:
                categories = _dataset_categories(budget)
            given = {"model": _read_model_file(path, budget, *categories)}
            kind = "model file"
        view = budget_view(given) if kind == "config" else {"model": budget_view(given)["model"]}
        base_view = budget_view(base) if kind == "config" else {"model": budget_view(base)["model"]}
        changed = changed_keys(base_view, view, _IGNORED)
        other_data = _dataset_keys(changed)
        if other_data:
            raise DataError(
                f"{path}: cannot be compared — trained on another dataset than the budget "
                f"({source}): {', '.join(other_data)} differ"
            )
        if changed and budget_path is None:
            raise ConfigError(
                f"{path}: its budget differs from {source}'s ({', '.join(changed)}) — give every "
                "architecture the same data/train/eval sections and input size, or pass "
                "--budget CONFIG to train them all with that one's"
            )
        model = {**given["model"], **{k: base["model"][k] for k in INPUT_SIZE_KEYS}}
        archs.append(Architecture(label, path, kind, model, changed))
    labels = [a.label for a in archs]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup is not None:
        raise ConfigError(
            f"two architectures are labelled {dup!r} — name them: LABEL=PATH (e.g. a={args[0]})"
        )
    plan = ComparePlan(archs, budget, source, budget_path is not None, list(seeds))
    for arch in archs:  # the budget must suit every architecture: fail before any training
        plan.config_for(arch, seeds[0])
    return plan


def _dataset_categories(budget: Any) -> tuple[list[str], list[int]]:
    """Class names and category ids of the budget's dataset (opened, or digits generated)."""
    from nasdet.build import build_datasets

    data = build_datasets(budget.data, seed=budget.seed)
    return list(data.categories), [int(c) for c in data.cat_ids]
