"""Inference: xarray/Dask wiring, the block kernel, and the per-worker model cache."""

from xchm.inference.predict import DEFAULT_OVERLAP, predict

__all__ = ["DEFAULT_OVERLAP", "predict"]
