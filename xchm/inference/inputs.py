"""Turn the user's xarray object into a (band, y, x) DataArray in the model's band order.

Bands are matched by name: band coordinate values, the ``long_name`` band
descriptions rioxarray reads from GeoTIFFs, Dataset variable names, or an
explicit ``bands=`` argument, decided by :func:`xchm.models.bands.select_bands` (the
one implementation chips and STAC share; band numbers are GDAL's, from 1). Every
problem is collected and reported at once.
Nothing here reads data: selections and concatenations stay lazy.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from xchm.errors import BandError, InputError, XCHMWarning
from xchm.models.bands import BandsArg, normalize_band_name, parse_bands, select_bands
from xchm.models.card import ModelCard

__all__ = [
    "BandsArg",
    "GridSteps",
    "as_band_array",
    "band_labels",
    "spatial_dims",
    "check_grid",
    "check_georeferencing",
]

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


def band_labels(
    da: xr.DataArray, band_dim: Hashable = "band"
) -> tuple[list[Any], list[Any] | None]:
    """Return each band's name (None where it has none) and the integer band numbers.

    Names come from string band coordinate values, else from the ``long_name`` band
    descriptions rioxarray reads from GeoTIFFs. Numbers are an integer band
    coordinate (rioxarray's GDAL band numbers, kept after a selection), else None.
    Only coordinates and attributes are read, never the data.
    """
    n = da.sizes[band_dim]
    coord = list(da[band_dim].values.tolist()) if band_dim in da.coords else None
    names: list[Any] = [None] * n
    if coord is not None and all(isinstance(v, str) for v in coord):
        names = coord
    else:
        described = da.attrs.get("long_name")
        if isinstance(described, str) and n == 1:
            described = (described,)
        if isinstance(described, list | tuple) and len(described) == n:
            names = [v if isinstance(v, str) and v.strip() else None for v in described]
    ints = coord is not None and all(isinstance(v, int) and not isinstance(v, bool) for v in coord)
    return names, coord if ints else None


def _labels(da: xr.DataArray, band_dim: Hashable) -> list[Any]:
    """How messages and job records show each input band: its name, number or position."""
    names, numbers = band_labels(da, band_dim)
    fallback = numbers if numbers is not None else list(range(da.sizes[band_dim]))
    if all(names):
        return names
    if band_dim in da.coords and numbers is None:
        fallback = list(da[band_dim].values.tolist())
    return [name if name else other for name, other in zip(names, fallback, strict=True)]


def _match(card: ModelCard, da: xr.DataArray, band_dim: Hashable, bands: BandsArg) -> list[int]:
    """Position of the input band feeding each card band (one BandError listing all problems)."""
    names, numbers = band_labels(da, band_dim)
    count = da.sizes[band_dim]
    chosen = select_bands(count, bands, names=names, numbers=numbers, expected=card.bands)
    return list(chosen.positions)


def as_band_array(obj: xr.DataArray | xr.Dataset, card: ModelCard, bands: BandsArg) -> xr.DataArray:
    """Return ``obj`` as a lazy (band, y, x) DataArray ordered like ``card.bands``."""
    import rioxarray  # noqa: F401  (registers the .rio accessor; imported late: it is slow)

    if isinstance(bands, str):  # "nir=B08,red=B04,...", "nir,red,green" or a sensor layout
        bands = parse_bands(bands)
    if isinstance(obj, xr.Dataset):
        ydim, xdim = spatial_dims(obj)
        names = list(obj.data_vars)
        chosen: dict[str, Hashable]
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
    indices = _match(card, obj, band_dim, bands)
    da = obj.isel({band_dim: indices}).transpose(band_dim, ydim, xdim)
    return da.rename({band_dim: "band"}) if band_dim != "band" else da


def check_dtype(da: xr.DataArray) -> None:
    """Raise unless the data are real numbers (integer DN or float)."""
    if not (np.issubdtype(da.dtype, np.integer) or np.issubdtype(da.dtype, np.floating)):
        raise InputError(
            f"expected integer or floating-point imagery, got dtype {da.dtype}; convert with "
            "da.astype('float32')"
        )


class GridSteps(NamedTuple):
    """Signed coordinate step between neighbouring pixels along y and x (None: unknown)."""

    y: float | None
    x: float | None

    @property
    def north_up(self) -> bool:
        """Whether rows run north to south and columns west to east (or are unknown)."""
        return (self.y is None or self.y < 0) and (self.x is None or self.x > 0)


#: Largest deviation of one coordinate step from the mean step, as a fraction of a pixel.
GRID_TOLERANCE = 0.01


def _axis_step(da: xr.DataArray, dim: Hashable, what: str) -> float | None:
    """Return the regular step of ``da[dim]``; None without a coordinate or with one pixel."""
    if dim not in da.coords or da.sizes[dim] < 2:
        return None
    values = da[dim].values
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.number):
        raise InputError(
            f"{what}: the {dim!r} coordinate must be 1-D numbers (pixel centres), got dtype "
            f"{values.dtype} with dims {da[dim].dims}"
        )
    coords = values.astype(np.float64)
    if not np.isfinite(coords).all():
        raise InputError(f"{what}: the {dim!r} coordinate has NaN or infinite values")
    diffs = np.diff(coords)
    step = (coords[-1] - coords[0]) / (len(coords) - 1)
    # 1% of a pixel, plus the rounding of the stored values (float32 coordinates).
    rounding = 2 * float(np.spacing(np.abs(values).max()))
    tol = GRID_TOLERANCE * abs(step) + rounding
    rising, falling = diffs > 0, diffs < 0
    if rising.any() and falling.any():
        i = int(np.argmax(falling if rising.sum() >= falling.sum() else rising))
        kind, fix = "is not monotonic", f"sort it: da.sortby({dim!r})"
    elif not (rising | falling).all():
        i = int(np.argmin(rising | falling))
        kind, fix = "repeats a value", f"drop the repeats: da.drop_duplicates({dim!r})"
    elif (np.abs(diffs - step) > tol).any():
        i = int(np.argmax(np.abs(diffs - step) > tol))
        kind = "is not evenly spaced (a gap or an irregular step)"
        fix = (
            f"put it on a regular grid: da.reindex({dim}=<evenly spaced centres>, "
            "method='nearest', tolerance=<half a pixel>) (the gaps become NaN, i.e. "
            "nodata), or resample the source onto a regular grid"
        )
    else:
        return float(step)
    raise InputError(
        f"{what}: the {dim!r} coordinate {kind}: {coords[i]:.10g} -> {coords[i + 1]:.10g} at "
        f"index {i} (the mean step is {step:.6g}); xchm needs a regular pixel grid (windows "
        f"and chips are cut by pixel position). Fix: {fix}"
    )


def check_grid(da: xr.DataArray, what: str = "the input") -> GridSteps:
    """Raise :class:`InputError` unless y and x are regular grids; return their steps.

    Each spatial coordinate must be strictly monotonic with a constant step (to
    ``GRID_TOLERANCE`` of a pixel, plus the rounding of float32 values): shuffled,
    repeated or gapped coordinates mean the pixels are not where windows assume.
    Either direction is accepted; :attr:`GridSteps.north_up` tells which one it is.
    Only coordinates are read, never the data.
    """
    ydim, xdim = spatial_dims(da)
    return GridSteps(_axis_step(da, ydim, what), _axis_step(da, xdim, what))


def to_north_up(da: xr.DataArray, steps: GridSteps) -> xr.DataArray:
    """Reverse the y and/or x axes (lazily) so that rows run north to south, columns west to east.

    The transform is recomputed from the coordinates: a cached ``GeoTransform``
    (rioxarray's ``spatial_ref``) would describe the old order.
    """
    flips = {}
    ydim, xdim = spatial_dims(da)
    if steps.y is not None and steps.y > 0:
        flips[ydim] = slice(None, None, -1)
    if steps.x is not None and steps.x < 0:
        flips[xdim] = slice(None, None, -1)
    if not flips:
        return da
    out = da.isel(flips)
    return out.rio.write_transform(out.rio.transform(recalc=True))


def metres_per_unit(crs: Any, latitude: float | None) -> tuple[float, float] | None:
    """Metres per CRS unit along (y, x) at ``latitude``; None when unknown.

    Projected CRSs: their linear unit (metre, foot...). Geographic CRSs: metres per
    degree of latitude and of longitude on the WGS84 ellipsoid at ``latitude``.
    """
    if crs.is_projected:
        try:
            factor = float(crs.linear_units_factor[1])
        except Exception:  # rasterio cannot tell the unit
            return None
        return factor, factor
    if crs.is_geographic and latitude is not None and abs(latitude) <= 90:
        phi = np.radians(latitude)
        per_lat = 111_132.954 - 559.822 * np.cos(2 * phi) + 1.175 * np.cos(4 * phi)
        per_lon = 111_412.84 * np.cos(phi) - 93.5 * np.cos(3 * phi) + 0.118 * np.cos(5 * phi)
        return float(per_lat), float(abs(per_lon))
    return None


def pixel_size_m(da: xr.DataArray, steps: GridSteps | None = None) -> tuple[float, float] | None:
    """Return the pixel's (height, width) in metres from coordinates and CRS; None if unknown."""
    crs = da.rio.crs
    if crs is None:
        return None
    steps = steps if steps is not None else check_grid(da)
    sy, sx = steps
    if sy is None or sx is None:
        try:
            rx, ry = da.rio.resolution()
        except Exception:  # rioxarray cannot infer a resolution from 1-pixel axes
            return None
        sy = sy if sy is not None else ry
        sx = sx if sx is not None else rx
    ydim, _ = spatial_dims(da)
    latitude = float(np.mean(da[ydim].values[[0, -1]])) if ydim in da.coords else None
    factors = metres_per_unit(crs, latitude)
    if factors is None:
        return None
    return abs(sy) * factors[0], abs(sx) * factors[1]


def check_georeferencing(da: xr.DataArray, card: ModelCard, steps: GridSteps | None = None) -> None:
    """Warn when the CRS is missing or the pixel size (in metres) is far from the card's.

    Geographic CRSs get the same check, with degrees turned into metres at the
    scene's latitude (a degree of longitude shrinks towards the poles, so square
    degree pixels are not square on the ground).
    """
    crs = da.rio.crs
    if crs is None:
        warnings.warn(
            "the input has no CRS: the canopy height map will not be georeferenced; set one "
            "with da.rio.write_crs('EPSG:...')",
            XCHMWarning,
            stacklevel=4,
        )
        return
    size = pixel_size_m(da, steps)
    if size is None:
        return
    want = card.pixel_size
    if all(abs(s - want) <= 0.25 * want for s in size):
        return
    height, width = size
    shown = (
        f"{width:.3g} m"
        if np.isclose(width, height, rtol=0.01)
        else f"{width:.3g} m wide x {height:.3g} m tall"
    )
    crs_to = "da.rio.crs"
    if crs.is_geographic:
        steps = steps if steps is not None else check_grid(da)
        deg = " x ".join(f"{abs(s):.3g}" for s in (steps.x, steps.y) if s is not None)
        shown = f"{deg} degrees in the geographic CRS {crs.to_string()}, about {shown} here"
        crs_to = "da.rio.estimate_utm_crs()"
    elif crs.linear_units_factor[1] != 1:
        shown = f"{shown} (the CRS counts in {crs.linear_units_factor[0]})"
        crs_to = "da.rio.estimate_utm_crs()"
    warnings.warn(
        f"the input's pixels are {shown} but the model was trained at {want:g} m pixels; "
        f"heights will be off. Resample first: da.rio.reproject({crs_to}, resolution={want:g}, "
        "resampling=rasterio.enums.Resampling.average)",
        XCHMWarning,
        stacklevel=4,
    )
