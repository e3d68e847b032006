"""DetNAS / SPOS ShuffleNetV2 search space: the per-block choice genotype and its sampling.

The supernet has ``sum(depths)`` searchable blocks (DetNAS / SPOS: ``4-4-8-4`` = 20) in four stages
of widths ``64, 160, 320, 640`` after a 16-channel stem. Every block picks one of four ShuffleNetV2
units (the names are MMRazor's):

===================  ======  ==========================================
choice               symbol  unit
===================  ======  ==========================================
``shuffle_3x3``      ``3``   ShuffleNetV2 unit, 3x3 depthwise conv
``shuffle_5x5``      ``5``   ShuffleNetV2 unit, 5x5 depthwise conv
``shuffle_7x7``      ``7``   ShuffleNetV2 unit, 7x7 depthwise conv
``shuffle_xception`` ``x``   Xception-like unit, three 3x3 depthwise convs
===================  ======  ==========================================

A code is written one symbol per block, stages joined by ``-``: ``"3573-5x77-33x3x357-7x33"``.
It also converts to and from MMRazor's ``mutable_cfg`` dict (``{"backbone.layers.0.0":
{"chosen": "shuffle_3x3"}, ...}``) and its YAML. :class:`ShuffleNetSpace` samples, mutates and
crosses codes over with the ``random.Random`` it is given (SPOS's evolutionary search).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

CHOICES = ("shuffle_3x3", "shuffle_5x5", "shuffle_7x7", "shuffle_xception")  # MMRazor names
SYMBOLS = ("3", "5", "7", "x")  # one character per choice in the str form
STAGE_DEPTHS = (4, 4, 8, 4)  # 20 searchable blocks
STAGE_CHANNELS = (64, 160, 320, 640)  # DetNAS/SPOS widths at width_mult 1.0
STEM_CHANNELS = 16

_CFG_KEY = re.compile(r"^(?:backbone\.layers\.(\d+)\.(\d+)|stage_(\d+)_block_(\d+))$")


def _check_depths(depths: tuple[int, ...], what: str) -> None:
    if not depths or not all(isinstance(d, int) and not isinstance(d, bool) for d in depths):
        raise ValueError(f"{what}: depths must be a non-empty tuple of ints, got {depths!r}")
    if any(d < 1 for d in depths):
        raise ValueError(f"{what}: every stage needs at least one block, got depths {depths}")


@dataclass(frozen=True)
class ShuffleNetCode:
    """A validated DetNAS genotype; ``str(code)`` gives back the text it was parsed from.

    Attributes:
        choices: index into :data:`CHOICES` of every block, stage after stage.
        depths: number of blocks in each stage (``sum(depths) == len(choices)``).
    """

    choices: tuple[int, ...]
    depths: tuple[int, ...] = STAGE_DEPTHS

    def __post_init__(self) -> None:
        for name in ("choices", "depths"):  # a list would make the code unhashable
            if not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_depths(self.depths, "ShuffleNet code")
        if len(self.choices) != sum(self.depths):
            raise ValueError(
                f"ShuffleNet code has {len(self.choices)} choices but depths {self.depths} need "
                f"{sum(self.depths)} (one per block)"
            )
        for i, c in enumerate(self.choices):
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(CHOICES):
                raise ValueError(
                    f"ShuffleNet code: choice {c!r} of block {i} is not an index in "
                    f"0..{len(CHOICES) - 1} ({', '.join(CHOICES)})"
                )

    @classmethod
    def parse(cls, text: str | ShuffleNetCode) -> ShuffleNetCode:
        """Parse a code such as ``"3573-5x77-33x3x357-7x33"``; ``ValueError`` if malformed.

        Each ``-`` group is one stage, so the depths come from the group lengths.
        """
        if isinstance(text, ShuffleNetCode):
            return text
        if not isinstance(text, str):
            raise ValueError(
                f"ShuffleNet code must be a string like '3573-5x77-33x3x357-7x33', got "
                f"{type(text).__name__} {text!r} (quote it in YAML)"
            )
        text = text.strip()
        groups = text.split("-")
        choices: list[int] = []
        pos = 0
        for s, group in enumerate(groups):
            if not group:
                raise ValueError(
                    f"ShuffleNet code {text!r}: stage {s + 1} is empty — '-' must separate "
                    "non-empty groups of block symbols"
                )
            for b, ch in enumerate(group):
                if ch not in SYMBOLS:
                    raise ValueError(
                        f"ShuffleNet code {text!r}: invalid character {ch!r} at position "
                        f"{pos + b + 1} (stage {s + 1}, block {b + 1}); allowed symbols are "
                        f"{', '.join(repr(x) for x in SYMBOLS)} for {', '.join(CHOICES)}, and '-' "
                        "between stages"
                    )
                choices.append(SYMBOLS.index(ch))
            pos += len(group) + 1
        return cls(tuple(choices), tuple(len(g) for g in groups))

    def __str__(self) -> str:
        return "-".join("".join(SYMBOLS[c] for c in stage) for stage in self.stages)

    @property
    def stages(self) -> tuple[tuple[int, ...], ...]:
        """The choices split per stage, e.g. ``((0, 1, 2, 0), (1, 3, 2, 2), ...)``."""
        out, start = [], 0
        for d in self.depths:
            out.append(self.choices[start : start + d])
            start += d
        return tuple(out)

    @property
    def num_blocks(self) -> int:
        """Number of searchable blocks."""
        return len(self.choices)

    @property
    def choice_names(self) -> tuple[str, ...]:
        """MMRazor name of each block's choice, in block order."""
        return tuple(CHOICES[c] for c in self.choices)

    def to_mutable_cfg(self) -> dict[str, dict[str, str]]:
        """MMRazor's ``{"backbone.layers.<stage>.<block>": {"chosen": name}}`` (0-based)."""
        return {
            f"backbone.layers.{i}.{j}": {"chosen": CHOICES[c]}
            for i, stage in enumerate(self.stages)
            for j, c in enumerate(stage)
        }

    @classmethod
    def from_mutable_cfg(
        cls, cfg: Mapping[str, Any], depths: Sequence[int] | None = None
    ) -> ShuffleNetCode:
        """Inverse of :meth:`to_mutable_cfg`.

        Keys may be in any order; MMRazor 0.x keys (``stage_0_block_0``) and ``chosen`` given as a
        one-item list are accepted too. ``depths`` (when given) is checked; otherwise it is read
        from the keys. ``ValueError`` for unknown keys or choice names, or missing blocks.
        """
        if not isinstance(cfg, Mapping) or not cfg:
            raise ValueError(f"mutable_cfg must be a non-empty mapping, got {cfg!r}")
        found: dict[tuple[int, int], int] = {}
        for key, value in cfg.items():
            m = _CFG_KEY.match(str(key))
            if not m:
                raise ValueError(
                    f"mutable_cfg key {key!r} is not a ShuffleNet block; expected "
                    "'backbone.layers.<stage>.<block>'"
                )
            nums = [int(g) for g in m.groups() if g is not None]
            chosen = value.get("chosen") if isinstance(value, Mapping) else None
            if isinstance(chosen, list) and len(chosen) == 1:
                chosen = chosen[0]
            if chosen not in CHOICES:
                raise ValueError(
                    f"mutable_cfg[{key!r}]: chosen {chosen!r} is not one of {', '.join(CHOICES)}"
                )
            found[(nums[0], nums[1])] = CHOICES.index(chosen)
        if depths is None:
            num_stages = max(s for s, _ in found) + 1
            depths = [
                max((b for s, b in found if s == i), default=-1) + 1 for i in range(num_stages)
            ]
        depths = tuple(depths)
        _check_depths(depths, "mutable_cfg")
        missing = [
            f"backbone.layers.{i}.{j}"
            for i, d in enumerate(depths)
            for j in range(d)
            if (i, j) not in found
        ]
        if missing:
            raise ValueError(
                f"mutable_cfg misses {len(missing)} block(s) of depths {depths}: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        extra = sorted(k for k in found if k[0] >= len(depths) or k[1] >= depths[k[0]])
        if extra:
            raise ValueError(f"mutable_cfg has blocks outside depths {depths}: {extra}")
        return cls(tuple(found[(i, j)] for i, d in enumerate(depths) for j in range(d)), depths)

    def to_yaml(self) -> str:
        """:meth:`to_mutable_cfg` as YAML text (``yaml.safe_dump``, block order kept)."""
        return yaml.safe_dump(self.to_mutable_cfg(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, depths: Sequence[int] | None = None) -> ShuffleNetCode:
        """Inverse of :meth:`to_yaml` (see :meth:`from_mutable_cfg`)."""
        return cls.from_mutable_cfg(yaml.safe_load(text), depths)


def handcrafted(depths: Sequence[int] = STAGE_DEPTHS) -> ShuffleNetCode:
    """All ``shuffle_3x3``: the hand-crafted ShuffleNetV2 of the same widths and depths."""
    depths = tuple(depths)
    return ShuffleNetCode((0,) * sum(depths), depths)


@dataclass(frozen=True)
class ShuffleNetSpace:
    """The DetNAS search space: ``num_choices`` candidate units for each of ``sum(depths)`` blocks.

    Attributes:
        depths: blocks per stage.
        num_choices: the first ``num_choices`` entries of :data:`CHOICES` are allowed (2 to 4).
    """

    depths: tuple[int, ...] = STAGE_DEPTHS
    num_choices: int = len(CHOICES)

    def __post_init__(self) -> None:
        if not isinstance(self.depths, tuple):
            object.__setattr__(self, "depths", tuple(self.depths))
        _check_depths(self.depths, "ShuffleNetSpace")
        if not 2 <= self.num_choices <= len(CHOICES):
            raise ValueError(
                f"ShuffleNetSpace: num_choices must be in 2..{len(CHOICES)}, got {self.num_choices}"
            )

    @property
    def num_blocks(self) -> int:
        """Number of searchable blocks."""
        return sum(self.depths)

    @property
    def size(self) -> int:
        """Number of distinct codes: ``num_choices ** num_blocks`` (4**20 ~ 1.1e12 for DetNAS)."""
        return self.num_choices**self.num_blocks

    def problem(self, code: ShuffleNetCode) -> str | None:
        """Why ``code`` is outside this space (one line), or None when it is inside."""
        if code.depths != self.depths:
            return f"ShuffleNet code '{code}' has depths {code.depths}; the space has {self.depths}"
        bad = sorted({c for c in code.choices if c >= self.num_choices})
        if bad:
            return (
                f"ShuffleNet code '{code}' uses {', '.join(CHOICES[c] for c in bad)}; the space "
                f"allows only {', '.join(CHOICES[: self.num_choices])}"
            )
        return None

    def contains(self, code: ShuffleNetCode) -> bool:
        """Whether ``code`` is in this space."""
        return self.problem(code) is None

    def parse(self, text: str | ShuffleNetCode) -> ShuffleNetCode:
        """Parse ``text`` and check it belongs to this space; ``ValueError`` otherwise."""
        code = ShuffleNetCode.parse(text)
        problem = self.problem(code)
        if problem:
            raise ValueError(problem)
        return code

    def sample(self, rng: random.Random) -> ShuffleNetCode:
        """A code with every block's choice drawn uniformly and independently."""
        return ShuffleNetCode(
            tuple(rng.randrange(self.num_choices) for _ in range(self.num_blocks)), self.depths
        )

    def _other(self, choice: int, rng: random.Random) -> int:
        new = rng.randrange(self.num_choices - 1)
        return new + 1 if new >= choice else new

    def mutate(self, code: ShuffleNetCode, rng: random.Random, prob: float = 0.1) -> ShuffleNetCode:
        """A child that always differs from ``code`` (SPOS's mutation).

        Each gene is resampled to a *different* choice with probability ``prob``; when none
        changed, one gene picked uniformly is changed.
        """
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mutation prob must be in [0, 1], got {prob}")
        self.parse(code)
        genes = list(code.choices)
        changed = False
        for i, c in enumerate(genes):
            if rng.random() < prob:
                genes[i], changed = self._other(c, rng), True
        if not changed:
            i = rng.randrange(len(genes))
            genes[i] = self._other(genes[i], rng)
        return ShuffleNetCode(tuple(genes), self.depths)

    def crossover(
        self, a: ShuffleNetCode, b: ShuffleNetCode, rng: random.Random, prob: float = 0.5
    ) -> ShuffleNetCode:
        """Uniform crossover: each gene from ``b`` with probability ``prob``, else from ``a``.

        The child may equal a parent.
        """
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"crossover prob must be in [0, 1], got {prob}")
        self.parse(a)
        self.parse(b)
        genes = tuple(
            gb if rng.random() < prob else ga for ga, gb in zip(a.choices, b.choices, strict=True)
        )
        return ShuffleNetCode(genes, self.depths)
