"""Turn the user's xarray object into a (band, y, x) DataArray in the model's band order.

Bands are matched by name: band coordinate values, the ``long_name`` band
descriptions rioxarray reads from GeoTIFFs, Dataset variable names, or an
explicit ``bands=`` argument. Every problem is collected and reported at once.
Nothing here reads data: selections and concatenations stay lazy.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xchm.errors import BandError, InputError, XCHMWarning
from xchm.models.bands import normalize_band_name
from xchm.models.card import ModelCard

__all__ = ["BandsArg", "as_band_array", "spatial_dims", "check_georeferencing"]

BandsArg = Mapping[str, Hashable] | Sequence[str] | None

_SPATIAL = (("y", "x"), ("lat", "lon"), ("latitude", "longitude"), ("northing", "easting"))


def spatial_dims(obj: xr.DataArray | xr.Dataset) -> tuple[Hashable, Hashable]:
    """Return the (y, x) dimension names, as rioxarray reports them or by common names."""
    try:
        return obj.rio.y_dim, obj.rio.x_dim
    except Exception:  # rioxarray raises its own errors when it cannot tell
        pass
    for y, x in _SPATIAL:
        if y in obj.dims and x in obj.dims:
            return y, x
    raise InputError(
        f"cannot find the spatial dimensions among {tuple(obj.dims)}; expected (y, x), "
        "(lat, lon) or what rioxarray reports; rename them, e.g. da.rename(row='y', col='x')"
    )


def _labels(da: xr.DataArray, band_dim: Hashable) -> list[Any]:
    """Name of each input band: string coordinate values, else rioxarray's long_name."""
    n = da.sizes[band_dim]
    if band_dim in da.coords:
        values = list(da[band_dim].values.tolist())
        if all(isinstance(v, str) for v in values):
            return values
    long_name = da.attrs.get("long_name")
    if isinstance(long_name, list | tuple) and len(long_name) == n and all(long_name):
        return list(long_name)
    if band_dim in da.coords:
        return list(da[band_dim].values.tolist())
    return list(range(n))


def _match(card: ModelCard, labels: list[Any], bands: BandsArg) -> list[int]:
    """Index of the input band feeding each card band, or one BandError listing all problems."""
    problems: list[str] = []
    if bands is not None and not isinstance(bands, Mapping):
        names = list(bands)
        if len(names) != len(labels):
            raise BandError(
                f"bands= names {len(names)} bands but the input has {len(labels)}: {labels}"
            )
        labels = names
    if isinstance(bands, Mapping):
        wanted = {normalize_band_name(k): v for k, v in bands.items()}
        unknown = sorted(set(wanted) - set(card.bands))
        if unknown:
            problems.append(f"bands= names {unknown}, which the model does not use {card.bands}")
    else:
        wanted = {}
    by_name: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        if isinstance(label, str):
            by_name.setdefault(normalize_band_name(label), []).append(i)
    indices = []
    for band in card.bands:
        if band in wanted:
            target = wanted[band]
            hits = [i for i, label in enumerate(labels) if label == target]
            if not hits and isinstance(target, int) and not isinstance(target, bool):
                hits = [target] if 0 <= target < len(labels) else []
            if len(hits) != 1:
                problems.append(f"bands={{{band!r}: {target!r}}} matches no input band in {labels}")
                continue
            indices.append(hits[0])
            continue
        hits = by_name.get(band, [])
        if len(hits) == 1:
            indices.append(hits[0])
        elif hits:
            problems.append(f"band {band!r} is ambiguous: input bands {hits} are all called that")
        else:
            problems.append(f"band {band!r} is missing")
    if problems:
        example = ", ".join(f"{b!r}: ..." for b in card.bands)
        raise BandError(
            f"the model expects bands {card.bands}; the input has {labels}. "
            + "; ".join(problems)
            + f". Name the input bands (band coordinate or long_name) or pass bands={{{example}}}"
            " mapping each model band to an input band"
        )
    return indices


def as_band_array(obj: xr.DataArray | xr.Dataset, card: ModelCard, bands: BandsArg) -> xr.DataArray:
    """Return ``obj`` as a lazy (band, y, x) DataArray ordered like ``card.bands``."""
    import rioxarray  # noqa: F401  (registers the .rio accessor; imported late: it is slow)

    if isinstance(obj, xr.Dataset):
        ydim, xdim = spatial_dims(obj)
        names = list(obj.data_vars)
        if isinstance(bands, Mapping):
            chosen = {normalize_band_name(k): v for k, v in bands.items()}
        else:
            chosen = {normalize_band_name(str(v)): v for v in names}
        missing = [b for b in card.bands if b not in chosen]
        absent = [v for b, v in chosen.items() if b in card.bands and v not in obj.data_vars]
        if missing or absent:
            raise BandError(
                f"the model expects bands {card.bands}; the Dataset has variables {names}: "
                f"missing {missing}{f', no variable {absent}' if absent else ''}. Pass "
                "bands={'nir': 'B08', ...} mapping model bands to variables"
            )
        arrays = [obj[chosen[b]] for b in card.bands]
        extra = [d for d in arrays[0].dims if d not in (ydim, xdim)]
        if extra:
            raise InputError(
                f"band variables have extra dimensions {extra}; select one slice, e.g. "
                f"ds.isel({extra[0]}=0)"
            )
        da = xr.concat(arrays, dim="band", coords="minimal", compat="override", join="exact")
        da = da.assign_coords(band=list(card.bands)).transpose("band", ydim, xdim)
        da.attrs = {}
        if obj.rio.crs is not None:
            da = da.rio.write_crs(obj.rio.crs)
        return da
    if not isinstance(obj, xr.DataArray):
        raise InputError(f"expected an xarray DataArray or Dataset, got {type(obj).__name__}")
    if obj.ndim != 3:
        hint = "add one with da.expand_dims(band=['nir'])" if obj.ndim == 2 else "select one slice"
        raise InputError(f"expected a 3-D (band, y, x) array, got dims {tuple(obj.dims)}; {hint}")
    ydim, xdim = spatial_dims(obj)
    (band_dim,) = [d for d in obj.dims if d not in (ydim, xdim)]
    indices = _match(card, _labels(obj, band_dim), bands)
    da = obj.isel({band_dim: indices}).transpose(band_dim, ydim, xdim)
    return da.rename({band_dim: "band"}) if band_dim != "band" else da


def check_dtype(da: xr.DataArray) -> None:
    """Raise unless the data are real numbers (integer DN or float)."""
    if not (np.issubdtype(da.dtype, np.integer) or np.issubdtype(da.dtype, np.floating)):
        raise InputError(
            f"expected integer or floating-point imagery, got dtype {da.dtype}; convert with "
            "da.astype('float32')"
        )


def check_georeferencing(da: xr.DataArray, card: ModelCard) -> None:
    """Warn when the CRS is missing or the pixel size is far from the card's."""
    crs = da.rio.crs
    if crs is None:
        warnings.warn(
            "the input has no CRS: the canopy height map will not be georeferenced; set one "
            "with da.rio.write_crs('EPSG:...')",
            XCHMWarning,
            stacklevel=4,
        )
        return
    if not crs.is_projected:
        return
    try:
        res = abs(da.rio.resolution()[0])
    except Exception:  # rioxarray cannot infer a resolution from 1-pixel axes
        return
    if abs(res - card.pixel_size) > 0.25 * card.pixel_size:
        warnings.warn(
            f"the input's pixels are {res:g} m but the model was trained at {card.pixel_size:g} m; "
            "heights will be off. Resample first: da.rio.reproject(da.rio.crs, "
            f"resolution={card.pixel_size:g}, resampling=rasterio.enums.Resampling.average)",
            XCHMWarning,
            stacklevel=4,
        )
