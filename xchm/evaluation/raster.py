"""Compare a predicted canopy height raster with a reference raster, block by block.

Both rasters must share one grid (CRS, transform, shape); the function refuses to
resample on its own, because the choice of resampling changes the scores. With
Dask-backed inputs (files are opened lazily), each pair of blocks is reduced to
the few sums of a :class:`~xchm.evaluation.metrics.MetricAccumulator` (and a 2-D
histogram) and the sums are added up in a tree, so memory stays at a few blocks
per worker thread whatever the mosaic size.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from xchm._compat import renamed_keywords
from xchm.errors import InputError
from xchm.evaluation.metrics import (
    DEFAULT_CLASSES,
    Classes,
    HistogramAccumulator,
    MetricAccumulator,
)
from xchm.evaluation.result import EvaluationResult
from xchm.storage import Location

__all__ = ["evaluate_raster"]

#: Block side when opening GeoTIFFs lazily, pixels.
RASTER_CHUNKS = 2048
# Blocks merged per node of the reduction tree.
_FAN_IN = 8


def _open(value: Any, what: str) -> tuple[Any, str]:
    """Return a 2-D (y, x) DataArray (file nodata masked as NaN) and a name for it."""
    import xarray as xr

    if isinstance(value, str | os.PathLike | Location):
        from xchm.inference.rasters import open_image

        opened = open_image(value, chunks=RASTER_CHUNKS, masked=True, what=f"{what} raster")
        # A prediction store (predict_to_zarr) holds the map as its "chm" variable.
        arr: Any = opened["chm"] if isinstance(opened, xr.Dataset) and "chm" in opened else opened
        if isinstance(arr, xr.Dataset):
            raise InputError(f"{what} {str(value)!r} holds no single height array")
        name = str(value)
    elif isinstance(value, xr.DataArray):
        arr, name = value, str(value.name or what)
    else:
        raise InputError(
            f"{what} must be an xarray DataArray, or a GeoTIFF or prediction store path or URL, "
            f"got {type(value).__name__}"
        )
    if "band" in arr.dims:
        if arr.sizes["band"] != 1:
            raise InputError(f"{what} has {arr.sizes['band']} bands; give one band of heights")
        arr = arr.isel(band=0, drop=True)
    if arr.ndim != 2:
        raise InputError(f"{what} must be 2-D (y, x), got dims {arr.dims}")
    return arr, name


def _grid(arr: Any, what: str) -> tuple[Any, tuple[float, ...], tuple[int, ...]]:
    from xchm.inference.inputs import check_grid

    check_grid(arr, what)  # a shuffled or gapped grid would still give a transform
    try:
        transform = tuple(arr.rio.transform())[:6]
    except Exception as err:  # rioxarray raises several types for missing coordinates
        raise InputError(f"{what} has no georeferencing (x/y coordinates): {err}") from err
    return arr.rio.crs, transform, tuple(arr.shape)


def _check_aligned(pred: Any, reference: Any) -> None:
    (pcrs, ptr, pshape), (rcrs, rtr, rshape) = _grid(pred, "pred"), _grid(reference, "reference")
    tol = 1e-6 * max(abs(rtr[0]), abs(rtr[4]), 1e-12)
    problems = []
    if pshape != rshape:
        problems.append(f"shape {pshape} vs {rshape}")
    if pcrs != rcrs:
        problems.append(f"CRS {pcrs} vs {rcrs}")
    if not np.allclose(ptr, rtr, rtol=0, atol=tol):
        problems.append(f"transform {ptr} vs {rtr}")
    if problems:
        raise InputError(
            "pred and reference are not on the same grid (" + "; ".join(problems) + "); "
            "resample the prediction first with pred.rio.reproject_match(reference)"
        )


def _nodata(arr: Any) -> float | None:
    try:
        value = arr.rio.nodata
    except Exception:  # no rio metadata at all
        return None
    return None if value is None or math.isnan(float(value)) else float(value)


def _block(
    pred: np.ndarray,
    ref: np.ndarray,
    nodata: tuple[float | None, float | None],
    classes: Classes,
    hist_bins: tuple[float, float] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reduce one pair of blocks to metric sums (and histogram counts)."""
    p = np.asarray(pred, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if nodata[0] is not None:
        p = np.where(p == nodata[0], np.nan, p)  # a copy: never write into the caller's data
    if nodata[1] is not None:
        r = np.where(r == nodata[1], np.nan, r)
    acc = MetricAccumulator(classes=classes)
    acc.update(p, r)
    counts = None
    if hist_bins is not None:
        hist = HistogramAccumulator(max_height=hist_bins[0], bin_size=hist_bins[1])
        hist.update(p, r)
        counts = hist.to_array()
    return acc.to_array(), counts


def _merge(*parts: tuple[np.ndarray, np.ndarray | None]) -> tuple[np.ndarray, np.ndarray | None]:
    sums = np.sum([p[0] for p in parts], axis=0)
    hists = [p[1] for p in parts if p[1] is not None]
    counts = np.sum(hists, axis=0) if hists else None
    return sums, counts


@renamed_keywords(report="output")
def evaluate_raster(
    pred: Any,
    reference: Any,
    *,
    classes: Classes = DEFAULT_CLASSES,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    max_height: float = 60.0,
    bin_size: float = 0.5,
) -> EvaluationResult:
    """Accuracy of a predicted canopy height raster against an aligned reference raster.

    Parameters
    ----------
    pred, reference
        Heights in metres: 2-D (or one-band) DataArrays with rioxarray
        georeferencing, or GeoTIFF/COG or prediction-store (``predict_to_zarr``)
        paths or URLs (``s3://``, ``https://``...; opened lazily in
        :data:`RASTER_CHUNKS`-pixel blocks, nodata masked).
    classes
        Reference height classes ``(lo, hi)`` in metres (``lo <= ref < hi``).
    output
        Report folder to write: ``metrics.json``, ``density.png`` and
        ``error_by_class.png``; absent or empty unless ``overwrite``. Default: no
        report. Formerly ``report=``, which still works for one release with a
        ``FutureWarning``.
    overwrite
        Replace an earlier report in ``output`` (a folder holding anything else is
        refused, with or without it).
    max_height, bin_size
        Range and bin width of the density plot's histogram, metres.

    Returns
    -------
    EvaluationResult
        A dict with the metrics also as attributes (``result.mae``) and
        ``to_dict()`` for JSON: the keys of
        :func:`~xchm.evaluation.metrics.height_metrics` plus ``pred``, ``reference``
        (paths or names), ``shape``, ``crs`` and, with ``output``, ``report`` (the
        folder). Pixels NaN or nodata in either raster are left out.

    Raises
    ------
    InputError
        If the rasters are not on the same grid (CRS, transform, shape; resample
        with ``pred.rio.reproject_match(reference)``), are not 2-D, or a path does
        not exist.

    Notes
    -----
    Dask-backed input is computed block by block (the active scheduler or
    ``distributed.Client``); each block becomes 54 sums (+ histogram counts), merged
    in a tree. NumPy-backed input is computed eagerly in one block.

    Examples
    --------
    >>> m = xchm.evaluate_raster("chm_pred.tif", "lidar_chm.tif")  # doctest: +SKIP
    >>> m.mae, m.classes[-1]["bias"]  # doctest: +SKIP
    (2.4, -3.1)
    """
    from xchm.evaluation.report import prepare_report_dir, write_report

    report_dir = None if output is None else prepare_report_dir(output, overwrite=overwrite)
    p_arr, p_name = _open(pred, "pred")
    r_arr, r_name = _open(reference, "reference")
    _check_aligned(p_arr, r_arr)
    nodata = (_nodata(p_arr), _nodata(r_arr))
    bins = (max_height, bin_size) if report_dir is not None else None
    acc = MetricAccumulator(classes=classes)  # validates classes before any compute
    p_data, r_data = p_arr.data, r_arr.data
    if hasattr(p_data, "dask") or hasattr(r_data, "dask"):
        import dask
        import dask.array as dska

        if not hasattr(p_data, "dask"):
            p_data = dska.from_array(p_data, chunks=r_data.chunks)
        r_data = dska.asarray(r_data).rechunk(p_data.chunks)
        blocks = dask.delayed(_block, pure=True)
        parts = [
            blocks(pb, rb, nodata, acc.classes, bins)
            for pb, rb in zip(p_data.to_delayed().ravel(), r_data.to_delayed().ravel(), strict=True)
        ]
        merge = dask.delayed(_merge, pure=True)
        while len(parts) > 1:
            parts = [merge(*parts[i : i + _FAN_IN]) for i in range(0, len(parts), _FAN_IN)]
        (sums, counts) = dask.compute(parts[0])[0]
    else:
        sums, counts = _block(np.asarray(p_data), np.asarray(r_data), nodata, acc.classes, bins)
    acc.merge(MetricAccumulator.from_array(sums, classes=acc.classes))
    result = EvaluationResult(
        {
            "pred": p_name,
            "reference": r_name,
            "shape": list(p_arr.shape),
            "crs": None if r_arr.rio.crs is None else str(r_arr.rio.crs),
            **acc.result(),
        }
    )
    if report_dir is not None and counts is not None:
        hist = HistogramAccumulator.from_array(counts, max_height=max_height, bin_size=bin_size)
        result["report"] = str(report_dir)
        write_report(report_dir, result, hist, overwrite=overwrite)
    return result
