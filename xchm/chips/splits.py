"""Train/val/test labels that do not leak and leave no requested split empty.

Chips are split by *unit*: a spatial block of chips (``"block"``), a scene
(``"scene"``) or the chip itself (``"random"``). Every chip of a unit gets the
unit's label, so neighbouring chips of one block never land on both sides.

Hashing each unit on its own (the label of a uniform draw against the fractions)
leaves a split empty whenever no unit happens to draw it: with 4 blocks and 20 %
val, about 4 builds in 10 have no val chip. :meth:`SplitRule.assign` instead
ranks the units of each *group* (a scene's block grid, a scene's chips; each
scene alone for the scene split) by the hash of their key and hands out the
labels by quota: the unit of rank ``i`` of ``n`` takes the label at
``(i + offset) / n`` of the cumulative fractions, where ``offset`` in [0, 1) is
the sum of the group's hashes modulo 1. A group so holds ``floor`` or ``ceil`` of
``n * fraction`` units of each label, and a group of one unit takes the label of
its own hash, so that many small scenes keep the fractions on average. Last, if
a requested label still has no unit while there are at least as many units as
requested labels, it takes one unit from the label with the most (the unit whose
hash salted with the empty label is smallest).

Labels depend only on the seed and the set of units (with kept chips) in each
group, never on the order chips are processed in: the same inputs and settings
give every chip the same label again. Adding or removing units in a group (other
scenes are other groups) can move units whose rank crosses a quota boundary.
This is written here because it is a few lines of ranking over xchm's own keys;
scikit-learn's group splitters shuffle by a random state, not by a hash of each
group, so labels would not be stable under rebuilds.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xchm.chips.layout import SPLITS
from xchm.errors import InputError

__all__ = ["SplitRule", "SPLIT_METHODS"]

#: "block": square blocks of chips (the default, no leakage between neighbours);
#: "scene": whole scenes; "random": chip by chip, as the reference (optimistic).
SPLIT_METHODS = ("block", "scene", "random")


@dataclass(frozen=True, kw_only=True)
class SplitRule:
    """How chips are assigned to train/val/test.

    Examples
    --------
    >>> rule = SplitRule(method="block", fractions={"train": 0.8, "val": 0.2})
    >>> rule.label("scene-a", 0, 3) in ("train", "val")
    True
    >>> rule.label("scene-a", 0, 3) == rule.label("scene-a", 0, 3)
    True
    """

    method: str = "block"
    """One of ``SPLIT_METHODS``."""
    fractions: Mapping[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.2})
    """Share of keys per label (labels among ``train``, ``val``, ``test``; sum 1)."""
    block_size: int = 8
    """Side of a spatial block in chips (``method="block"``): 8 chips of 64 px at 2 m
    is 1 km."""
    seed: int = 0
    """Seed of the assignment."""

    def __post_init__(self) -> None:
        if self.method not in SPLIT_METHODS:
            raise InputError(
                f"the split method (split_by=) must be one of {SPLIT_METHODS}, got {self.method!r}"
            )
        fractions = dict(self.fractions)
        unknown = set(fractions) - set(SPLITS)
        if unknown:
            raise InputError(f"split labels must be among {SPLITS}, got {sorted(unknown)}")
        if any(not isinstance(v, int | float) or v < 0 for v in fractions.values()):
            raise InputError(f"split fractions must be non-negative numbers, got {fractions}")
        if abs(sum(fractions.values()) - 1) > 1e-6:
            raise InputError(f"split fractions must sum to 1, got {fractions}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int):
            raise InputError(f"block_size must be a positive integer, got {self.block_size!r}")
        if self.block_size < 1:
            raise InputError(f"block_size must be a positive integer, got {self.block_size}")
        # Fixed label order, so that the same fractions always cut [0, 1) the same way.
        ordered = {k: float(fractions[k]) for k in SPLITS if fractions.get(k, 0) > 0}
        object.__setattr__(self, "fractions", ordered)

    def position(self, *key: Any) -> float:
        """Return the hash of ``key`` (strings and numbers) and the seed, in [0, 1)."""
        text = "|".join([str(self.seed), *map(str, key)]).encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2.0**64

    def label_at(self, position: float) -> str:
        """Return the label whose share of [0, 1) (fractions in label order) holds ``position``."""
        edge = 0.0
        label = ""
        for label, fraction in self.fractions.items():
            edge += fraction
            if position < edge:
                return label
        return label  # position within rounding of 1

    def label(self, *key: Any) -> str:
        """Return the label of ``key`` drawn alone, by its hash (no quota).

        For a block no unit of :meth:`assign` covers (a block only reached by
        chips of neighbouring blocks), so that every block has one label.
        """
        return self.label_at(self.position(*key))

    def assign(self, units: Mapping[tuple[Any, ...], Hashable]) -> dict[tuple[Any, ...], str]:
        """Label units ``{key: group}`` by rank within their group; see the module docstring.

        Every label with a non-zero fraction gets at least one unit when there are at
        least as many units as such labels.

        Examples
        --------
        >>> rule = SplitRule(fractions={"train": 0.8, "val": 0.2})
        >>> units = {("scene-a", 0, b): "scene-a" for b in range(4)}
        >>> sorted(rule.assign(units).values())
        ['train', 'train', 'train', 'val']
        """
        groups: dict[Hashable, list[tuple[float, str, tuple[Any, ...]]]] = {}
        for key, group in units.items():
            groups.setdefault(group, []).append((self.position(*key), _text(key), key))
        labels: dict[tuple[Any, ...], str] = {}
        for members in groups.values():
            members.sort()
            # The group's offset: its units' hashes summed modulo 1, uniform in [0, 1);
            # a group of one unit is labelled by that unit's hash, as label() would.
            offset = math.fsum(u for u, _, _ in members) % 1.0
            for rank, (_, _, key) in enumerate(members):
                labels[key] = self.label_at((rank + offset) / len(members))
        return self._fill_empty(labels)

    def _fill_empty(self, labels: dict[tuple[Any, ...], str]) -> dict[tuple[Any, ...], str]:
        """Move one unit to each empty label, from the fullest, while units suffice."""
        wanted = list(self.fractions)
        if len(labels) < len(wanted):
            return labels
        members: dict[str, list[tuple[Any, ...]]] = {name: [] for name in wanted}
        for key, name in labels.items():
            members[name].append(key)
        for name in wanted:
            if members[name]:
                continue
            # With at least len(wanted) units and one label empty, the fullest has 2+.
            donor = max(wanted, key=lambda d: (len(members[d]), -wanted.index(d)))
            key = min(members[donor], key=lambda k: (self.position(name, *k), _text(k)))
            members[donor].remove(key)
            members[name].append(key)
            labels[key] = name
        return labels

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, stored in the cube's attrs."""
        return {
            "method": self.method,
            "fractions": dict(self.fractions),
            "block_size": self.block_size,
            "seed": self.seed,
        }


def _text(key: tuple[Any, ...]) -> str:
    """Order units whose hashes tie (never in practice) by their key's text."""
    return "|".join(map(str, key))
