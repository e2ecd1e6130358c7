"""Fine-tuning canopy height models on chip cubes: streaming data, the loop, policies.

Importing this package is light; torch is imported by the functions that run.

Layering: training may import :mod:`xchm.models`, :mod:`xchm.inference`,
:mod:`xchm.runs` (run state, DDP, autocast), :mod:`xchm.chips` (the cubes it
reads) and the leaf utilities (:mod:`xchm.errors`, :mod:`xchm.outputs`); never
evaluation, pretraining, stac or the command line. Scoring a trained model is
:mod:`xchm.evaluation`'s (``xchm.evaluate``).
"""

from xchm.training.config import LOSSES, POLICIES, SCHEDULERS, TrainConfig
from xchm.training.lr_finder import LRFinderResult, find_lr
from xchm.training.recipes import RECIPES
from xchm.training.trainer import TrainResult, train

__all__ = [
    "LOSSES",
    "LRFinderResult",
    "POLICIES",
    "RECIPES",
    "SCHEDULERS",
    "TrainConfig",
    "TrainResult",
    "find_lr",
    "train",
]
