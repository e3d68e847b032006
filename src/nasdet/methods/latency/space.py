"""The architecture of a latency search: one variant index per searchable block (ENOT's form).

``LatencyArch((0, 3, 6, 0))`` reads: block 0 keeps the baseline's block (variant 0), block 1 its
variant 3 (a width-pruned copy), block 2 variant 6 (skipped)... A RetinaNet or FCOS space adds
one entry per head tower conv after the blocks (0 keep, 1 skip). Its canonical string is the JSON
list ``[0, 3, 6, 0]``, the form ENOT logs and ``searched_arch`` takes; :meth:`LatencyArch.parse`
also reads the dashed form ``0-3-6-0``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LatencyArch:
    """One variant index per searchable block, in the blocks' execution order."""

    choices: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(not isinstance(c, int) or isinstance(c, bool) or c < 0 for c in self.choices):
            raise ValueError(f"an architecture is a list of non-negative ints, got {self.choices}")

    def __str__(self) -> str:
        return json.dumps(list(self.choices))

    def __len__(self) -> int:
        return len(self.choices)

    def to_list(self) -> list[int]:
        """The JSON list form (``searched_arch``)."""
        return list(self.choices)

    def canonical(self) -> LatencyArch:
        return self

    @classmethod
    def parse(cls, value: Any) -> LatencyArch:
        """A list of ints, its JSON text (``"[0, 3, 6]"``) or the dashed form (``"0-3-6"``);
        ``ValueError`` naming what is wrong."""
        if isinstance(value, LatencyArch):
            return value
        if isinstance(value, str):
            text = value.strip()
            try:
                value = json.loads(text) if text.startswith("[") else text.split("-")
                value = [int(v) for v in value]
            except (ValueError, TypeError):
                raise ValueError(
                    f"architecture {text!r} is not a list of ints like [0, 3, 6] or 0-3-6"
                ) from None
        if not isinstance(value, Sequence) or isinstance(value, str | bytes):
            raise ValueError(f"an architecture is a list of ints, got {value!r}")
        return cls(tuple(value))


@dataclass(frozen=True)
class LatencySpace:
    """How many variants each searchable block has (``num_variants[b]``)."""

    num_variants: tuple[int, ...]

    @property
    def baseline(self) -> LatencyArch:
        """Variant 0 everywhere: the user's baseline."""
        return LatencyArch((0,) * len(self.num_variants))

    def check(self, arch: LatencyArch) -> LatencyArch:
        """``arch`` if it fits this space; ``ValueError`` naming the first bad block."""
        if len(arch) != len(self.num_variants):
            raise ValueError(
                f"architecture {arch} has {len(arch)} entries, the space "
                f"{len(self.num_variants)} searchable blocks"
            )
        for b, (c, n) in enumerate(zip(arch.choices, self.num_variants, strict=True)):
            if c >= n:
                raise ValueError(f"architecture {arch}: block {b} has variants 0..{n - 1}, got {c}")
        return arch

    def parse(self, value: Any) -> LatencyArch:
        return self.check(LatencyArch.parse(value))

    def sample(self, rng: random.Random) -> LatencyArch:
        """A uniformly random architecture (each block's variant drawn independently)."""
        return LatencyArch(tuple(rng.randrange(n) for n in self.num_variants))

    def all_of(self, pick: Iterable[int]) -> LatencyArch:
        return self.check(LatencyArch(tuple(pick)))
