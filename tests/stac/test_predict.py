"""Search -> load -> predict -> publish end to end, on the real STAC API; CLI and example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr

import xchm
from tests.stac import data
from xchm.cli import main
from xchm.errors import InputError
from xchm.models import band_statistics
from xchm.stac import item_for, load, search

pytestmark = [
    # odc-geo 0.5.3 (inside odc.stac.load) still calls shapely.ops.transform, which
    # shapely 2.2 deprecates; harmless, and not ours to fix.
    pytest.mark.filterwarnings(
        r"ignore:The 'shapely\.ops\.transform\(\)' function is deprecated:DeprecationWarning"
    ),
]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stac_predict.py"
STRIPE = slice(data.SIZE, data.SIZE + data.STRIPE)


@pytest.fixture(scope="module")
def items(stac):
    return search(data.ZONE18, collections=data.COLLECTION, catalog=stac.url, years=2023, retries=1)


@pytest.fixture(scope="module")
def chm(items):
    return xchm.predict(load(items, chunks=128), "test-tiny")


def test_predict__search_load_predict_end_to_end(chm):
    assert hasattr(chm.data, "dask")  # lazy until computed
    heights = chm.values
    assert heights.shape == (data.SIZE, 2 * data.SIZE)
    assert chm.rio.crs.to_epsg() == 32618
    assert np.isnan(heights[:, STRIPE]).all()  # the scene's nodata stays missing
    rest = np.delete(heights, np.r_[STRIPE], axis=1)
    assert np.isfinite(rest).all() and (rest >= 0).all()


def test_predict__other_bands_with_their_statistics(items):
    image = load(items, bands=("red", "green", "blue")).compute()
    model = xchm.load_model(
        "test-tiny",
        bands=("red", "green", "blue"),
        statistics=band_statistics(image.values),
        pixel_size=data.PIXEL,
    )
    heights = xchm.predict(image, model).values
    assert np.isfinite(np.delete(heights, np.r_[STRIPE], axis=1)).all()


def test_item_for__describes_the_map_and_links_its_sources(stac, chm, items, tmp_path):
    item = item_for(chm, href=(tmp_path / "chm.tif").as_uri(), items=items)
    assert item.id == "chm"
    w, s, e, n = item.bbox
    zw, zs, ze, zn = data.ZONE18
    assert w < zw < ze < e and s < zs < zn < n  # the tiles, a little more than the inset box
    assert item.properties["start_datetime"] == "2023-07-20T15:30:00Z"
    assert item.properties["end_datetime"] == "2023-07-20T15:30:00Z"
    assert item.datetime is None
    assert item.properties["proj:code"] == "EPSG:32618"
    assert item.properties["proj:shape"] == [data.SIZE, 2 * data.SIZE]
    assert item.properties["proj:transform"][:3] == [data.PIXEL, 0.0, chm.x.values[0] - 1.0]
    assert item.properties["xchm:model"] == "test-tiny"
    assert item.properties["xchm:precision"] == chm.attrs["xchm_precision"] == "auto"
    band = item.assets["chm"].extra_fields["raster:bands"][0]
    assert band == {
        "data_type": "float32",
        "nodata": "nan",
        "unit": "m",
        "spatial_resolution": data.PIXEL,
    }
    sources = {link.href for link in item.get_links("derived_from")}
    assert sources == {i.get_self_href() for i in items}
    assert all(
        href.startswith(f"{stac.url}/collections/{data.COLLECTION}/items/") for href in sources
    )
    text = json.dumps(item.to_dict(), allow_nan=False)  # valid JSON: no bare NaN
    assert pystac.Item.from_dict(json.loads(text)).id == "chm"


def test_item_for__published_map_can_be_catalogued_and_loaded_back(stac, chm, items, tmp_path):
    cog = tmp_path / "chm.tif"
    chm.rio.to_raster(cog, driver="COG")
    item = item_for(chm, href=cog.as_uri(), items=items, id="chm-2023", collection="xchm-chm")
    collection = {**data._collection("xchm-chm", "canopy height maps"), "stac_version": "1.0.0"}
    stac.server.load([collection], [item.to_dict(include_self_link=False)])
    found = search(data.ZONE18, collections="xchm-chm", catalog=stac.url, months=None, retries=1)
    assert [i.id for i in found] == ["chm-2023"]
    assert found[0].get_links("derived_from")[0].href.startswith(stac.url)
    back = load(found, bands=("chm",))
    np.testing.assert_array_equal(back.sel(band="chm").values, chm.values)


def test_item_for__int16_decimetres(chm, items):
    item = item_for(chm, href="s3://bucket/chm_dm.tif", items=items, int16_dm=True)
    band = item.assets["chm"].extra_fields["raster:bands"][0]
    assert (band["data_type"], band["nodata"], band["scale"], band["unit"]) == (
        "int16",
        -9999,
        0.1,
        "m",
    )


def test_item_for__rejects_a_map_without_crs(chm, items):
    bare = xr.DataArray(chm.values, dims=("y", "x"))
    with pytest.raises(InputError, match="no CRS.*rio.write_crs"):
        item_for(bare, href="chm.tif", items=items)


def test_item_for__rejects_a_dataset_without_chm(chm, items):
    with pytest.raises(InputError, match="no 'chm' variable"):
        item_for(xr.Dataset({"height": chm}), href="chm.tif", items=items)


def test_item_for__rejects_an_image(items):
    image = load(items)
    with pytest.raises(InputError, match=r"\(y, x\) canopy height map"):
        item_for(image, href="chm.tif", items=items)


def test_item_for__rejects_sources_without_self_links(chm, items):
    orphan = items[0].clone()
    orphan.remove_links("self")
    with pytest.raises(InputError, match=r"no self link .*set_self_href"):
        item_for(chm, href="chm.tif", items=[orphan])


def test_item_for__rejects_no_sources(chm):
    with pytest.raises(InputError, match="no source items"):
        item_for(chm, href="chm.tif", items=[])


def stac_args(stac, out: Path, *extra: str) -> list[str]:
    bbox = [str(v) for v in data.ZONE18]
    return [
        "predict",
        "--stac",
        stac.url,
        "--collection",
        data.COLLECTION,
        "--bbox",
        *bbox,
        "--datetime",
        "2023",
        "-o",
        str(out),
        "--model",
        "test-tiny",
        "-q",
        *extra,
    ]


def test_predict_cli__stac_search_to_cog(stac, tmp_path, capsys):
    out = tmp_path / "chm.tif"
    assert main(stac_args(stac, out, "--chunks", "128")) == 0
    assert "2 STAC item(s)" in capsys.readouterr().err
    with rasterio.open(out) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cog.crs.to_epsg() == 32618
        assert cog.width > data.SIZE  # both tiles (minus the inset of the bbox)


def test_predict_cli__stac_search_to_zarr(stac, tmp_path):
    out = tmp_path / "chm.zarr"
    assert main(stac_args(stac, out, "--months", "all", "--max-cloud", "35")) == 0
    stored = xr.open_zarr(out, decode_coords="all", consolidated=False)["chm"]
    assert stored.rio.crs.to_epsg() == 32618 and np.isfinite(stored.values).mean() > 0.8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--collection": None}, "--stac needs --collection"),
        ({"--bbox": None}, "--stac needs --bbox"),
        ({"--months": "summer"}, "--months must be comma-separated month numbers"),
        ({"input": "scene.tif"}, "give input files or --stac URL, not both"),
        ({"--stac": None}, "give the image\\(s\\) to predict, or --stac URL"),
    ],
    ids=["no-collection", "no-bbox", "bad-months", "input-and-stac", "nothing-to-predict"],
)
def test_predict_cli__bad_stac_options(stac, tmp_path, capsys, change, message):
    args = stac_args(stac, tmp_path / "chm.tif")
    for option, value in change.items():
        if option == "input":
            args.insert(1, value)
            continue
        if option not in args:
            args += [option, value]
            continue
        i = args.index(option)
        width = 5 if option == "--bbox" else 2
        args[i : i + width] = [] if value is None else [option, value]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "xchm: error:" in err
    assert re.search(message, err), err


def test_example__stac_predict_runs_against_the_test_server(stac, tmp_path):
    bbox = [str(v) for v in data.ZONE18]
    args = [sys.executable, str(EXAMPLE), "--catalog", stac.url, "--collection", data.COLLECTION]
    args += ["--bbox", *bbox, "--years", "2022", "2023", "--out", str(tmp_path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "found 4 items" in done.stdout
    assert "wrote" in done.stdout and "4 sources" in done.stdout
    with rasterio.open(tmp_path / "chm.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    item = json.loads((tmp_path / "chm.json").read_text())
    assert item["properties"]["start_datetime"].startswith("2022-08-10")
    assert item["assets"]["chm"]["href"].startswith("file://")
