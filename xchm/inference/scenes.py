"""``xchm.merge_scenes``: several scenes in one CRS as one lazy image on their union grid.

Scenes are combined in *image* space, before the model runs, and the mosaic is
then predicted as one image. So windows straddling a scene edge see real pixels
on both sides, the height map has no seams by construction (the sliding-window
blend is global), and overlaps cost no extra model time. Rules:

* ``"first"``: each pixel comes from the first scene in the list that has it
  (every band valid). Sort the list newest first for "most recent valid pixel".
* ``"mean"``: the mean of the scenes that have the pixel (radiometry of different
  dates averages; use it for scenes of one date and sensor).

rioxarray's ``merge_arrays`` does the same job but reads everything into memory;
this stays lazy (padding and ``where`` on dask arrays), which is why it is here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from xchm.errors import InputError
from xchm.inference.inputs import check_grid, to_north_up
from xchm.inference.predict import DEFAULT_CHUNK
from xchm.inference.rasters import open_image

__all__ = ["merge_scenes", "COMBINE_RULES"]

COMBINE_RULES = ("first", "mean")
_ALIGN_TOLERANCE = 1e-3  # of a pixel


def _open(scene: Any, chunks: int) -> xr.DataArray:
    if isinstance(scene, xr.DataArray):
        return scene
    opened = open_image(scene, chunks=chunks, what="scene")
    if not isinstance(opened, xr.DataArray):
        raise InputError(f"scene {str(scene)!r} holds several variables; pass one as a DataArray")
    return opened


def _grid(da: xr.DataArray, name: str) -> tuple[float, float, float]:
    """(left, top, pixel size) of a north-up scene with square pixels."""
    t = da.rio.transform()
    if t.b != 0 or t.d != 0 or t.e >= 0 or not np.isclose(t.a, -t.e, rtol=1e-9):
        raise InputError(
            f"scene {name} is not north-up with square pixels (transform {tuple(t)[:6]}); "
            "reproject it first, e.g. da.rio.reproject(crs, resolution=...)"
        )
    return t.c, t.f, t.a


def _masked(da: xr.DataArray) -> Any:
    """Return the scene's dask data as float32 with NaN where a band is nodata."""
    import dask.array as dsa

    data = da.data if isinstance(da.data, dsa.Array) else dsa.from_array(da.data)
    data = data.astype(np.float32)
    nodata = da.rio.nodata
    if nodata is not None and not np.isnan(nodata):
        data = dsa.where(data == np.float32(nodata), np.float32(np.nan), data)
    return data


def merge_scenes(
    scenes: Sequence[Any],
    *,
    combine: str = "first",
    chunks: int = DEFAULT_CHUNK,
) -> xr.DataArray:
    """Combine scenes (paths or (band, y, x) DataArrays) onto their union grid, lazily.

    Parameters
    ----------
    scenes
        GeoTIFF/COG paths or georeferenced DataArrays, all in one CRS, with the same
        pixel size, bands and pixel grid (origins a whole number of pixels apart).
    combine
        ``"first"`` (the first scene listed that has the pixel wins) or ``"mean"``;
        see the module docstring.
    chunks
        Spatial chunk side of the result (the chunks predict and the store use).

    Returns
    -------
    xarray.DataArray
        (band, y, x) float32 in the scenes' units, NaN where no scene has the pixel,
        with CRS, the first scene's band names, and ``attrs["xchm_scenes"]``.
        Lazy: nothing is read.

    Raises
    ------
    InputError
        No scenes, mixed CRS, pixel sizes, bands or grids (the message names them),
        x/y coordinates that are not a regular grid, or an unknown ``combine`` rule.
    PathNotFoundError
        A scene path does not exist.

    Examples
    --------
    >>> import numpy as np, rioxarray, xarray as xr, xchm
    >>> def scene(x0, value):
    ...     return xr.DataArray(np.full((3, 64, 64), value, "uint16"), dims=("band", "y", "x"),
    ...         coords={"band": ["nir", "red", "green"], "y": 6400.0 - 2 * np.arange(64) - 1,
    ...                 "x": x0 + 2 * np.arange(64) + 1.0}).rio.write_crs("EPSG:32606")
    >>> mosaic = xchm.merge_scenes([scene(0, 100), scene(64, 200)])  # 32 px apart
    >>> mosaic.shape, float(mosaic[0, 0, 40]), float(mosaic[0, 0, 90])
    ((3, 64, 96), 100.0, 200.0)
    """
    import dask.array as dsa

    if combine not in COMBINE_RULES:
        raise InputError(f"combine must be one of {COMBINE_RULES}, got {combine!r}")
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise InputError(f"chunks must be a positive integer, got {chunks!r}")
    if isinstance(scenes, str | os.PathLike | xr.DataArray) or len(scenes) == 0:
        raise InputError("scenes must be a non-empty list of paths or DataArrays")
    arrays = [_open(s, chunks) for s in scenes]
    names = [str(s) if not isinstance(s, xr.DataArray) else f"#{i}" for i, s in enumerate(scenes)]
    problems = []
    crss = [a.rio.crs for a in arrays]
    if any(c is None for c in crss) or len({c.to_wkt() for c in crss if c is not None}) > 1:
        listed = ", ".join(
            f"{n}: {c.to_string() if c else 'none'}" for n, c in zip(names, crss, strict=True)
        )
        problems.append(f"scenes must share one CRS ({listed}); reproject them first")
    if any(a.ndim != 3 for a in arrays):
        problems.append("every scene must be (band, y, x)")
    elif len({a.shape[0] for a in arrays}) > 1:
        problems.append(
            "band counts differ: "
            + ", ".join(f"{n}: {a.shape[0]}" for n, a in zip(names, arrays, strict=True))
        )
    if problems:
        raise InputError("; ".join(problems))
    # Regular x/y grids only; a scene stored south-up or east-to-west is read north-up.
    arrays = [
        to_north_up(a, check_grid(a, f"scene {n}")) for a, n in zip(arrays, names, strict=True)
    ]
    grids = [_grid(a, n) for a, n in zip(arrays, names, strict=True)]
    res = grids[0][2]
    if any(not np.isclose(g[2], res, rtol=1e-9) for g in grids):
        raise InputError(
            "pixel sizes differ: "
            + ", ".join(f"{n}: {g[2]}" for n, g in zip(names, grids, strict=True))
            + "; resample them to one size first"
        )
    left = min(g[0] for g in grids)
    top = max(g[1] for g in grids)
    offsets = []
    for (x0, y0, _), name in zip(grids, names, strict=True):
        col, row = (x0 - left) / res, (top - y0) / res
        if abs(col - round(col)) > _ALIGN_TOLERANCE or abs(row - round(row)) > _ALIGN_TOLERANCE:
            raise InputError(
                f"scene {name} is not on the pixel grid of the others (offset {col:.3f}, "
                f"{row:.3f} px); resample it onto their grid, e.g. rio.reproject_match"
            )
        offsets.append((round(row), round(col)))
    height = max(r + a.shape[1] for (r, _), a in zip(offsets, arrays, strict=True))
    width = max(c + a.shape[2] for (_, c), a in zip(offsets, arrays, strict=True))

    placed = []
    for (row, col), a in zip(offsets, arrays, strict=True):
        pad = ((0, 0), (row, height - row - a.shape[1]), (col, width - col - a.shape[2]))
        padded = dsa.pad(_masked(a), pad, mode="constant", constant_values=np.float32(np.nan))
        placed.append(padded.rechunk((a.shape[0], chunks, chunks)))
    if combine == "first":
        merged = placed[0]
        for nxt in placed[1:]:
            have = dsa.isfinite(merged).all(axis=0, keepdims=True)
            merged = dsa.where(have, merged, nxt)
    else:
        total = dsa.zeros_like(placed[0])
        count = dsa.zeros((1, height, width), dtype=np.float32, chunks=(1, chunks, chunks))
        for p in placed:
            have = dsa.isfinite(p).all(axis=0, keepdims=True)
            total = total + dsa.where(have, p, np.float32(0))
            count = count + have
        merged = dsa.where(count > 0, total / dsa.maximum(count, 1), np.float32(np.nan))
    first = arrays[0]
    out = xr.DataArray(
        merged.astype(np.float32),
        dims=("band", "y", "x"),
        coords={
            "band": first["band"].values if "band" in first.coords else np.arange(first.shape[0]),
            "y": top - res * (np.arange(height) + 0.5),
            "x": left + res * (np.arange(width) + 0.5),
        },
        attrs={k: v for k, v in first.attrs.items() if k in ("long_name", "units")},
        name="image",
    )
    out.attrs["xchm_scenes"] = list(names)
    out.attrs["xchm_combine"] = combine
    return out.rio.write_crs(crss[0]).rio.write_nodata(np.nan, encoded=False)
