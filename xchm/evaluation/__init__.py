"""Evaluation: scoring canopy height models against reference heights.

:func:`evaluate` scores a model on a chip cube split (:mod:`.cube`);
:func:`evaluate_raster` scores a predicted raster against a reference raster block
by block (:mod:`.raster`); both reduce to the additive sums of :mod:`.metrics`
(MAE, RMSE, bias, R2 overall and by height class), return an
:class:`EvaluationResult` (:mod:`.result`) and write the same report folder
(:mod:`.report`: PNGs and JSON) when given ``output=``. Importing this package is
light; torch, Dask and matplotlib are imported by the functions that use them.

Layering: evaluation sits beside training, not inside it. It may import
:mod:`xchm.models`, :mod:`xchm.inference` (device choice, grid checks),
:mod:`xchm.chips` (the cubes it reads) and the leaf utilities (:mod:`xchm.errors`,
:mod:`xchm.outputs`); never training, pretraining, runs, stac or the command line,
which may import it.
"""

from xchm.evaluation.cube import evaluate
from xchm.evaluation.metrics import MetricAccumulator, height_metrics
from xchm.evaluation.raster import evaluate_raster
from xchm.evaluation.result import EvaluationResult

__all__ = ["EvaluationResult", "MetricAccumulator", "evaluate", "evaluate_raster", "height_metrics"]
