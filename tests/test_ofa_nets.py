"""Once-for-All: the k/e/d genotype and its space, the elastic ops, the MobileNetV3 / MobileNetV2
supernets and their static subnets, the OFA checkpoint key map and the config sections."""

from __future__ import annotations

import json
import random

import pytest

from nasdet.methods.ofa.space import OFAGenotype, OFASpace

LARGEST = "k7777-7777-7777-7777-7777:e6666-6666-6666-6666-6666:d44444"


def _genotype(seed: int = 0) -> OFAGenotype:
    return OFASpace().sample(random.Random(seed))


# ----------------------------------------------------------------------------- genotype
def test_genotype_string_round_trip() -> None:
    for seed in range(5):
        g = _genotype(seed)
        text = str(g)
        assert OFAGenotype.parse(text) == g
        assert str(OFAGenotype.parse(text)) == text
        assert len(g.ks) == 20 and len(g.e) == 20 and len(g.d) == 5
    assert str(OFASpace().largest()) == LARGEST
    assert OFAGenotype.parse(f"  {LARGEST}\n") == OFASpace().largest()


def test_genotype_dict_round_trip_and_pasted_text() -> None:
    g = _genotype(1)
    d = g.to_dict()
    assert set(d) == {"ks", "e", "d"} and isinstance(d["ks"], list)
    assert OFAGenotype.from_dict(d) == g
    assert OFAGenotype.parse(json.dumps(d)) == g  # OFA's dict as JSON
    assert OFAGenotype.parse(str(d)) == g  # as Python prints it (single quotes)
    yaml_text = "ks: " + json.dumps(d["ks"]) + "\ne: " + json.dumps(d["e"]) + f"\nd: {d['d']}\n"
    assert OFAGenotype.parse(yaml_text) == g
    # OFA's arch dicts also carry the resolution (and "wid": None): ignored
    assert OFAGenotype.parse(json.dumps({**d, "image_size": 224, "wid": None})) == g
    floats = {**d, "e": [float(x) for x in d["e"]]}
    assert OFAGenotype.from_dict(floats) == g
    assert hash(g) == hash(OFAGenotype.parse(str(g)))


def test_genotype_generalises_to_other_shapes() -> None:
    g = OFAGenotype.parse("k357-553:e346-666:d31")
    assert (g.n_stages, g.max_depth) == (2, 3)
    assert g.active_blocks() == (0, 1, 2, 3)
    assert str(g.canonical()) == "k357-500:e346-600:d31"
    assert OFAGenotype(ks=[3, 5], e=[4, 6], d=[1, 1]).ks == (3, 5)  # lists become tuples


def test_canonical_and_active_blocks() -> None:
    g = OFAGenotype.parse("k3577-5555-7777-3333-5353:e3466-4444-6666-3333-4646:d23432")
    assert g.active_blocks() == (0, 1, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 16, 17)
    c = g.canonical()
    assert str(c) == "k3500-5550-7777-3330-5300:e3400-4440-6666-3330-4600:d23432"
    assert c.canonical() == c
    other = OFAGenotype.parse("k3533-5557-7777-3335-5377:e3434-4446-6666-3336-4666:d23432")
    assert other != g and other.canonical() == c


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("k7777-7777-7777-7777-7777:e6666-6666-6666-6666-6666:d44454", "d"),
        ("k7777-7777-7777-7777-7776:e6666-6666-6666-6666-6666:d44444", "ks"),
        ("k7777-7777-7777-7777-7770:e6666-6666-6666-6666-6666:d44444", "ks"),
        ("k7777-7777-7777-7777-7777:e6666-6666-6666-6666-6606:d44444", "e"),
        ("k7777-7777-7777-7777-777:e6666-6666-6666-6666-6666:d44444", "ks"),
        ("k7777-7777-7777-7777:e6666-6666-6666-6666:d44444", "ks"),
        ("k7777-7777-7777-7777-7777:e6666-6666-6666-6666:d44444", "e"),
        ("k7777-7777-7777-7777-7777:e6666-6666-6666-6666-6666", "genotype"),
        ("7777", "genotype"),
        ('{"ks": [3, 5], "e": [3, 4]}', "d"),
        ('{"ks": [3, 5], "e": [3, 4], "d": [2], "w": [1]}', "w"),
        ('{"ks": [3, 5], "e": [3, 4.5], "d": [2]}', "e"),
        ('{"ks": [3, 5], "e": [3, true], "d": [2]}', "e"),
        ('{"ks": "35", "e": [3, 4], "d": [2]}', "ks"),
    ],
)
def test_genotype_errors_name_the_field(text: str, field: str) -> None:
    with pytest.raises(ValueError) as err:
        OFAGenotype.parse(text)
    msg = str(err.value)
    assert "\n" not in msg and field in msg, msg


# ----------------------------------------------------------------------------- space
def test_space_sample_contains_and_size() -> None:
    space = OFASpace()
    assert space.size() == (9**2 + 9**3 + 9**4) ** 5  # ~2.2e19, the paper's "10^19"
    rng = random.Random(0)
    for _ in range(20):
        assert space.contains(space.sample(rng))
    assert space.contains(space.smallest()) and space.contains(space.largest().canonical())
    assert str(space.smallest()).endswith(":d22222")
    small = OFASpace(ks_choices=(3,), e_choices=(3, 6), d_choices=(2,))
    assert small.size() == (1 * 2) ** (2 * 5)  # one depth: 2 blocks of 1 x 2 choices per stage
    assert not small.contains(space.largest())
    with pytest.raises(ValueError, match="ks"):
        small.parse(LARGEST)
    with pytest.raises(ValueError, match="d_choices"):
        OFASpace(d_choices=(2, 5))


def test_space_mutate_and_crossover() -> None:
    space, rng = OFASpace(), random.Random(0)
    a, b = space.sample(rng), space.sample(rng)
    assert space.mutate(a, rng, 0.0) == a
    changed = space.mutate(a, rng, 1.0)
    assert space.contains(changed) and changed != a
    child = space.crossover(a, b, rng)
    assert space.contains(child)
    for i in range(20):
        assert child.ks[i] in (a.ks[i], b.ks[i]) and child.e[i] in (a.e[i], b.e[i])
    assert space.crossover(a, b, rng, prob=0.0) == a
    assert space.crossover(a, b, rng, prob=1.0) == b
    # canonical parents (inactive blocks 0) give children whose active blocks are all set
    for _ in range(20):
        kid = space.mutate(space.crossover(a.canonical(), b.canonical(), rng), rng, 0.5)
        assert space.contains(kid)


def test_space_encode() -> None:
    space = OFASpace()
    g = OFAGenotype.parse("k3577-5555-7777-3333-5353:e3466-4444-6666-3333-4646:d23432")
    x = space.encode(g)
    assert len(x) == 20 * (3 + 3) + 5 * 3 == space.encoding_size
    assert sum(x) == 2 * len(g.active_blocks()) + 5
    assert space.encode(g.canonical()) == x
    assert x[:6] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # block 0: k3, e3
    assert x[12:18] == [0.0] * 6  # block 2 is inactive (d[0] = 2)
