"""Once-for-All search space: the kernel size / expand ratio / depth genotype and its sampling.

The elastic network has ``n_stages`` stages (OFA's MobileNetV3: 5) of up to ``max_depth`` blocks
(4). A subnet picks a kernel size ``ks`` and an expand ratio ``e`` for every one of the
``n_stages * max_depth`` blocks and a depth ``d`` per stage; stage ``s`` runs its first ``d[s]``
blocks. The genotype is OFA's own dict ``{"ks": [20 ints], "e": [20 ints], "d": [5 ints]}``
(what ``OFAMobileNetV3.sample_active_subnet`` returns), written compactly as::

    k7735-5537-3333-7755-3357:e6643-4466-3346-6644-3463:d43422

``k`` then one digit per block (stages split by ``-``), ``:e`` the same for expand ratios, ``:d``
one digit per stage. Blocks past a stage's depth do not run; their entries are kept as given, or
``0`` in the :meth:`~OFAGenotype.canonical` form that names each subnet once.
:class:`OFASpace` samples, mutates and crosses genotypes over with the ``random.Random`` it is
given, as OFA's evolution search does, and one-hot encodes them for an accuracy predictor.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

KS_CHOICES = (3, 5, 7)
E_CHOICES = (3, 4, 6)
D_CHOICES = (2, 3, 4)
N_STAGES = 5
MAX_DEPTH = 4
INACTIVE = 0  # ks / e of a block past its stage's depth, in the canonical form

_COMPACT = re.compile(r"^k([0-9-]+):e([0-9-]+):d([0-9]+)$")
_IGNORED_KEYS = ("image_size", "r", "wid")  # resolution / width keys of OFA's arch dicts
_EXAMPLE = "k7777-5555-3333-7777-5555:e6666-4444-3333-6666-4444:d44322"


def _int(value: Any, where: str) -> int:
    """``value`` as an int (an integral float such as ``6.0`` too); ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"OFA genotype: {where} = {value!r} is not an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"OFA genotype: {where} = {value!r} is not an integer")
    return int(value)


@dataclass(frozen=True)
class OFAGenotype:
    """One OFA subnet. ``str(g)`` is the compact form and :meth:`parse` reads it back.

    Attributes:
        ks: depthwise kernel size of every block, stage after stage (odd, 1..9; 0 inactive).
        e: expand ratio of every block (1..9; 0 inactive).
        d: blocks run in each stage (1..max_depth).

    ``len(ks) == len(e) == len(d) * max_depth``: the shape comes from the tuple lengths.
    """

    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("ks", "e", "d"):
            value = getattr(self, name)
            if isinstance(value, str | bytes) or not isinstance(value, Sequence):
                raise ValueError(f"OFA genotype: {name} must be a list of ints, got {value!r}")
            ints = tuple(_int(v, f"{name}[{i}]") for i, v in enumerate(value))
            object.__setattr__(self, name, ints)
        if not self.d:
            raise ValueError("OFA genotype: d is empty (one depth per stage)")
        if len(self.e) != len(self.ks):
            raise ValueError(
                f"OFA genotype: e has {len(self.e)} entries, ks has {len(self.ks)} (one per block)"
            )
        if not self.ks or len(self.ks) % len(self.d):
            raise ValueError(
                f"OFA genotype: ks has {len(self.ks)} entries, not a multiple of the {len(self.d)} "
                "stages of d (every stage has max_depth blocks)"
            )
        for s, depth in enumerate(self.d):
            if not 1 <= depth <= self.max_depth:
                raise ValueError(
                    f"OFA genotype: d[{s}] = {depth} is not in 1..{self.max_depth} (max depth: "
                    f"{len(self.ks)} blocks / {len(self.d)} stages)"
                )
        active = set(self.active_blocks())
        for i, (k, e) in enumerate(zip(self.ks, self.e, strict=True)):
            if not (k == INACTIVE and i not in active) and (k not in range(1, 10, 2)):
                raise ValueError(
                    f"OFA genotype: ks[{i}] = {k} is not an odd kernel size in 1..9"
                    + (" (0 is for inactive blocks only)" if k == INACTIVE else "")
                )
            if not (e == INACTIVE and i not in active) and e not in range(1, 10):
                raise ValueError(
                    f"OFA genotype: e[{i}] = {e} is not an expand ratio in 1..9"
                    + (" (0 is for inactive blocks only)" if e == INACTIVE else "")
                )

    @property
    def n_stages(self) -> int:
        """Number of elastic stages (``len(d)``)."""
        return len(self.d)

    @property
    def max_depth(self) -> int:
        """Blocks per stage in the supernet (``len(ks) // len(d)``)."""
        return len(self.ks) // len(self.d)

    def active_blocks(self) -> tuple[int, ...]:
        """Indices (into ``ks`` / ``e``) of the blocks that run: the first ``d[s]`` of stage s."""
        m = self.max_depth
        return tuple(s * m + j for s, depth in enumerate(self.d) for j in range(depth))

    def stage_blocks(self) -> tuple[tuple[int, ...], ...]:
        """The active block indices grouped per stage."""
        m = self.max_depth
        return tuple(tuple(s * m + j for j in range(depth)) for s, depth in enumerate(self.d))

    def canonical(self) -> OFAGenotype:
        """The same subnet with every inactive block's ``ks`` and ``e`` set to 0: two genotypes
        name the same network exactly when their canonical forms are equal."""
        active = set(self.active_blocks())
        ks = tuple(k if i in active else INACTIVE for i, k in enumerate(self.ks))
        e = tuple(x if i in active else INACTIVE for i, x in enumerate(self.e))
        return OFAGenotype(ks, e, self.d)

    def to_dict(self) -> dict[str, list[int]]:
        """OFA's dict: ``{"ks": [...], "e": [...], "d": [...]}`` (plain lists)."""
        return {"ks": list(self.ks), "e": list(self.e), "d": list(self.d)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OFAGenotype:
        """Inverse of :meth:`to_dict`; OFA's ``image_size`` / ``r`` / ``wid`` keys are ignored."""
        if not isinstance(data, Mapping):
            raise ValueError(f"OFA genotype: expected a dict with ks, e, d, got {data!r}")
        unknown = [k for k in data if k not in ("ks", "e", "d", *_IGNORED_KEYS)]
        if unknown:
            raise ValueError(f"OFA genotype: unknown key {unknown[0]!r} (expected ks, e, d)")
        missing = [k for k in ("ks", "e", "d") if k not in data]
        if missing:
            raise ValueError(f"OFA genotype: missing key {missing[0]!r} (expected ks, e, d)")
        return cls(data["ks"], data["e"], data["d"])

    def __str__(self) -> str:
        m = self.max_depth

        def groups(values: tuple[int, ...]) -> str:
            return "-".join(
                "".join(str(v) for v in values[s * m : (s + 1) * m]) for s in range(self.n_stages)
            )

        return f"k{groups(self.ks)}:e{groups(self.e)}:d{''.join(str(v) for v in self.d)}"

    @classmethod
    def parse(cls, text: str | Mapping[str, Any] | OFAGenotype) -> OFAGenotype:
        """A genotype from its compact string, OFA's dict, or that dict's JSON / YAML text."""
        if isinstance(text, OFAGenotype):
            return text
        if isinstance(text, Mapping):
            return cls.from_dict(text)
        if not isinstance(text, str):
            raise ValueError(
                f"OFA genotype: expected a string like {_EXAMPLE!r} or a dict, got "
                f"{type(text).__name__}"
            )
        stripped = text.strip()
        if re.match(r"k[0-9]", stripped):
            return cls._parse_compact(stripped)
        try:
            data = yaml.safe_load(stripped)
        except yaml.YAMLError:
            data = None
        if not isinstance(data, Mapping):
            raise ValueError(
                f"OFA genotype {stripped[:60]!r}: neither a compact string like {_EXAMPLE!r} nor "
                "a dict with ks, e, d"
            )
        return cls.from_dict(data)

    @classmethod
    def _parse_compact(cls, text: str) -> OFAGenotype:
        match = _COMPACT.match(text)
        if not match:
            raise ValueError(
                f"OFA genotype {text!r}: expected 'k<kernels>:e<ratios>:d<depths>' with one "
                f"digit per block, stages split by '-', e.g. {_EXAMPLE!r}"
            )
        k_text, e_text, d_text = match.groups()
        n_stages = len(d_text)
        found: dict[str, list[int]] = {}
        for name, part in (("ks", k_text), ("e", e_text)):
            groups = part.split("-")
            if len(groups) != n_stages or any(len(g) != len(groups[0]) for g in groups):
                raise ValueError(
                    f"OFA genotype {text!r}: {name} has stages of {[len(g) for g in groups]} "
                    f"blocks; d needs {n_stages} stages of equal size"
                )
            found[name] = [int(c) for g in groups for c in g]
        return cls(tuple(found["ks"]), tuple(found["e"]), tuple(int(c) for c in d_text))


def _choices(values: Sequence[int], name: str, allowed: range) -> tuple[int, ...]:
    out = tuple(sorted({_int(v, name) for v in values}))
    if not out or any(v not in allowed for v in out):
        raise ValueError(f"OFASpace: {name} {tuple(values)} must be non-empty values in {allowed}")
    return out


@dataclass(frozen=True)
class OFASpace:
    """The OFA space: ``ks_choices`` x ``e_choices`` per block, ``d_choices`` per stage.

    Choices are kept sorted without duplicates. Sampling draws every entry, inactive blocks too
    (as OFA does); :meth:`size` counts distinct networks (inactive blocks ignored).
    """

    ks_choices: tuple[int, ...] = KS_CHOICES
    e_choices: tuple[int, ...] = E_CHOICES
    d_choices: tuple[int, ...] = D_CHOICES
    n_stages: int = N_STAGES
    max_depth: int = MAX_DEPTH

    def __post_init__(self) -> None:
        if self.n_stages < 1 or self.max_depth < 1:
            raise ValueError(f"OFASpace: n_stages and max_depth must be >= 1, got {self}")
        object.__setattr__(
            self, "ks_choices", _choices(self.ks_choices, "ks_choices", range(1, 10, 2))
        )
        object.__setattr__(self, "e_choices", _choices(self.e_choices, "e_choices", range(1, 10)))
        object.__setattr__(
            self, "d_choices", _choices(self.d_choices, "d_choices", range(1, self.max_depth + 1))
        )

    @property
    def num_blocks(self) -> int:
        """Elastic blocks in the supernet (``n_stages * max_depth``)."""
        return self.n_stages * self.max_depth

    def size(self) -> int:
        """Number of distinct subnets: ``prod over stages of sum_d (|ks| * |e|) ** d``."""
        per_block = len(self.ks_choices) * len(self.e_choices)
        return sum(per_block**d for d in self.d_choices) ** self.n_stages

    def problem(self, g: OFAGenotype) -> str | None:
        """Why ``g`` is outside this space (one line), or None. Inactive blocks may be 0."""
        if (g.n_stages, g.max_depth) != (self.n_stages, self.max_depth):
            return (
                f"OFA genotype '{g}' has {g.n_stages} stages x {g.max_depth} blocks; the space has "
                f"{self.n_stages} x {self.max_depth}"
            )
        active = set(g.active_blocks())
        for name, values, choices in (("ks", g.ks, self.ks_choices), ("e", g.e, self.e_choices)):
            for i, v in enumerate(values):
                if v not in choices and not (v == INACTIVE and i not in active):
                    return f"OFA genotype '{g}': {name}[{i}] = {v} is not one of {choices}"
        for s, v in enumerate(g.d):
            if v not in self.d_choices:
                return f"OFA genotype '{g}': d[{s}] = {v} is not one of {self.d_choices}"
        return None

    def contains(self, g: OFAGenotype) -> bool:
        """Whether ``g`` is in this space."""
        return self.problem(g) is None

    def parse(self, text: str | Mapping[str, Any] | OFAGenotype) -> OFAGenotype:
        """:meth:`OFAGenotype.parse`, then checked against this space (``ValueError``)."""
        g = OFAGenotype.parse(text)
        problem = self.problem(g)
        if problem:
            raise ValueError(problem)
        return g

    def largest(self) -> OFAGenotype:
        """Every block at the largest kernel and expand ratio, every stage at the largest depth."""
        n = self.num_blocks
        return OFAGenotype(
            (self.ks_choices[-1],) * n,
            (self.e_choices[-1],) * n,
            (self.d_choices[-1],) * self.n_stages,
        )

    def smallest(self) -> OFAGenotype:
        """Every entry at its smallest choice."""
        n = self.num_blocks
        return OFAGenotype(
            (self.ks_choices[0],) * n,
            (self.e_choices[0],) * n,
            (self.d_choices[0],) * self.n_stages,
        )

    def sample(self, rng: random.Random) -> OFAGenotype:
        """Every ``ks``, ``e`` (all blocks) and ``d`` drawn uniformly and independently."""
        n = self.num_blocks
        return OFAGenotype(
            tuple(rng.choice(self.ks_choices) for _ in range(n)),
            tuple(rng.choice(self.e_choices) for _ in range(n)),
            tuple(rng.choice(self.d_choices) for _ in range(self.n_stages)),
        )

    def _complete(
        self, ks: list[int], e: list[int], d: list[int], rng: random.Random
    ) -> OFAGenotype:
        """The genotype, with a random choice for an active block left at 0 (from a canonical
        parent whose stage grew deeper)."""
        m = self.max_depth
        for i in range(self.num_blocks):
            if i % m < d[i // m]:
                ks[i] = ks[i] or rng.choice(self.ks_choices)
                e[i] = e[i] or rng.choice(self.e_choices)
        return OFAGenotype(tuple(ks), tuple(e), tuple(d))

    def mutate(self, g: OFAGenotype, rng: random.Random, prob: float = 0.1) -> OFAGenotype:
        """OFA's mutation: each block's ``ks`` and ``e`` are redrawn together with probability
        ``prob``, each stage's ``d`` with probability ``prob``. A redraw may keep the value, so
        the child may equal the parent."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"mutation prob must be in [0, 1], got {prob}")
        self.parse(g)
        ks, e, d = list(g.ks), list(g.e), list(g.d)
        for i in range(self.num_blocks):
            if rng.random() < prob:
                ks[i], e[i] = rng.choice(self.ks_choices), rng.choice(self.e_choices)
        for s in range(self.n_stages):
            if rng.random() < prob:
                d[s] = rng.choice(self.d_choices)
        return self._complete(ks, e, d, rng)

    def crossover(
        self, a: OFAGenotype, b: OFAGenotype, rng: random.Random, prob: float = 0.5
    ) -> OFAGenotype:
        """Uniform crossover: every ``ks``, ``e`` and ``d`` entry from ``b`` with probability
        ``prob``, else from ``a`` (OFA draws each entry from either parent)."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"crossover prob must be in [0, 1], got {prob}")
        self.parse(a)
        self.parse(b)

        def pick(x: tuple[int, ...], y: tuple[int, ...]) -> list[int]:
            return [vy if rng.random() < prob else vx for vx, vy in zip(x, y, strict=True)]

        return self._complete(pick(a.ks, b.ks), pick(a.e, b.e), pick(a.d, b.d), rng)

    @property
    def encoding_size(self) -> int:
        """Length of :meth:`encode`'s vector."""
        per_block = len(self.ks_choices) + len(self.e_choices)
        return self.num_blocks * per_block + self.n_stages * len(self.d_choices)

    def encode(self, g: OFAGenotype) -> list[float]:
        """A 0/1 feature vector for an accuracy predictor (OFA's ``MobileNetArchEncoder`` plus
        the depths): per block, one-hot ``ks`` then one-hot ``e`` (all zero when inactive); then
        per stage one-hot ``d``."""
        self.parse(g)
        active = set(g.active_blocks())
        out: list[float] = []
        for i in range(self.num_blocks):
            for choices, v in ((self.ks_choices, g.ks[i]), (self.e_choices, g.e[i])):
                out += [float(i in active and v == c) for c in choices]
        for v in g.d:
            out += [float(v == c) for c in self.d_choices]
        return out
