"""Training and evaluation of canopy height models on chip cubes.

Importing this package is light; torch is imported by the functions that run.
"""

from xchm.training.config import LOSSES, POLICIES, SCHEDULERS, TrainConfig
from xchm.training.evaluation import evaluate, evaluate_raster
from xchm.training.metrics import MetricAccumulator, height_metrics
from xchm.training.trainer import TrainResult, train

__all__ = [
    "LOSSES",
    "POLICIES",
    "SCHEDULERS",
    "MetricAccumulator",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "evaluate_raster",
    "height_metrics",
    "train",
]
