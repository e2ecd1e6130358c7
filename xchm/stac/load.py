"""``xchm.stac.load``: STAC items to one lazy (band, y, x) image, ready for ``predict``.

Built on odc-stac (stackstac is unmaintained and pins pandas<3). What it adds, each
for a trap measured with odc-stac 0.5.3 (``../shared/docs/FINDINGS.md``):

- Bands are found by name through band metadata and asset keys (:mod:`xchm.stac.bands`);
  a multi-band asset without band metadata is an error (odc-stac loads its band 1).
- Items in several CRSs without ``crs=`` are an error naming the CRSs (odc-stac makes
  one canvas across UTM zones: 2312 x 397,744 px for two small scenes).
- The output grid is computed before anything is loaded, and one above ``max_pixels``
  is an error (an accidental continent-sized canvas), unless raised explicitly.
- Scenes of several dates are mosaicked into one image (most recent valid pixel by
  default); pixels are float32 with NaN where every scene is missing (the assets'
  nodata), so ``predict`` masks them.
- Chunks are multiples of the model window (64 px) with all bands in one chunk: what
  ``predict`` wants, with no rechunking.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from xchm._optional import require
from xchm.errors import InputError
from xchm.stac._common import as_items, check_bbox, isoformat, item_time_range
from xchm.stac.bands import Source, check_undescribed, resolve

if TYPE_CHECKING:
    import pystac
    import xarray as xr

__all__ = ["load", "DEFAULT_CHUNKS", "DEFAULT_MAX_PIXELS", "WINDOW"]

logger = logging.getLogger(__name__)

#: The model window in pixels: chunks are multiples of it.
WINDOW = 64
#: Spatial chunk side (pixels): large enough that the predict halo costs little.
DEFAULT_CHUNKS = 2048
#: Output grids above this many pixels (per band) are refused unless raised: 1e10 px is
#: 3,600 km2 at 0.6 m or 40,000 km2 at 2 m.
DEFAULT_MAX_PIXELS = 10_000_000_000


def _check_crs(crs: Any) -> Any:
    """``crs`` as odc-stac takes it: None, ``"utm"``, or a string pyproj understands."""
    if crs is None or (isinstance(crs, str) and crs.lower() == "utm"):
        return crs
    if isinstance(crs, int) and not isinstance(crs, bool):
        crs = f"EPSG:{crs}"
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        CRS.from_user_input(crs)
    except CRSError as err:
        raise InputError(
            f"crs={crs!r} is not a CRS ({err}); pass e.g. 'EPSG:32618', 32618 or 'utm'"
        ) from err
    return crs if isinstance(crs, str) else str(crs)


def _check_args(chunks: Any, resolution: Any, max_pixels: Any, combine: Any, groupby: Any) -> None:
    bad = isinstance(chunks, bool) or not isinstance(chunks, int)
    if bad or chunks < WINDOW or chunks % WINDOW:
        near = max(WINDOW, round(chunks / WINDOW) * WINDOW) if isinstance(chunks, int) else 2048
        raise InputError(
            f"chunks must be a positive multiple of the {WINDOW}-px model window (e.g. 2048), "
            f"got {chunks!r}; try chunks={near}"
        )
    if resolution is not None and (
        isinstance(resolution, bool)
        or not isinstance(resolution, int | float)
        or not resolution > 0
        or not math.isfinite(resolution)
    ):
        raise InputError(
            f"resolution is the pixel size in units of the output CRS (metres for UTM), e.g. 2.0; "
            f"got {resolution!r}"
        )
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int | float) or max_pixels <= 0
    ):
        raise InputError(f"max_pixels must be a positive number or None, got {max_pixels!r}")
    if combine not in ("first", "mean", "median"):
        raise InputError(f"combine must be 'first', 'mean' or 'median', got {combine!r}")
    if not (isinstance(groupby, str) and groupby) and not callable(groupby):
        raise InputError(
            "groupby must be 'solar_day', 'time', 'id', an item property name or a function, "
            f"got {groupby!r}"
        )


def _patch_positions(
    items: list[pystac.Item], sources: dict[str, Source]
) -> tuple[list[pystac.Item], dict[str, Source]]:
    """Give assets without band metadata a band count, so odc-stac can load band N."""
    need: dict[str, int] = {}
    for s in sources.values():
        if s.count is None and s.explicit:
            need[s.asset] = max(need.get(s.asset, 1), s.index)
    need = {k: n for k, n in need.items() if n > 1}
    if not need:
        return items, sources
    patched = []
    for item in items:
        clone = item.clone()
        for key, n in need.items():
            clone.assets[key].extra_fields["raster:bands"] = [{} for _ in range(n)]
        patched.append(clone)
    sources = {
        name: Source(s.asset, s.index, need[s.asset], s.explicit) if s.asset in need else s
        for name, s in sources.items()
    }
    return patched, sources


def _crs_of(parsed: Sequence[Any], odc_bands: list[str], crs: Any) -> None:
    """Refuse items in several CRSs (or without one) unless ``crs`` is given."""
    if crs is not None:
        return
    found: Counter[str] = Counter()
    for p in parsed:
        item_crs = p.crs(odc_bands)
        found[str(item_crs) if item_crs is not None else "none"] += 1
    if "none" in found:
        raise InputError(
            f"{found['none']} item(s) have no projection metadata (proj:code or proj:epsg with "
            "proj:transform/proj:shape); pass crs= (e.g. 'EPSG:32618') and resolution="
        )
    if len(found) > 1:
        listing = ", ".join(f"{c} ({n} items)" for c, n in found.most_common())
        common = found.most_common(1)[0][0]
        raise InputError(
            f"the items are in {len(found)} CRSs: {listing}; pass crs={common!r} (xchm predict: "
            "--crs; the most common) to put them all on one grid, or load each zone separately "
            "(a bbox inside one zone); without crs= one canvas would span both zones"
        )


def _check_overlap(items: list[pystac.Item], bbox: tuple[float, float, float, float]) -> None:
    w, s, e, n = bbox
    for item in items:
        if item.bbox is None or len(item.bbox) < 4:
            return  # cannot tell: let odc-stac decide
        iw, i_s, ie, i_n = item.bbox[0], item.bbox[1], item.bbox[-2], item.bbox[-1]
        if iw <= e and ie >= w and i_s <= n and i_n >= s:
            return
    raise InputError(
        f"bbox={bbox} overlaps none of the {len(items)} items; pass the bbox you searched "
        "with, or search again"
    )


def _budget(gbox: Any, max_pixels: float | None) -> None:
    height, width = gbox.shape.y, gbox.shape.x
    if max_pixels is None or height * width <= max_pixels:
        return
    res = abs(float(gbox.resolution.x))
    area = ""
    if gbox.crs is not None and gbox.crs.units[0] in ("metre", "m"):
        area = f", {height * width * res * res / 1e6:,.0f} km2 at {res:g} m"
    raise InputError(
        f"the output grid would be {height:,} x {width:,} px ({height * width / 1e9:.1f} "
        f"gigapixels{area}), above max_pixels={int(max_pixels):,}; pass bbox= to load a "
        "smaller area or resolution= for larger pixels, or raise max_pixels (None: no limit) "
        "if you mean it"
    )


def _mosaic(block: np.ndarray, combine: str) -> np.ndarray:
    """(band, time, y, x) newest first -> (band, y, x): pixels valid in every band."""
    valid = np.isfinite(block).all(axis=0)  # (time, y, x)
    if combine == "first":
        first = valid.argmax(axis=0)  # newest valid date per pixel
        out = np.take_along_axis(block, first[None, None], axis=1)[:, 0]
        out[:, ~valid.any(axis=0)] = np.nan
        return out.astype(np.float32, copy=False)
    masked = np.where(valid[None], block, np.nan)
    with warnings.catch_warnings():  # all-NaN pixels give NaN, which is what we want
        warnings.simplefilter("ignore", RuntimeWarning)
        reduced = np.nanmean(masked, axis=1) if combine == "mean" else np.nanmedian(masked, axis=1)
    return reduced.astype(np.float32, copy=False)


def load(
    items: Any,
    *,
    bands: Sequence[str] | dict[str, Any] = ("nir", "red", "green"),
    resolution: float | None = None,
    crs: Any = None,
    bbox: Sequence[float] | None = None,
    chunks: int = DEFAULT_CHUNKS,
    groupby: str | Callable[..., Any] = "solar_day",
    combine: Literal["first", "mean", "median"] = "first",
    resampling: str = "nearest",
    nodata: float | None = None,
    max_pixels: float | None = DEFAULT_MAX_PIXELS,
    patch_url: Callable[[str], str] | None = None,
) -> xr.DataArray:
    """Load STAC items as one lazy (band, y, x) image with CRS and nodata, for ``predict``.

    Parameters
    ----------
    items
        What :func:`xchm.stac.search` returns (an ``ItemCollection``), or Items.
    bands
        Bands to load, in order: names matched against band metadata (``eo:bands``
        names and common names such as nir, red, green, blue) and asset keys; or a
        mapping ``{output name: band name | "asset.N" | ("asset", N)}``, where
        ``"image.4"`` is band 4 of asset ``image`` (for assets without band metadata).
    resolution
        Pixel size in units of the output CRS (default: the items' own). The model card
        says what the model was trained at (2 m for the reference models).
    crs
        Output CRS (``"EPSG:32618"``, ``"utm"``); required when the items are in several.
    bbox
        (west, south, east, north) in degrees to cut out; default: all the items cover.
    chunks
        Spatial chunk side in pixels, a multiple of the 64-px window (bands: one chunk).
    groupby
        How odc-stac groups items into dates: ``"solar_day"`` (default), ``"time"``,
        ``"id"``, a property name or a function.
    combine
        How dates are mosaicked: ``"first"`` (the most recent valid pixel), ``"mean"``
        or ``"median"`` (of the valid dates); a pixel is valid if every band is.
    resampling
        Resampling when reprojecting (``"nearest"``, ``"bilinear"``...).
    nodata
        Missing-data value of the assets when their metadata does not say.
    max_pixels
        Refuse output grids larger than this many pixels (``None``: no limit).
    patch_url
        Called on each asset URL before reading, e.g. ``planetary_computer.sign`` when
        the search's signatures may have expired.

    Returns
    -------
    xarray.DataArray
        (band, y, x) float32, dask-backed, band coordinate = the output band names, CRS
        and transform set (rioxarray), nodata NaN; ``attrs["xchm_stac_items"]`` lists
        the item ids and ``attrs["xchm_stac_datetime"]`` their time range.

    Raises
    ------
    InputError
        No items; a bad argument; items in several CRSs without ``crs=``; a grid above
        ``max_pixels``; a ``bbox`` that misses every item.
    BandError
        A band that is missing, ambiguous, or in a multi-band asset without metadata.

    Notes
    -----
    Lazy: reads only item metadata (and, for assets without band metadata, one file
    header); pixels are read chunk by chunk when computed. A chunk needs about
    ``bands x dates x chunks**2 x 4`` bytes while it is mosaicked.

    Examples
    --------
    >>> import xchm, xchm.stac
    >>> items = xchm.stac.search(bbox, collections="naip", years=2022,  # doctest: +SKIP
    ...                          catalog=URL, missing_cloud_cover="keep")
    >>> image = xchm.stac.load(items, resolution=2.0, crs="utm")  # doctest: +SKIP
    >>> chm = xchm.predict(image, "my-checkpoint/")  # doctest: +SKIP
    >>> xchm.stac.load([])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xchm.errors.InputError: no items: the search found nothing; ...
    """
    items = as_items(items)
    _check_args(chunks, resolution, max_pixels, combine, groupby)
    crs = _check_crs(crs)
    box = check_bbox(bbox) if bbox is not None else None
    if box is not None:
        _check_overlap(items, box)
    if nodata is not None and not isinstance(nodata, int | float):
        raise InputError(f"nodata must be a number, got {nodata!r}")
    if patch_url is not None and not callable(patch_url):
        raise InputError(f"patch_url must be a callable str -> str, got {patch_url!r}")
    sources = resolve(items, bands)
    check_undescribed(items[0], sources, patch_url=patch_url)
    items, sources = _patch_positions(items, sources)
    odc_stac = require("odc.stac")
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    odc_bands = list(dict.fromkeys(s.odc_name for s in sources.values()))
    parsed = list(odc_stac.parse_items(items))
    _crs_of(parsed, odc_bands, crs)
    try:
        gbox = odc_stac.output_geobox(
            parsed, bands=odc_bands, crs=crs, resolution=resolution, bbox=box
        )
    except ValueError as err:
        raise InputError(
            f"cannot work out the output grid ({err}); pass crs= and resolution="
        ) from err
    if gbox is None:
        raise InputError(
            "cannot work out the output grid from the items; pass crs= and resolution="
        )
    _budget(gbox, max_pixels)

    ds = odc_stac.load(
        items,
        bands=odc_bands,
        geobox=gbox,
        chunks={"x": chunks, "y": chunks},
        groupby=groupby,
        resampling=resampling,
        patch_url=patch_url,
        **({"nodata": nodata} if nodata is not None else {}),
    )
    layers = []
    for name, source in sources.items():
        raw = ds[source.odc_name]
        value = raw.attrs.get("nodata", nodata)
        layer = raw.astype(np.float32)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            layer = layer.where(raw != value)
        layers.append(layer.expand_dims(band=[name]))
    stack = xr.concat(layers, dim="band").sortby("time", ascending=False)
    stack = stack.chunk({"band": -1, "time": -1})
    if stack.sizes["time"] == 1:
        data = stack.data[:, 0]
    else:
        data = stack.data.map_blocks(_mosaic, combine, drop_axis=1, dtype=np.float32)
    spatial = {k: v for k, v in stack.coords.items() if "time" not in v.dims}
    image = xr.DataArray(data, dims=("band", "y", "x"), coords=spatial, name="image")
    out_crs = f"EPSG:{gbox.crs.epsg}" if gbox.crs.epsg is not None else gbox.crs.to_wkt()
    image = image.rio.write_crs(out_crs).rio.write_nodata(np.nan, encoded=False)
    ranges = [item_time_range(i) for i in items]
    image.attrs.update(
        long_name=tuple(sources),
        xchm_stac_items=[i.id for i in items],
        xchm_stac_datetime=f"{isoformat(min(r[0] for r in ranges))}/"
        f"{isoformat(max(r[1] for r in ranges))}",
    )
    logger.info(
        "loaded %d items (%d dates) as %s px in %s",
        len(items),
        stack.sizes["time"],
        image.shape,
        gbox.crs,
    )
    return image
