"""Inference: xarray/Dask wiring, the block kernel, and the per-worker model cache.

Layering: inference sits on :mod:`xchm.models`. It may import the models, the leaf
utilities (:mod:`xchm.errors`, :mod:`xchm.outputs`) and :mod:`xchm.cluster` (a leaf
that imports only the errors); never training, evaluation, chips, pretraining, stac,
runs or the command line, which all build on it.
"""

from xchm.inference.cog import write_cog
from xchm.inference.predict import DEFAULT_OVERLAP, predict
from xchm.inference.scenes import merge_scenes
from xchm.inference.to_zarr import open_prediction, predict_to_zarr

__all__ = [
    "DEFAULT_OVERLAP",
    "merge_scenes",
    "open_prediction",
    "predict",
    "predict_to_zarr",
    "write_cog",
]
