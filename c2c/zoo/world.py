"""The synthetic world the bundled pair learns: fictional people with attributes from closed sets.

Attributes are drawn independently at random, so a fact about one person says nothing about
another: a model can only answer a question about a person whose facts it was trained on. That is
what lets the evaluation tell knowledge carried over the KV cache apart from guessing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Syllables are chosen so names are pronounceable and split into a few tokens in both tokenizers.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "gl")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ia", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "th", "x", "m")


@dataclass(frozen=True)
class Attribute:
    """One kind of fact: its name and the closed set of values it takes."""

    name: str
    values: tuple[str, ...]


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "town",
        (
            "Ambridge", "Bellmoor", "Corvale", "Dunmere", "Eastwick", "Fallow",
            "Greystone", "Harrowgate", "Ivyford", "Jadeport", "Kestrel", "Lowmarsh",
        ),
    ),
    Attribute(
        "trade",
        (
            "baker", "sailor", "weaver", "miner", "potter", "healer",
            "scribe", "hunter", "smith", "farmer", "tailor", "jeweler",
        ),
    ),
    Attribute(
        "pet",
        (
            "fox", "owl", "goat", "cat", "hound", "raven",
            "otter", "horse", "toad", "parrot", "rabbit", "tortoise",
        ),
    ),
    Attribute(
        "instrument",
        (
            "harp", "drum", "flute", "lute", "horn", "fiddle",
            "bell", "pipe", "organ", "zither", "banjo", "cello",
        ),
    ),
)  # fmt: skip
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(attribute.name for attribute in ATTRIBUTES)


@dataclass(frozen=True)
class Person:
    """A fictional person: a unique name and one value per attribute."""

    name: str
    facts: dict[str, str]


@dataclass(frozen=True)
class World:
    """Everyone that exists, in a seeded order; the splits cut this list into disjoint groups."""

    seed: int
    people: tuple[Person, ...]


def _name(rng: random.Random) -> str:
    syllables = [
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        for _ in range(rng.choice((2, 2, 3)))
    ]
    return "".join(syllables).capitalize()


def build_world(num_people: int, seed: int = 0) -> World:
    """``num_people`` people with distinct names and independently drawn attributes."""
    rng = random.Random(seed)
    taken: set[str] = set()
    people = []
    while len(people) < num_people:
        name = _name(rng)
        if name in taken or not 5 <= len(name) <= 11:
            continue
        taken.add(name)
        facts = {attribute.name: rng.choice(attribute.values) for attribute in ATTRIBUTES}
        people.append(Person(name=name, facts=facts))
    return World(seed=seed, people=tuple(people))
