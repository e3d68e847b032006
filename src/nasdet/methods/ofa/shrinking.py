"""Progressive shrinking: which kernel sizes, expand ratios and depths the supernet samples from,
epoch by epoch.

A schedule has the layout of aw_nas's ``search_space_cfg.schedule_cfg``: for each choice a list of
1-based ``boundary`` epochs and, per boundary, the ``value`` list in force from that epoch on::

    kernel_choice: {boundary: [1, 81], value: [[7], [7, 5, 3]]}   # [7] for epochs 1-80, then all

A choice without a schedule samples from the supernet's full list. :func:`default_schedule`
lays out Once-for-All's order (full network, elastic kernel, elastic depth, elastic expand) over
a number of epochs; :func:`phase_interval` gives the period for the learning-rate restarts
(``train.schedule: cosine_restarts``, aw_nas's ``CosineAnnealingWarmRestarts`` with ``T_0`` = the
epoch interval of the progressive training).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from nasdet.config import Strict
from nasdet.errors import ConfigError

log = logging.getLogger(__name__)

SCHEDULE_KEY = "search_space_cfg.schedule_cfg"
#: config key -> (``set_choices`` argument, what the supernet's list holds)
CHOICES: dict[str, tuple[str, str]] = {
    "kernel_choice": ("ks", "kernel sizes"),
    "expand_choice": ("e", "expand ratios"),
    "depth_choice": ("d", "depths"),
}


class ChoiceSchedule(Strict):
    """One choice's lists over the epochs: ``value[i]`` from epoch ``boundary[i]`` (1-based) on,
    until the next boundary."""

    type: Literal["value"] = Field("value", description="aw_nas's schedule type (only 'value')")
    boundary: list[int] = Field(description="1-based epochs where each value list starts")
    value: list[list[int]] = Field(description="the choices sampled from each boundary on")

    @field_validator("boundary")
    @classmethod
    def _boundary(cls, boundary: list[int]) -> list[int]:
        if not boundary or boundary[0] != 1:
            raise ValueError(f"must start at epoch 1 (got {boundary})")
        if any(b <= a for a, b in zip(boundary, boundary[1:], strict=False)):
            raise ValueError(f"epochs must be strictly increasing (got {boundary})")
        return boundary

    @field_validator("value")
    @classmethod
    def _value(cls, value: list[list[int]], info: ValidationInfo) -> list[list[int]]:
        for i, choices in enumerate(value):
            if not choices:
                raise ValueError(f"entry {i + 1} is empty: each needs at least one choice")
            if len(set(choices)) != len(choices):
                raise ValueError(f"entry {i + 1} repeats a choice (got {choices})")
        boundary = info.data.get("boundary")
        if boundary is not None and len(boundary) != len(value):
            raise ValueError(
                f"{len(value)} lists for {len(boundary)} boundaries {boundary}: one list per "
                "boundary epoch"
            )
        return value

    def value_at(self, epoch: int) -> list[int]:
        """The choices in force at ``epoch`` (1-based)."""
        if epoch < 1:
            raise ValueError(f"epochs are 1-based, got {epoch}")
        return list(self.value[bisect.bisect_right(self.boundary, epoch) - 1])


class ScheduleCfg(Strict):
    """Progressive shrinking of the three elastic dimensions (``None``: always the full list)."""

    kernel_choice: ChoiceSchedule | None = None
    expand_choice: ChoiceSchedule | None = Field(None, description="aw_nas: width_choice")
    depth_choice: ChoiceSchedule | None = None

    @model_validator(mode="before")
    @classmethod
    def _width_choice(cls, data: Any) -> Any:
        """aw_nas's examples name the expand choice ``width_choice``: accept it as is."""
        if isinstance(data, dict) and "width_choice" in data:
            if "expand_choice" in data:
                raise ValueError("width_choice is aw_nas's name for expand_choice: set one")
            data = {("expand_choice" if k == "width_choice" else k): v for k, v in data.items()}
        return data

    def choices_at(self, epoch: int) -> dict[str, list[int] | None]:
        """``set_choices`` keyword arguments for ``epoch`` (1-based): ``ks``, ``e``, ``d``, each
        a list of choices, or ``None`` for a choice without a schedule (the supernet's full
        list)."""
        out: dict[str, list[int] | None] = {}
        for key, (arg, _) in CHOICES.items():
            sched: ChoiceSchedule | None = getattr(self, key)
            out[arg] = None if sched is None else sched.value_at(epoch)
        return out

    def check_space(
        self,
        ks_list: Sequence[int],
        e_list: Sequence[int],
        d_list: Sequence[int],
        *,
        key: str = SCHEDULE_KEY,
    ) -> None:
        """:class:`ConfigError` (one line naming ``<key>.<choice>.value``) when a scheduled
        choice is not in the supernet's list."""
        space = {"ks": ks_list, "e": e_list, "d": d_list}
        for name, (arg, what) in CHOICES.items():
            sched: ChoiceSchedule | None = getattr(self, name)
            if sched is None:
                continue
            allowed = sorted(space[arg])
            for choices in sched.value:
                bad = [c for c in choices if c not in allowed]
                if bad:
                    raise ConfigError(
                        f"{key}.{name}.value: {bad} not among the supernet's {what} {allowed} "
                        f"(got {choices})"
                    )


# --------------------------------------------------------------------------- OFA's default
#: Once-for-All's epoch budget per phase (ImageNet): the full network 180 epochs (the paper; the
#: repository's train_ofa_net.py starts from that network's checkpoint), elastic kernel 120,
#: then elastic depth and elastic expand each 25 epochs for their first, intermediate stage(s)
#: (depth [4, 3], expand [6, 4]) and 120 for their last (depth [4, 3, 2], expand [6, 4, 3]).
OFA_FULL_EPOCHS = 180
OFA_KERNEL_EPOCHS = 120
OFA_STAGE_EPOCHS = 25
OFA_LAST_STAGE_EPOCHS = 120


def default_schedule(
    epochs: int, ks_list: Sequence[int], e_list: Sequence[int], d_list: Sequence[int]
) -> ScheduleCfg:
    """Once-for-All's progressive shrinking laid out over ``epochs``.

    Phases, in order, with the relative budgets of Once-for-All (:data:`OFA_FULL_EPOCHS` ...):

    1. the full network: largest kernel, depth and expand ratio only (180);
    2. elastic kernel: every kernel size (120);
    3. elastic depth, one depth more per stage, largest first: ``[4] -> [4, 3] -> [4, 3, 2]``
       (25 for each stage but the last, 120 for the last);
    4. elastic expand likewise: ``[6] -> [6, 4] -> [6, 4, 3]`` (25 ..., 120).

    A dimension with a single choice has no phase. With the lists ``[3, 5, 7]``, ``[3, 4, 6]``,
    ``[2, 3, 4]`` that is 180 : 120 : 25 : 120 : 25 : 120 of 590, i.e. about 30.5 %, 20.3 %,
    4.2 %, 20.3 %, 4.2 %, 20.3 % of ``epochs`` (rounded to whole epochs, largest remainders
    first). Every phase gets at least one epoch when ``epochs`` allows; with fewer epochs than
    phases the earliest, smallest ones are left out (logged), the last phase (everything
    elastic) always runs. Value lists are written largest first, as aw_nas's.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    ks, es, ds = (sorted(set(x), reverse=True) for x in (ks_list, e_list, d_list))
    if not (ks and es and ds):
        raise ValueError("ks_list, e_list and d_list must each hold at least one choice")
    current = {"ks": ks[:1], "e": es[:1], "d": ds[:1]}
    phases: list[tuple[dict[str, list[int]], int]] = [(dict(current), OFA_FULL_EPOCHS)]
    if len(ks) > 1:
        current["ks"] = ks
        phases.append((dict(current), OFA_KERNEL_EPOCHS))
    for arg, full in (("d", ds), ("e", es)):
        for n in range(2, len(full) + 1):
            current[arg] = full[:n]
            budget = OFA_LAST_STAGE_EPOCHS if n == len(full) else OFA_STAGE_EPOCHS
            phases.append((dict(current), budget))
    lengths = _spread(epochs, [budget for _, budget in phases])
    if 0 in lengths:
        log.warning(
            "default progressive-shrinking schedule: %d epochs for %d phases; phases left out: %s",
            epochs,
            len(phases),
            [i + 1 for i, n in enumerate(lengths) if n == 0],
        )
    starts = [1 + sum(lengths[:i]) for i in range(len(phases))]
    kept = [(p, s) for (p, _), s, n in zip(phases, starts, lengths, strict=True) if n > 0]
    out: dict[str, ChoiceSchedule | None] = {}
    for key, (arg, _) in CHOICES.items():
        full = {"ks": ks, "e": es, "d": ds}[arg]
        boundary: list[int] = []
        value: list[list[int]] = []
        for phase, start in kept:
            if not value or phase[arg] != value[-1]:
                boundary.append(start)
                value.append(phase[arg])
        out[key] = None if value == [full] else ChoiceSchedule(boundary=boundary, value=value)
    return ScheduleCfg(**out)


def _spread(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` whole epochs shared in proportion to ``weights`` (largest remainders first);
    every share at least 1 when ``total`` allows, the last one always."""
    exact = [total * w / sum(weights) for w in weights]
    shares = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: shares[i] - exact[i])
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    needed = range(len(shares)) if total >= len(shares) else [len(shares) - 1]
    for i in needed:
        while shares[i] == 0:
            donor = max(range(len(shares)), key=lambda j: shares[j])
            shares[donor] -= 1
            shares[i] += 1
    return shares


def phase_interval(schedule: ScheduleCfg) -> int | None:
    """The epoch interval between the schedule's boundaries, for the learning-rate restarts'
    ``T_0`` (in epochs): the greatest common divisor of the gaps between consecutive boundaries
    of all choices, so that every phase starts a fresh cosine cycle. Evenly spaced boundaries
    (aw_nas's ``[1, 81, 161, ...]``) give their spacing (80); uneven phases (the default
    schedule's) give a shorter period, with restarts inside the long phases too. ``None`` when
    the schedule never changes (no boundary after epoch 1)."""
    epochs = sorted(
        {
            b
            for key in CHOICES
            if (sched := getattr(schedule, key)) is not None
            for b in sched.boundary
        }
        | {1}
    )
    gaps = [b - a for a, b in zip(epochs, epochs[1:], strict=False)]
    return math.gcd(*gaps) if gaps else None
