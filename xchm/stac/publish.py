"""``xchm.stac.item_for``: describe a predicted canopy height map as a STAC Item.

So that outputs can be catalogued next to their sources: the footprint (in degrees),
the time range of the source scenes, ``proj:*`` for the grid, a ``raster:bands`` entry
with unit metres, and a ``derived_from`` link to every source item. Nothing is
computed or read: only the map's coordinates and attributes are used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xchm._version import __version__
from xchm.errors import InputError
from xchm.stac._common import as_items, import_pystac, isoformat, item_time_range

if TYPE_CHECKING:
    import pystac

__all__ = ["item_for", "MEDIA_TYPES"]

#: Asset media types by output suffix.
MEDIA_TYPES = {
    ".tif": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".tiff": "image/tiff; application=geotiff; profile=cloud-optimized",
    ".zarr": "application/vnd+zarr",
}
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"


def _as_map(result: Any) -> Any:
    import xarray as xr

    if isinstance(result, xr.Dataset):
        if "chm" not in result.data_vars:
            raise InputError(
                f"the Dataset has no 'chm' variable (has {list(result.data_vars)}); pass the "
                "result of xchm.predict or xchm.predict_to_zarr"
            )
        result = result["chm"]
    if not isinstance(result, xr.DataArray) or result.ndim != 2:
        raise InputError(
            "result must be the (y, x) canopy height map from xchm.predict (or its Dataset), "
            f"got {type(result).__name__} with dims {getattr(result, 'dims', None)}"
        )
    if result.rio.crs is None:
        raise InputError(
            "the map has no CRS, so its footprint is unknown; set one with "
            "chm.rio.write_crs('EPSG:...') (xchm.stac.load sets it)"
        )
    return result


def _footprint(chm: Any) -> tuple[dict[str, Any], list[float]]:
    """Polygon and bbox in EPSG:4326 of the map's bounds (edges densified)."""
    from pyproj import CRS, Transformer

    left, bottom, right, top = chm.rio.bounds()
    to_ll = Transformer.from_crs(CRS.from_user_input(chm.rio.crs.to_wkt()), 4326, always_xy=True)
    steps = 16
    ring = (
        [(left + (right - left) * i / steps, bottom) for i in range(steps)]
        + [(right, bottom + (top - bottom) * i / steps) for i in range(steps)]
        + [(right - (right - left) * i / steps, top) for i in range(steps)]
        + [(left, top - (top - bottom) * i / steps) for i in range(steps)]
    )
    xs, ys = to_ll.transform([p[0] for p in ring], [p[1] for p in ring])
    coords = [[float(x), float(y)] for x, y in zip(xs, ys, strict=True)]
    coords.append(coords[0])
    bbox = [min(xs), min(ys), max(xs), max(ys)]
    return {"type": "Polygon", "coordinates": [coords]}, [float(v) for v in bbox]


def item_for(
    result: Any,
    *,
    href: str | os.PathLike[str],
    items: Any,
    id: str | None = None,
    collection: str | None = None,
    int16_dm: bool = False,
    properties: dict[str, Any] | None = None,
) -> pystac.Item:
    """Describe a canopy height map as a STAC Item linked to the items it came from.

    Parameters
    ----------
    result
        The map from :func:`xchm.predict` (or :func:`xchm.predict_to_zarr`): a (y, x)
        DataArray with a CRS, or a Dataset with ``chm``.
    href
        Where the map is published (the COG or Zarr store): the ``chm`` asset's href.
    items
        The source items (what :func:`xchm.stac.search` returned and was loaded); each
        becomes a ``derived_from`` link, and their dates the Item's time range.
    id
        Item id (default: the file name without suffix).
    collection
        Collection id to record in the Item.
    int16_dm
        The file holds int16 decimetres with nodata -9999 (``write_cog(int16_dm=True)``)
        rather than float32 metres with NaN.
    properties
        Extra properties to record.

    Returns
    -------
    pystac.Item
        Geometry and bbox in degrees; ``start_datetime``/``end_datetime`` of the
        sources; ``proj:code``, ``proj:shape``, ``proj:transform``, ``proj:bbox``; the
        ``chm`` asset with ``raster:bands`` (unit ``m``); ``derived_from`` links;
        ``processing:software`` and the model (``xchm:model``, ``xchm:card_digest``,
        ``xchm:window``, ``xchm:overlap``, ``xchm:precision``).

    Raises
    ------
    InputError
        Not a map, no CRS, no items, or a source item without a self link.

    Examples
    --------
    >>> import numpy as np, pystac, rioxarray, xarray as xr, datetime as dt
    >>> chm = xr.DataArray(np.zeros((64, 64), "float32"), dims=("y", "x"), coords={
    ...     "y": 4713000 - 2.0 * np.arange(64), "x": 721000 + 2.0 * np.arange(64)}
    ...     ).rio.write_crs("EPSG:32618")
    >>> source = pystac.Item("scene-1", None, None, dt.datetime(2023, 7, 20), {},
    ...                      href="https://example.com/items/scene-1")
    >>> item = item_for(chm, href="chm.tif", items=[source])
    >>> item.id, item.properties["proj:code"], item.properties["start_datetime"]
    ('chm', 'EPSG:32618', '2023-07-20T00:00:00Z')
    >>> item.assets["chm"].extra_fields["raster:bands"][0]["unit"]
    'm'
    >>> [link.rel for link in item.links]
    ['derived_from']
    """
    pystac = import_pystac()
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension

    chm = _as_map(result)
    sources = as_items(items, "source items")
    orphans = [i.id for i in sources if not i.get_self_href()]
    if orphans:
        raise InputError(
            f"source item(s) {orphans[:5]} have no self link to point derived_from at; pass "
            "the items as returned by xchm.stac.search (API items have self links), or set one "
            "with item.set_self_href(url)"
        )
    path = os.fspath(href)
    if not path:
        raise InputError("href must be where the map is published, e.g. 's3://bucket/chm.tif'")
    suffix = Path(path.rstrip("/")).suffix.lower()
    geometry, bbox = _footprint(chm)
    ranges = [item_time_range(i) for i in sources]
    start, end = min(r[0] for r in ranges), max(r[1] for r in ranges)
    res_x, res_y = (abs(float(v)) for v in chm.rio.resolution())
    props: dict[str, Any] = {
        "start_datetime": isoformat(start),
        "end_datetime": isoformat(end),
        "gsd": res_x,
        "processing:software": {"xchm": chm.attrs.get("xchm_version", __version__)},
        "processing:lineage": (
            f"canopy height predicted by xchm from {len(sources)} STAC item(s)"
            + (f" with model {chm.attrs['xchm_model']}" if "xchm_model" in chm.attrs else "")
        ),
    }
    keys = ("xchm_model", "xchm_card_digest", "xchm_window", "xchm_overlap", "xchm_precision")
    for key in keys:
        if key in chm.attrs:
            props[key.replace("xchm_", "xchm:")] = chm.attrs[key]
    props.update(properties or {})
    item = pystac.Item(
        id=id or Path(path.rstrip("/")).stem or "chm",
        geometry=geometry,
        bbox=bbox,
        datetime=None,
        properties=props,
        start_datetime=start,
        end_datetime=end,
        stac_extensions=[PROCESSING],
        collection=collection,
    )
    crs = chm.rio.crs
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg()
    if epsg is not None:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.wkt2 = crs.to_wkt()
    proj.shape = [int(chm.rio.height), int(chm.rio.width)]
    proj.transform = [float(v) for v in list(chm.rio.transform())[:6]]
    proj.bbox = [float(v) for v in chm.rio.bounds()]
    band: dict[str, Any] = (
        {"data_type": "int16", "nodata": -9999, "scale": 0.1, "offset": 0.0}
        if int16_dm
        else {"data_type": "float32", "nodata": "nan"}
    )
    band.update(unit="m", spatial_resolution=res_x)
    asset = pystac.Asset(
        href=path,
        media_type=MEDIA_TYPES.get(suffix),
        roles=["data"],
        title="canopy height above ground (m)",
        extra_fields={"raster:bands": [band]},
    )
    item.add_asset("chm", asset)
    RasterExtension.ext(asset, add_if_missing=True)
    for source in sources:
        item.add_link(
            pystac.Link(
                rel="derived_from",
                target=source.get_self_href(),
                media_type="application/geo+json",
                title=source.id,
            )
        )
    if res_y and abs(res_y - res_x) > 1e-9 * res_x:
        item.properties["gsd"] = max(res_x, res_y)
    return item
