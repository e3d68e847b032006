"""SP-NAS serial search space: the block-sequence genotype and its mutations.

A serial code such as ``111-2111-211111-211`` (ResNet-50) is a sequence of residual blocks after a
ResNet stem (7x7 conv stride 2 + max-pool: stride 4):

- each digit is one block and its stride (``1`` or ``2``);
- ``-`` starts a new stage whose channel width doubles; the output of every stage is a feature
  level, so stage ``i`` (0-based) gives level ``c{i + 2}`` at stride ``2 ** (i + 2)`` pixels;
- the first stage has only stride-1 blocks; every later stage starts with one stride-2 block and
  has no other, so feature strides double level by level (4, 8, 16, 32, 64, ...).

:class:`SerialSpace` bounds the search: block count and stage count (SP-NAS counts the stem as a
stage, so ``max_stages=7`` allows six ``-`` groups). Mutations follow SP-NAS's SpNasS:
:func:`mutate_swap` moves a stage boundary (where the width doubles) by one block,
:func:`mutate_expand` adds a stride-1 block to a stage, :func:`mutate_add_stage` appends a stage.
Each enumerates the valid children and picks one with the ``random.Random`` it is given, so it is
reproducible and never loops; when no valid different child exists it raises ``ValueError``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

BlockType = Literal["bottleneck", "basic", "resnext"]
BLOCK_EXPANSION: dict[str, int] = {"bottleneck": 4, "basic": 1, "resnext": 4}
STEM_STRIDE = 4  # the ResNet stem: conv stride 2 then max-pool stride 2


@dataclass(frozen=True)
class SerialCode:
    """A validated serial genotype; ``str(code)`` gives back the text it was parsed from.

    Attributes:
        stages: the digit string of each stage, e.g. ``("111", "2111", "211111", "211")``.
    """

    stages: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.stages, tuple):  # a list would make the code unhashable
            object.__setattr__(self, "stages", tuple(self.stages))
        _check_structure(self.stages, "-".join(map(str, self.stages)))

    @classmethod
    def parse(cls, text: str | SerialCode) -> SerialCode:
        """Parse and validate a code such as ``"111-2111-211111-211"``; ``ValueError`` if bad.

        Only the structure is checked here; :meth:`SerialSpace.check` adds the search-space
        limits (block and stage counts).
        """
        if isinstance(text, SerialCode):
            return text
        if not isinstance(text, str):
            raise ValueError(
                f"serial code must be a string like '111-2111-211111-211', got "
                f"{type(text).__name__} {text!r} (quote it in YAML)"
            )
        text = text.strip()
        bad = sorted({c for c in text if c not in "12-"})
        if bad:
            raise ValueError(
                f"serial code {text!r}: invalid character(s) {''.join(bad)!r} — only the digits "
                "1 and 2 (block strides) and '-' (stage boundary) are allowed"
            )
        return cls(tuple(text.split("-")))

    def __str__(self) -> str:
        return "-".join(self.stages)

    def to_json(self) -> str:
        """The code as a JSON-ready plain string (the same as ``str(code)``)."""
        return str(self)

    @classmethod
    def from_json(cls, value: str) -> SerialCode:
        """Inverse of :meth:`to_json`."""
        return cls.parse(value)

    @property
    def blocks_per_stage(self) -> tuple[int, ...]:
        """Number of blocks of each stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50."""
        return tuple(len(s) for s in self.stages)

    @property
    def num_blocks(self) -> int:
        """Total number of residual blocks."""
        return sum(self.blocks_per_stage)

    @property
    def num_levels(self) -> int:
        """Number of block stages (``-`` groups), i.e. of output feature levels."""
        return len(self.stages)

    @property
    def num_stages(self) -> int:
        """Stages as SP-NAS counts them: the block stages plus the stem."""
        return self.num_levels + 1

    @property
    def levels(self) -> tuple[int, ...]:
        """Feature level of each stage output: log2 of its stride (2, 3, 4, ...)."""
        return tuple(range(2, 2 + self.num_levels))

    @property
    def strides(self) -> tuple[int, ...]:
        """Output stride of each stage in input pixels: 4, 8, 16, ..."""
        return tuple(STEM_STRIDE * 2**i for i in range(self.num_levels))

    def planes(self, base_width: int = 64) -> tuple[int, ...]:
        """Inner width (torchvision's ``planes``) of each stage: ``base_width * 2**i``."""
        return tuple(base_width * 2**i for i in range(self.num_levels))

    def widths(self, block: BlockType = "bottleneck", base_width: int = 64) -> tuple[int, ...]:
        """Output channels of each stage: ``planes * expansion`` (4 for bottleneck / resnext)."""
        return tuple(p * BLOCK_EXPANSION[block] for p in self.planes(base_width))


def _check_structure(stages: tuple[str, ...], text: str) -> None:
    if not stages or not all(isinstance(s, str) for s in stages):
        raise ValueError(f"serial code {text!r}: needs at least one stage of blocks")
    for i, stage in enumerate(stages):
        if not stage:
            raise ValueError(
                f"serial code {text!r}: stage {i + 1} is empty — '-' must separate non-empty "
                "groups of blocks"
            )
        if set(stage) - {"1", "2"}:
            raise ValueError(f"serial code {text!r}: stage {i + 1} has characters other than 1/2")
        if i == 0 and "2" in stage:
            raise ValueError(
                f"serial code {text!r}: the first stage must have only stride-1 blocks ('1'); the "
                "stem already downsamples by 4"
            )
        if i > 0 and (stage[0] != "2" or "2" in stage[1:]):
            raise ValueError(
                f"serial code {text!r}: stage {i + 1} ({stage!r}) must start with one stride-2 "
                "block ('2') and have no other, so feature strides double level by level"
            )


@dataclass(frozen=True)
class SerialSpace:
    """Limits of the serial search space.

    Attributes:
        block: residual block type of every block.
        min_blocks, max_blocks: total number of blocks allowed (SP-NAS: 8 to 60).
        min_stages, max_stages: stages allowed, *counting the stem* (SP-NAS: 5 to 7, i.e. 4 to 6
            ``-`` groups). Vega's ``max_stages: 6`` counts ``-`` groups: it is ``max_stages=7``
            here.
        base_width: inner width of the first stage (doubles per stage).
        stem: the stem before the first stage (only ResNet's 7x7 conv + max-pool).
    """

    block: BlockType = "bottleneck"
    min_blocks: int = 8
    max_blocks: int = 60
    min_stages: int = 5
    max_stages: int = 7
    base_width: int = 64
    stem: Literal["resnet"] = "resnet"

    def __post_init__(self) -> None:
        if self.block not in BLOCK_EXPANSION:
            raise ValueError(f"block must be one of {sorted(BLOCK_EXPANSION)}, got {self.block!r}")
        if self.stem != "resnet":
            raise ValueError(f"stem must be 'resnet', got {self.stem!r}")
        if not 2 <= self.min_stages <= self.max_stages:
            raise ValueError(
                f"need 2 <= min_stages <= max_stages (stem included), got "
                f"{self.min_stages}..{self.max_stages}"
            )
        if not self.min_levels <= self.min_blocks <= self.max_blocks:
            raise ValueError(
                f"need {self.min_levels} <= min_blocks <= max_blocks (at least one block per "
                f"stage), got {self.min_blocks}..{self.max_blocks}"
            )
        if self.base_width < 1:
            raise ValueError(f"base_width must be positive, got {self.base_width}")

    @property
    def min_levels(self) -> int:
        """Fewest ``-`` groups (block stages): ``min_stages - 1``."""
        return self.min_stages - 1

    @property
    def max_levels(self) -> int:
        """Most ``-`` groups (block stages): ``max_stages - 1``."""
        return self.max_stages - 1

    def problem(self, code: SerialCode) -> str | None:
        """Why ``code`` is outside this space (one line), or None when it is inside."""
        if not self.min_blocks <= code.num_blocks <= self.max_blocks:
            return (
                f"serial code '{code}' has {code.num_blocks} blocks; the space allows "
                f"{self.min_blocks} to {self.max_blocks}"
            )
        if not self.min_stages <= code.num_stages <= self.max_stages:
            return (
                f"serial code '{code}' has {code.num_stages} stages (stem included); the space "
                f"allows {self.min_stages} to {self.max_stages}"
            )
        return None

    def check(self, code: str | SerialCode) -> SerialCode:
        """Parse ``code`` and check the limits; ``ValueError`` (one line) when outside."""
        parsed = SerialCode.parse(code)
        problem = self.problem(parsed)
        if problem:
            raise ValueError(problem)
        return parsed

    def contains(self, code: SerialCode) -> bool:
        """Whether ``code`` is within the limits."""
        return self.problem(code) is None


DEFAULT_SPACE = SerialSpace()


def _code(counts: list[int]) -> SerialCode:
    """The code with ``counts[i]`` blocks in stage ``i`` (strides are implied by the rules)."""
    return SerialCode(tuple(("1" if i == 0 else "2") + "1" * (n - 1) for i, n in enumerate(counts)))


def swap_children(code: SerialCode, space: SerialSpace = DEFAULT_SPACE) -> list[SerialCode]:
    """Every code with one stage boundary moved by one block (block count unchanged)."""
    counts, out = list(code.blocks_per_stage), []
    for i in range(len(counts) - 1):
        for give, take in ((i, i + 1), (i + 1, i)):  # `give` loses a stride-1 block to `take`
            if counts[give] >= 2:
                new = list(counts)
                new[give] -= 1
                new[take] += 1
                out.append(_code(new))
    return [c for c in out if space.contains(c)]


def expand_children(code: SerialCode, space: SerialSpace = DEFAULT_SPACE) -> list[SerialCode]:
    """Every code with one more stride-1 block in one stage."""
    counts, out = list(code.blocks_per_stage), []
    for i in range(len(counts)):
        new = list(counts)
        new[i] += 1
        out.append(_code(new))
    return [c for c in out if space.contains(c)]


def add_stage_children(code: SerialCode, space: SerialSpace = DEFAULT_SPACE) -> list[SerialCode]:
    """The codes with a stage ``-2`` or ``-21`` appended (a new, coarser feature level)."""
    out = [SerialCode((*code.stages, tail)) for tail in ("2", "21")]
    return [c for c in out if space.contains(c)]


def _pick(
    kind: str, children: list[SerialCode], code: SerialCode, rng: random.Random
) -> SerialCode:
    if not children:
        raise ValueError(
            f"serial code '{code}': no valid {kind} mutation within the search space limits"
        )
    return rng.choice(children)


def mutate_swap(
    code: SerialCode, rng: random.Random, space: SerialSpace = DEFAULT_SPACE
) -> SerialCode:
    """Move one stage boundary by one block: a stage gives its last stride-1 block to a neighbour.

    Changes where the width doubles; block and stage counts stay. ``ValueError`` if impossible.
    """
    return _pick("swap", swap_children(code, space), code, rng)


def mutate_expand(
    code: SerialCode, rng: random.Random, space: SerialSpace = DEFAULT_SPACE
) -> SerialCode:
    """Insert a stride-1 block into one stage (all stride-1 blocks of a stage are alike, so the
    code cannot tell where: the new block is the stage's last). ``ValueError`` at ``max_blocks``."""
    return _pick("expand", expand_children(code, space), code, rng)


def mutate_add_stage(
    code: SerialCode, rng: random.Random, space: SerialSpace = DEFAULT_SPACE
) -> SerialCode:
    """Append a stage ``-2`` or ``-21``. ``ValueError`` at ``max_stages`` or ``max_blocks``."""
    return _pick("add-stage", add_stage_children(code, space), code, rng)


_MUTATIONS: dict[str, Callable[[SerialCode, SerialSpace], list[SerialCode]]] = {
    "add_stage": add_stage_children,
    "expand": expand_children,
    "swap": swap_children,
}


def mutate(
    code: str | SerialCode,
    rng: random.Random,
    *,
    num_mutate: int = 3,
    expend_ratio: float = 0.3,
    add_stage_ratio: float = 0.05,
    space: SerialSpace = DEFAULT_SPACE,
    max_tries: int = 100,
) -> SerialCode:
    """A child of ``code`` after 1 to ``num_mutate`` random operations (SP-NAS's SpNasS).

    Each operation is an add-stage with probability ``add_stage_ratio``, otherwise an expand with
    probability ``expend_ratio`` (the name is Vega's), otherwise a swap; a kind with no valid child
    falls back to the others (swap, expand, add-stage). The child is valid in ``space`` and differs
    from ``code``; after ``max_tries`` attempts that all came back to ``code`` (or when no
    operation applies) ``ValueError`` is raised.
    """
    if num_mutate < 1:
        raise ValueError(f"num_mutate must be >= 1, got {num_mutate}")
    for name, p in (("expend_ratio", expend_ratio), ("add_stage_ratio", add_stage_ratio)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    parent = SerialCode.parse(code)
    for attempt in range(1, max_tries + 1):
        child, ops = parent, []
        for _ in range(rng.randint(1, num_mutate)):
            if rng.random() < add_stage_ratio:
                wanted = "add_stage"
            else:
                wanted = "expand" if rng.random() < expend_ratio else "swap"
            order = [wanted] + [k for k in ("swap", "expand", "add_stage") if k != wanted]
            for kind in order:
                options = _MUTATIONS[kind](child, space)
                if options:
                    child = rng.choice(options)
                    ops.append(kind)
                    break
            else:
                raise ValueError(
                    f"serial code '{child}': no swap, expand or add-stage keeps it within the "
                    "search space limits"
                )
        if child != parent:
            log.debug("mutate %s -> %s (%s, attempt %d)", parent, child, " > ".join(ops), attempt)
            return child
    raise ValueError(
        f"serial code '{parent}': {max_tries} mutation attempts all gave the parent back"
    )


def sample_code(rng: random.Random, space: SerialSpace = DEFAULT_SPACE) -> SerialCode:
    """A uniformly random stage count and block count within ``space``, blocks split at random
    cut points among the stages (each stage gets at least one)."""
    levels = rng.randint(space.min_levels, space.max_levels)
    blocks = rng.randint(max(space.min_blocks, levels), space.max_blocks)
    cuts = sorted(rng.sample(range(1, blocks), levels - 1))
    bounds = [0, *cuts, blocks]
    return _code([b - a for a, b in zip(bounds, bounds[1:], strict=False)])
