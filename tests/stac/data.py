"""Small real STAC collections for the tests: local COGs and the items describing them.

``xchm-test`` (20 items): one 4-band uint16 COG asset ``image`` per item, with band
metadata (``eo:bands`` common names red, green, blue, nir; ``raster:bands`` nodata 0),
on two UTM zones (18N and 19N, either side of 72 W), two adjacent tiles per zone, five
dates over three years (summer and winter); a third of them lack ``eo:cloud_cover``.
Band values are 1000 (red), 2000 (green), 3000 (blue) and 4000 (nir), plus 10 x the
date's index in ``DATES`` (so a mosaic shows which date a pixel came from), plus a
texture; tile 1 of zone 18N on the newest date has a nodata (0) stripe, its first 16
columns.

``xchm-nometa`` (1 item): the same file without any band metadata (a trap).

``xchm-single`` (2 items): one single-band COG asset per band, named by its asset key
(``nir``, ``red``, ``green``, ``blue``), no band metadata.

``xchm-range`` (1 item): no ``datetime`` but a start/end range from August 2022 to July
2023, so a search for the summers of 2022 and 2023 finds it twice (de-duplication).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PIXEL = 2.0  # metres: the model card's pixel size (no resampling warning in predict)
SIZE = 128  # pixels per tile side
#: Tile origins: (EPSG, lon, lat) of the upper-left corner of tile 0 in each zone.
ZONES = {32618: (-72.30, 42.54), 32619: (-71.70, 42.54)}
#: (datetime, eo:cloud_cover or None)
DATES = [
    ("2021-07-15T15:30:00Z", 5.0),
    ("2022-01-20T15:30:00Z", 2.0),  # winter
    ("2022-08-10T15:30:00Z", None),  # no cloud metadata
    ("2022-12-18T15:30:00Z", 40.0),  # winter
    ("2023-07-20T15:30:00Z", 30.0),
]
BAND_BASE = {"red": 1000, "green": 2000, "blue": 3000, "nir": 4000}
FILE_BANDS = ("red", "green", "blue", "nir")  # order of the bands in each 4-band file
COLLECTION = "xchm-test"
NOMETA = "xchm-nometa"
SINGLE = "xchm-single"
RANGE = "xchm-range"
STRIPE = 16  # nodata columns of tile 1, zone 18N, newest date


@dataclass(frozen=True)
class Tile:
    """One tile's grid."""

    epsg: int
    index: int
    x0: float
    y0: float

    @property
    def transform(self) -> list[float]:
        """``proj:transform`` (affine a, b, c, d, e, f)."""
        return [PIXEL, 0.0, self.x0, 0.0, -PIXEL, self.y0]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the tile's CRS."""
        return (self.x0, self.y0 - SIZE * PIXEL, self.x0 + SIZE * PIXEL, self.y0)


def _pixels(seed: int, offset: int, nodata_stripe: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    texture = (200 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + rng.normal(0, 20, (SIZE, SIZE))).round()
    bands = [(BAND_BASE[b] + offset + texture).astype("uint16") for b in FILE_BANDS]
    data = np.stack(bands)
    if nodata_stripe:
        data[:, :, :STRIPE] = 0
    return data


def _write_cog(path: Path, data: np.ndarray, tile: Tile) -> None:
    import rasterio
    import rasterio.shutil
    from rasterio.transform import Affine

    tmp = path.with_suffix(".tmp.tif")
    profile = dict(
        driver="GTiff",
        width=SIZE,
        height=SIZE,
        count=data.shape[0],
        dtype=data.dtype,
        crs=f"EPSG:{tile.epsg}",
        transform=Affine(*tile.transform),
        nodata=0,
        tiled=True,
        blockxsize=64,
        blockysize=64,
    )
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
    rasterio.shutil.copy(tmp, path, driver="COG", compress="DEFLATE", blocksize=64)
    tmp.unlink()


def _tiles() -> list[Tile]:
    from pyproj import Transformer

    tiles = []
    for epsg, (lon, lat) in ZONES.items():
        x, y = Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
        x0, y0 = round(x / 256) * 256.0, round(y / 256) * 256.0
        for index in range(2):
            tiles.append(Tile(epsg, index, x0 + index * SIZE * PIXEL, y0))
    return tiles


def _footprint(tile: Tile) -> tuple[dict[str, Any], list[float]]:
    from pyproj import Transformer

    left, bottom, right, top = tile.bounds
    to_ll = Transformer.from_crs(tile.epsg, 4326, always_xy=True)
    ring = [(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)]
    coords = [list(to_ll.transform(x, y)) for x, y in ring]
    lons, lats = [c[0] for c in coords], [c[1] for c in coords]
    return {"type": "Polygon", "coordinates": [coords]}, [
        min(lons),
        min(lats),
        max(lons),
        max(lats),
    ]


EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
PROJ = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"


def _collection(cid: str, description: str) -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": cid,
        "description": description,
        "license": "CC0-1.0",
        "links": [],
        "extent": {
            "spatial": {"bbox": [[-73.0, 42.0, -71.0, 43.0]]},
            "temporal": {"interval": [["2021-01-01T00:00:00Z", "2023-12-31T23:59:59Z"]]},
        },
    }


def _item(cid: str, iid: str, tile: Tile, when: str, assets: dict[str, Any]) -> dict[str, Any]:
    geometry, bbox = _footprint(tile)
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [EO, PROJ, RASTER],
        "id": iid,
        "collection": cid,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "datetime": when,
            "proj:code": f"EPSG:{tile.epsg}",
            "proj:shape": [SIZE, SIZE],
            "proj:transform": tile.transform,
            "gsd": PIXEL,
        },
        "links": [],
        "assets": assets,
    }


def build(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write the COGs under ``root``; return (collections, items) as STAC dicts."""
    root.mkdir(parents=True, exist_ok=True)
    tiles = _tiles()
    cog = "image/tiff; application=geotiff; profile=cloud-optimized"
    eo_bands = [{"name": f"B{i + 1}", "common_name": b} for i, b in enumerate(FILE_BANDS)]
    raster_bands = [{"data_type": "uint16", "nodata": 0, "spatial_resolution": PIXEL}] * 4
    items = []
    for n, tile in enumerate(tiles):
        for k, (when, cloud) in enumerate(DATES):
            iid = f"z{tile.epsg}-t{tile.index}-{when[:10]}"
            path = root / f"{iid}.tif"
            stripe = tile.epsg == 32618 and tile.index == 1 and k == len(DATES) - 1
            _write_cog(path, _pixels(n, 10 * k, stripe), tile)
            asset = {
                "href": path.as_uri(),
                "type": cog,
                "roles": ["data"],
                "eo:bands": eo_bands,
                "raster:bands": raster_bands,
            }
            item = _item(COLLECTION, iid, tile, when, {"image": asset})
            if cloud is not None:
                item["properties"]["eo:cloud_cover"] = cloud
            items.append(item)
    # The trap: a 4-band asset with no band metadata at all.
    bare = tiles[0]
    href = (root / f"z{bare.epsg}-t0-{DATES[0][0][:10]}.tif").as_uri()
    items.append(
        _item(NOMETA, "nometa-1", bare, DATES[0][0], {"image": {"href": href, "type": cog}})
    )
    ranged = _item(
        RANGE, "range-1", bare, DATES[0][0], {"image": dict(items[0]["assets"]["image"])}
    )
    ranged["properties"].update(
        datetime=None,
        start_datetime="2022-08-25T00:00:00Z",
        end_datetime="2023-07-05T00:00:00Z",
    )
    items.append(ranged)
    # One single-band file per band, named by asset key.
    for tile in tiles[:2]:
        data = _pixels(100 + tile.index, 0, nodata_stripe=False)
        assets = {}
        for i, band in enumerate(FILE_BANDS):
            path = root / f"single_{tile.index}_{band}.tif"
            _write_cog(path, data[i : i + 1], tile)
            assets[band] = {"href": path.as_uri(), "type": cog, "roles": ["data"]}
        items.append(_item(SINGLE, f"single-{tile.index}", tile, DATES[4][0], assets))
    collections = [
        _collection(COLLECTION, "4-band test imagery with band metadata, two UTM zones"),
        _collection(NOMETA, "a 4-band asset without band metadata"),
        _collection(SINGLE, "one single-band asset per band"),
        _collection(RANGE, "an item with a start/end range instead of a datetime"),
    ]
    return collections, items


def bbox_of(epsg: int, tiles: tuple[int, ...] = (0, 1), *, inset: float = 1e-4) -> list[float]:
    """A lon/lat bbox inside the given tiles of one zone (for searches and loads)."""
    from pyproj import Transformer

    picked = [t for t in _tiles() if t.epsg == epsg and t.index in tiles]
    left = min(t.bounds[0] for t in picked)
    bottom = min(t.bounds[1] for t in picked)
    right = max(t.bounds[2] for t in picked)
    top = max(t.bounds[3] for t in picked)
    to_ll = Transformer.from_crs(epsg, 4326, always_xy=True)
    w, s, e, n = to_ll.transform_bounds(left, bottom, right, top)
    return [w + inset, s + inset, e - inset, n - inset]


#: Search/load boxes: the two tiles of zone 18N, of zone 19N, and both zones.
ZONE18 = bbox_of(32618)
ZONE19 = bbox_of(32619)
BOTH = [ZONE18[0], min(ZONE18[1], ZONE19[1]), ZONE19[2], max(ZONE18[3], ZONE19[3])]
