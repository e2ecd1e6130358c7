"""xchm.stac.load on items from the real STAC API, whose assets are local COGs."""

from __future__ import annotations

import numpy as np
import pystac
import pytest
import rasterio

from tests.stac import data
from xchm.errors import BandError, InputError
from xchm.stac import load, search

pytestmark = [
    # odc-geo 0.5.3 (inside odc.stac.load) still calls shapely.ops.transform, which
    # shapely 2.2 deprecates; harmless, and not ours to fix.
    pytest.mark.filterwarnings(
        r"ignore:The 'shapely\.ops\.transform\(\)' function is deprecated:DeprecationWarning"
    ),
    # rasterio 1.4 warns about the in-memory arrays that odc-loader reprojects between
    # (they are georeferenced by the transforms passed to reproject); harmless.
    pytest.mark.filterwarnings(
        "ignore:Dataset has no geotransform, gcps, or rpcs:rasterio.errors.NotGeoreferencedWarning"
    ),
]


def find(stac, bbox=data.ZONE18, **kwargs):
    kwargs.setdefault("collections", data.COLLECTION)
    kwargs.setdefault("missing_cloud_cover", "keep")
    return search(bbox, catalog=stac.url, retries=1, backoff=0.01, **kwargs)


def band_of(stac, item_id: str, band: str) -> np.ndarray:
    """A band of an item's COG as float32 with NaN for nodata (0)."""
    with rasterio.open(stac.root / f"{item_id}.tif") as src:
        values = src.read(data.FILE_BANDS.index(band) + 1).astype("float32")
    values[values == 0] = np.nan
    return values


@pytest.fixture(scope="module")
def summer_2023(stac):
    return find(stac, years=2023)  # both tiles of zone 18N, one date


def test_load__is_band_y_x_with_crs_nodata_and_predict_chunks(summer_2023):
    image = load(summer_2023, chunks=128)
    assert image.dims == ("band", "y", "x")
    assert list(image.band.values) == ["nir", "red", "green"]
    assert image.shape == (3, data.SIZE, 2 * data.SIZE)
    assert image.dtype == np.float32
    assert image.rio.crs.to_epsg() == 32618
    assert np.isnan(image.rio.nodata)
    assert image.data.chunks == ((3,), (128,), (128, 128))  # bands in one chunk
    assert image.rio.resolution() == (data.PIXEL, -data.PIXEL)
    assert sorted(image.attrs["xchm_stac_items"]) == [
        "z32618-t0-2023-07-20",
        "z32618-t1-2023-07-20",
    ]
    assert image.attrs["xchm_stac_datetime"] == "2023-07-20T15:30:00Z/2023-07-20T15:30:00Z"


def test_load__default_chunks_are_window_multiples(summer_2023):
    image = load(summer_2023)
    assert image.data.chunks == ((3,), (data.SIZE,), (2 * data.SIZE,))  # one 2048 chunk
    assert image.attrs["long_name"] == ("nir", "red", "green")


def test_load__maps_bands_through_common_names(stac, summer_2023):
    image = load(summer_2023, bands=("nir", "red", "green", "blue")).compute()
    for band in ("nir", "red", "green", "blue"):
        expected = band_of(stac, "z32618-t0-2023-07-20", band)
        np.testing.assert_array_equal(image.sel(band=band).values[:, : data.SIZE], expected)


def test_load__maps_bands_through_band_names(stac, summer_2023):
    image = load(summer_2023, bands={"nir": "B4", "red": "b1"}).compute()
    assert list(image.band.values) == ["nir", "red"]
    expected = band_of(stac, "z32618-t0-2023-07-20", "nir")
    np.testing.assert_array_equal(image.sel(band="nir").values[:, : data.SIZE], expected)


def test_load__nodata_becomes_nan(summer_2023):
    nir = load(summer_2023).sel(band="nir").values
    stripe = slice(data.SIZE, data.SIZE + data.STRIPE)  # tile 1's first columns
    assert np.isnan(nir[:, stripe]).all()
    assert np.isfinite(np.delete(nir, np.r_[stripe], axis=1)).all()


def test_load__mosaic_takes_the_most_recent_valid_pixel(stac):
    items = find(stac, datetime="2022-08-01/2023-12-31", months=None)
    assert {i.id[-10:] for i in items} == {"2022-08-10", "2022-12-18", "2023-07-20"}
    nir = load(items).sel(band="nir").values
    newest = band_of(stac, "z32618-t1-2023-07-20", "nir")
    older = band_of(stac, "z32618-t1-2022-12-18", "nir")  # fills the newest one's stripe
    np.testing.assert_array_equal(nir[:, data.SIZE :], np.where(np.isnan(newest), older, newest))


def test_load__mosaic_can_average_the_dates(stac):
    items = find(stac, datetime="2022-08-01/2022-12-31", months=None)
    nir = load(items, combine="mean").sel(band="nir").values
    dates = ("2022-08-10", "2022-12-18")
    expected = np.mean([band_of(stac, f"z32618-t0-{d}", "nir") for d in dates], axis=0)
    np.testing.assert_allclose(nir[:, : data.SIZE], expected, rtol=1e-6)


def test_load__several_crs_without_crs_is_an_error(stac):
    items = find(stac, data.BOTH, years=2023)
    with pytest.raises(InputError, match=r"2 CRSs: EPSG:3261[89] .*EPSG:3261[89].*crs="):
        load(items)


def test_load__several_crs_go_onto_the_crs_given(stac):
    items = find(stac, data.BOTH, years=2023)
    image = load(items, crs="EPSG:32618", max_pixels=None)
    assert image.rio.crs.to_epsg() == 32618
    assert image.shape[2] > 20_000  # 0.6 degrees of longitude at 2 m: lazy, never computed
    zone19 = image.rio.clip_box(*data.bbox_of(32619, (0,)), crs="EPSG:4326")
    assert np.isfinite(zone19.sel(band="nir").values).mean() > 0.5


def test_load__pixel_budget_guards_against_huge_grids(stac):
    items = find(stac, data.BOTH, years=2023)
    with pytest.raises(
        InputError, match=r"would be [\d,]+ x [\d,]+ px .*above max_pixels=1,000,000"
    ):
        load(items, crs="EPSG:32618", max_pixels=1_000_000)


def test_load__no_items_is_an_error():
    with pytest.raises(InputError, match="no items: the search found nothing"):
        load(pystac.ItemCollection([]))


def test_load__multi_band_asset_without_band_metadata_is_an_error(stac):
    items = find(stac, collections=data.NOMETA, months=None)
    with pytest.raises(BandError, match=r"'image' has no band metadata .*\{'nir': 'image.4'"):
        load(items)


def test_load__multi_band_asset_without_band_metadata_is_not_one_band(stac):
    items = find(stac, collections=data.NOMETA, months=None)
    with pytest.raises(BandError, match=r"'image' .* holds 4 bands but has no band metadata"):
        load(items, bands={"nir": "image"})  # odc-stac would load band 1 as "nir"


def test_load__band_positions_for_an_asset_without_metadata(stac):
    items = find(stac, collections=data.NOMETA, months=None)
    image = load(items, bands={"nir": "image.4", "red": "image.1", "green": ("image", 2)})
    expected = band_of(stac, "z32618-t0-2021-07-15", "nir")
    np.testing.assert_array_equal(image.sel(band="nir").values, expected)


def test_load__single_band_assets_by_asset_key(stac):
    items = find(stac, collections=data.SINGLE, months=None)
    image = load(items)
    with rasterio.open(stac.root / "single_0_nir.tif") as src:
        expected = src.read(1).astype("float32")
    np.testing.assert_array_equal(image.sel(band="nir").values[:, : data.SIZE], expected)


def test_load__unknown_band_lists_the_assets(summer_2023):
    with pytest.raises(BandError, match=r"no band 'swir'; its assets: image \[b1/red, b2/green"):
        load(summer_2023, bands=("nir", "swir"))


def test_load__band_position_past_the_last_band_is_an_error(summer_2023):
    with pytest.raises(BandError, match=r"asset 'image' .* has 4 bands, not 5"):
        load(summer_2023, bands={"nir": "image.5"})


def test_load__bbox_cuts_out_one_tile(summer_2023):
    image = load(summer_2023, bbox=data.bbox_of(32618, (0,)))  # 1e-4 degrees inside tile 0
    assert data.SIZE - 8 <= image.shape[1] <= data.SIZE
    assert data.SIZE - 8 <= image.shape[2] <= data.SIZE  # not both tiles


def test_load__resolution_resamples(summer_2023):
    image = load(summer_2023, resolution=4.0)
    assert image.shape == (3, data.SIZE // 2, data.SIZE)
    assert image.rio.resolution() == (4.0, -4.0)


def test_load__reads_no_pixels(summer_2023):
    moved = [item.clone() for item in summer_2023]
    for item in moved:
        item.assets["image"].href = item.assets["image"].href.replace(".tif", "-gone.tif")
    image = load(moved)  # only metadata: the missing files are not noticed yet
    with pytest.raises(Exception, match="gone"):
        image.compute()


BAD = {
    "chunks-not-window-multiple": ({"chunks": 100}, r"multiple of the 64-px model window.*128"),
    "chunks-zero": ({"chunks": 0}, r"multiple of the 64-px"),
    "resolution-negative": ({"resolution": -2.0}, r"resolution is the pixel size"),
    "combine-unknown": ({"combine": "max"}, r"'first', 'mean' or 'median'"),
    "bbox-elsewhere": ({"bbox": [10.0, 10.0, 11.0, 11.0]}, r"overlaps none of the 2 items"),
    "bbox-metres": ({"bbox": [721664, 4712960, 722176, 4713216]}, r"looks like metres"),
    "max-pixels-zero": ({"max_pixels": 0}, r"max_pixels must be a positive number"),
    "nodata-text": ({"nodata": "zero"}, r"nodata must be a number"),
    "bands-empty": ({"bands": ()}, r"bands must name the bands"),
    "bands-twice": ({"bands": {"nir": "nir", "red": "nir", "x": ("image", 0)}}, r"start at 1"),
    "patch-url-not-callable": ({"patch_url": "sign"}, r"patch_url must be a callable"),
    "crs-unknown": ({"crs": "EPSG:99999"}, r"crs='EPSG:99999' is not a CRS"),
    "groupby-not-a-key": ({"groupby": 3}, r"groupby must be 'solar_day'"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_load__rejects_bad_input(summer_2023, case):
    kwargs, match = case
    with pytest.raises(InputError, match=match):
        load(summer_2023, **kwargs)


def test_load__items_must_be_items():
    with pytest.raises(InputError, match="pystac.ItemCollection or a list of pystac.Item"):
        load("items.json")
