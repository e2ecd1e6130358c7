"""Chip cubes: Zarr v3 stores of image chips and canopy height chips for training.

Build one from scene pairs with :func:`build` (or from images alone: an unlabeled
cube of image chips, for pretraining), import the reference's layouts with
:func:`from_directories` / :func:`from_hf_dataset`, and open one with :func:`open`.
The format is described in docs/chip-cube-format.md. Cubes may live on local disk or
in object storage (any URL :mod:`xchm.storage` reaches).

Layering: chips may import :mod:`xchm.models` (band names), :mod:`xchm.inference`
(opening imagery, the nodata rule) and the leaf utilities (:mod:`xchm.errors`,
:mod:`xchm.storage`, :mod:`xchm.outputs`); never training, evaluation, pretraining,
stac or the command line, which are built on it.

Examples
--------
>>> import xchm.chips
>>> xchm.chips.SplitRule(method="scene").method
'scene'
"""

from xchm.chips.builder import build
from xchm.chips.cube import ChipCube
from xchm.chips.cube import open_cube as open
from xchm.chips.hf import from_hf_dataset
from xchm.chips.importers import from_directories
from xchm.chips.sources import ScenePair
from xchm.chips.splits import SplitRule

__all__ = [
    "ChipCube",
    "ScenePair",
    "SplitRule",
    "build",
    "from_directories",
    "from_hf_dataset",
    "open",
]
