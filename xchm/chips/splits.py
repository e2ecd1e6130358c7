"""Train/val/test labels that do not leak, decided by hashing a key.

A chip's label depends only on its key (its spatial block, its scene, or for the
random split the chip itself) and the seed, never on the order chips are
processed in: rebuilding a cube, or adding scenes, gives every chip the same
label again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
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

    def label(self, *key: Any) -> str:
        """Return the label of ``key`` (a tuple of strings and integers)."""
        text = "|".join([str(self.seed), *map(str, key)]).encode()
        u = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2.0**64
        edge = 0.0
        label = ""
        for label, fraction in self.fractions.items():
            edge += fraction
            if u < edge:
                return label
        return label  # u within rounding of 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, stored in the cube's attrs."""
        return {
            "method": self.method,
            "fractions": dict(self.fractions),
            "block_size": self.block_size,
            "seed": self.seed,
        }
