"""SP-NAS parallel search space: how many extra blocks run beside each level of a serial net.

After the serial phase, SP-NAS divides the serial network into L sub-networks, one per feature
level, and searches how many parallel sub-networks (0..K) to add at each. The genotype
:class:`ParallelCode` is one count per level, written ``0-1-2-3`` (canonical) or as the JSON list
``[0, 1, 2, 3]`` (Vega's ``network.neck.code``); ``code[l]`` extra residual blocks run beside
level ``l`` (:class:`nasdet.methods.spnas.parallel_fpn.ParallelFPN` builds them).

Sampling follows SP-NAS's SpNasP policy, random sampling under a resource constraint: starting
from no extra block, :func:`sample_parallel_code` adds one block at a time at a level drawn with
probability inversely proportional to the FLOPs of one block there (:func:`parallel_weights`),
until a random number of blocks is reached or no block fits the FLOPs budget. (In a ResNet a
block costs about the same at every level, width doubling as area quarters, so the weights are
near uniform; they matter for nets whose levels differ in cost.)
Every function takes the ``random.Random`` it draws from and runs a bounded number of steps.

FLOPs here are whatever unit the caller's numbers are in (nasdet's cost model: 2 per
multiply-accumulate); only ratios and sums of them are taken.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_MAX_BLOCKS = 3  # K of SP-NAS's config range [[0, 1, 2, 3]]


@dataclass(frozen=True)
class ParallelCode:
    """Extra parallel blocks per feature level; ``str(code)`` is the canonical ``"0-1-2-3"``.

    Attributes:
        blocks: one non-negative count per level of the serial net's returned levels, in order
            (finest first).
    """

    blocks: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.blocks, tuple):  # a list would make the code unhashable
            object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise ValueError("parallel code needs one block count per feature level, got none")
        for i, n in enumerate(self.blocks):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(
                    f"parallel code {list(self.blocks)}: level {i} has {n!r}; each entry must be "
                    "a non-negative int (number of extra blocks at that level)"
                )

    @classmethod
    def parse(
        cls,
        value: str | Sequence[int] | ParallelCode,
        *,
        num_levels: int | None = None,
        max_blocks_per_level: int | None = None,
    ) -> ParallelCode:
        """Parse ``"0-1-2-3"``, ``"[0, 1, 2, 3]"`` or a list / tuple of ints; ``ValueError`` if bad.

        With ``num_levels`` / ``max_blocks_per_level`` the code is also checked against them
        (:meth:`check`).
        """
        if isinstance(value, ParallelCode):
            code = value
        elif isinstance(value, str):
            code = cls(_parse_text(value))
        elif isinstance(value, Sequence):
            code = cls(tuple(value))
        else:
            raise ValueError(
                f"parallel code must be a string like '0-1-2-3' or a list of ints, got "
                f"{type(value).__name__} {value!r}"
            )
        return code.check(num_levels=num_levels, max_blocks_per_level=max_blocks_per_level)

    def check(
        self, *, num_levels: int | None = None, max_blocks_per_level: int | None = None
    ) -> ParallelCode:
        """Return ``self`` after checking its length and counts; ``ValueError`` (one line) if not.

        Args:
            num_levels: L, the number of feature levels of the serial net (None: not checked).
            max_blocks_per_level: K, the most extra blocks at one level (None: not checked).
        """
        if num_levels is not None and len(self.blocks) != num_levels:
            raise ValueError(
                f"parallel code '{self}' has {len(self.blocks)} entries; the serial net has "
                f"{num_levels} feature levels, give one block count per level"
            )
        if max_blocks_per_level is not None:
            bad = [i for i, n in enumerate(self.blocks) if n > max_blocks_per_level]
            if bad:
                raise ValueError(
                    f"parallel code '{self}': level {bad[0]} has {self.blocks[bad[0]]} blocks; "
                    f"each level allows 0..{max_blocks_per_level} (max_blocks_per_level)"
                )
        return self

    def __str__(self) -> str:
        return "-".join(str(n) for n in self.blocks)

    def to_json(self) -> str:
        """The code as a JSON-ready string (the same as ``str(code)``)."""
        return str(self)

    @classmethod
    def from_json(cls, value: str | Sequence[int]) -> ParallelCode:
        """Inverse of :meth:`to_json` (also takes the list form)."""
        return cls.parse(value)

    @classmethod
    def zeros(cls, num_levels: int) -> ParallelCode:
        """The code without extra blocks: the plain serial net."""
        return cls((0,) * num_levels)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, level: int) -> int:
        return self.blocks[level]

    @property
    def num_levels(self) -> int:
        """L, the number of feature levels the code covers."""
        return len(self.blocks)

    @property
    def total_blocks(self) -> int:
        """Extra blocks over all levels."""
        return sum(self.blocks)

    def with_level(self, level: int, count: int) -> ParallelCode:
        """A copy with ``count`` blocks at position ``level``."""
        blocks = list(self.blocks)
        blocks[level] = count
        return ParallelCode(tuple(blocks))

    def flops(self, levels_flops: Sequence[float], base_flops: float = 0.0) -> float:
        """``base_flops + sum(code[l] * levels_flops[l])``: cost of the net with these blocks."""
        _check_levels_flops(levels_flops, self.num_levels)
        return base_flops + sum(n * f for n, f in zip(self.blocks, levels_flops, strict=True))


def _parse_text(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, list) or not all(type(v) is int for v in value):
            raise ValueError(
                f"parallel code {text!r}: a list form must be a JSON list of ints like [0, 1, 2, 3]"
            )
        return tuple(value)
    parts = text.split("-")
    if not text or not all(p.isdigit() and p.isascii() for p in parts):
        raise ValueError(
            f"parallel code {text!r}: expected non-negative block counts separated by '-' "
            "(e.g. '0-1-2-3') or a JSON list ([0, 1, 2, 3])"
        )
    return tuple(int(p) for p in parts)


def _check_levels_flops(levels_flops: Sequence[float], num_levels: int | None = None) -> None:
    if not levels_flops:
        raise ValueError("levels_flops needs one FLOP count per feature level, got none")
    if num_levels is not None and len(levels_flops) != num_levels:
        raise ValueError(
            f"levels_flops has {len(levels_flops)} entries, the code has {num_levels} levels"
        )
    if any(not f > 0 for f in levels_flops):
        raise ValueError(
            f"levels_flops must be positive FLOPs of one extra block per level, got "
            f"{list(levels_flops)}"
        )


def parallel_weights(levels_flops: Sequence[float]) -> list[float]:
    """Probability of adding the next block at each level: ``(1 / f_l) / sum_k(1 / f_k)``.

    Args:
        levels_flops: FLOPs of one extra block at each level (positive; any unit).

    Returns:
        One probability per level, summing to 1 (SP-NAS: inversely proportional to the FLOPs of
        the sub-network to be added).
    """
    _check_levels_flops(levels_flops)
    inverse = [1.0 / f for f in levels_flops]
    total = sum(inverse)
    return [w / total for w in inverse]


def _check_budget(max_blocks_per_level: int, max_flops: float | None, base_flops: float) -> None:
    if max_blocks_per_level < 0:
        raise ValueError(f"max_blocks_per_level must be >= 0, got {max_blocks_per_level}")
    if max_flops is not None and base_flops > max_flops:
        raise ValueError(
            f"infeasible FLOPs constraint: the serial net alone costs {base_flops:.4g} FLOPs, "
            f"more than max_flops {max_flops:.4g}; raise max_flops or start from a smaller "
            "serial net"
        )


def sample_parallel_code(
    rng: random.Random,
    levels_flops: Sequence[float],
    *,
    max_blocks_per_level: int = DEFAULT_MAX_BLOCKS,
    max_flops: float | None = None,
    base_flops: float = 0.0,
    num_additions: int | None = None,
) -> ParallelCode:
    """SpNasP random sampling: add blocks one by one, cheap levels more often, within a budget.

    Starting from no extra block, each step adds one block at a level drawn with probability
    ``∝ 1 / levels_flops[l]`` among the levels that are not full (``max_blocks_per_level``) and
    whose block still fits the budget (``base_flops + added FLOPs <= max_flops``). Sampling stops
    after ``num_additions`` steps (default: drawn uniformly in ``1..L * K``) or earlier when no
    block fits; at most ``L * K`` steps run.

    Args:
        rng: the random source (reproducible runs pass a seeded ``random.Random``).
        levels_flops: FLOPs of one extra block at each level, one per level (see
            :func:`~nasdet.methods.spnas.parallel_fpn.levels_branch_flops`); its length is L.
        max_blocks_per_level: K, the most extra blocks at one level.
        max_flops: FLOPs budget of the whole net (same unit as ``levels_flops``); None: no limit.
        base_flops: FLOPs of the net without extra blocks (the serial detector).
        num_additions: fixed number of steps instead of a random one.

    Returns:
        A :class:`ParallelCode` of length L whose cost is within ``max_flops``. ``ValueError``
        when even the code without extra blocks exceeds ``max_flops`` (infeasible constraint).
    """
    _check_levels_flops(levels_flops)
    _check_budget(max_blocks_per_level, max_flops, base_flops)
    num_levels = len(levels_flops)
    capacity = num_levels * max_blocks_per_level
    if num_additions is None:
        num_additions = rng.randint(1, capacity) if capacity else 0
    elif num_additions < 0:
        raise ValueError(f"num_additions must be >= 0, got {num_additions}")
    counts, spent = [0] * num_levels, float(base_flops)
    for _ in range(min(num_additions, capacity)):
        options = [
            lv
            for lv in range(num_levels)
            if counts[lv] < max_blocks_per_level
            and (max_flops is None or spent + levels_flops[lv] <= max_flops)
        ]
        if not options:
            break
        weights = parallel_weights([levels_flops[lv] for lv in options])
        level = rng.choices(options, weights=weights)[0]
        counts[level] += 1
        spent += levels_flops[level]
    code = ParallelCode(tuple(counts))
    log.debug("sampled parallel code %s (%.4g FLOPs)", code, spent)
    return code


def mutate_parallel(
    code: str | Sequence[int] | ParallelCode,
    rng: random.Random,
    *,
    max_blocks_per_level: int = DEFAULT_MAX_BLOCKS,
    levels_flops: Sequence[float] | None = None,
    max_flops: float | None = None,
    base_flops: float = 0.0,
) -> ParallelCode:
    """A child of ``code`` with one level's block count changed by +1 or -1.

    The change is drawn uniformly among the children that stay within ``0..max_blocks_per_level``
    and, when ``max_flops`` is given (then ``levels_flops`` is required, same unit), within the
    FLOPs budget ``base_flops + sum(code[l] * levels_flops[l]) <= max_flops``. The child always
    differs from the parent; ``ValueError`` when no child is valid.
    """
    parent = ParallelCode.parse(code, max_blocks_per_level=max_blocks_per_level)
    _check_budget(max_blocks_per_level, max_flops, base_flops)
    if max_flops is not None and levels_flops is None:
        raise ValueError("mutate_parallel: max_flops needs levels_flops (FLOPs of one block/level)")
    if levels_flops is not None:
        _check_levels_flops(levels_flops, parent.num_levels)
    children = []
    for level, count in enumerate(parent.blocks):
        for new in (count - 1, count + 1):
            if not 0 <= new <= max_blocks_per_level:
                continue
            child = parent.with_level(level, new)
            if max_flops is not None and child.flops(levels_flops, base_flops) > max_flops:
                continue
            children.append(child)
    if not children:
        raise ValueError(
            f"parallel code '{parent}': no +-1 change keeps it within 0..{max_blocks_per_level} "
            "blocks per level and the FLOPs budget"
        )
    child = rng.choice(children)
    log.debug("mutate parallel %s -> %s", parent, child)
    return child
