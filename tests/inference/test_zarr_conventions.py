"""Mosaic stores open the conventional way: a plain ``xr.open_zarr`` gives the CRS, no warning.

Plain means no ``decode_coords="all"`` and no ``consolidated=``: what a user types.
Local folders and S3 prefixes (moto on 127.0.0.1), the Python API and ``xchm predict``.
"""

from __future__ import annotations

import warnings

import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
import zarr

import xchm
from tests import servers
from xchm.cli import main
from xchm.inference.to_zarr import PROGRESS_GROUP, open_prediction

from .conftest import make_image

CRS = "EPSG:32617"  # make_image's


def plain_open(store, **kwargs):
    """``xr.open_zarr(store)`` with every warning recorded (none may be)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = xr.open_zarr(store, **kwargs)
    assert [str(w.message) for w in caught] == []
    return ds


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("conventions") / "model"
    model.save(path)
    return path


def test_predict_to_zarr__plain_open_gives_the_crs_and_no_warning(tmp_path, checkpoint):
    image = make_image(96, 80)
    xchm.predict_to_zarr(
        image, checkpoint, tmp_path / "chm.zarr", region_size=64, progress=False, uncertainty=True
    )
    ds = plain_open(tmp_path / "chm.zarr")
    assert "spatial_ref" in ds.coords and set(ds.data_vars) == {"chm", "chm_std"}
    assert ds["chm"].rio.crs == image.rio.crs == ds["chm_std"].rio.crs
    assert ds["chm"].rio.transform() == image.rio.transform()
    # The xchm reader and an explicit decode_coords="all" read the same thing.
    assert open_prediction(tmp_path / "chm.zarr")["chm"].rio.crs == image.rio.crs
    assert xr.open_zarr(tmp_path / "chm.zarr", decode_coords="all")["chm"].rio.crs == CRS


def test_predict_to_zarr__a_resumed_store_is_consolidated_again(tmp_path, checkpoint):
    image, out = make_image(96, 80), tmp_path / "chm.zarr"
    xchm.predict_to_zarr(image, checkpoint, out, region_size=64, progress=False)
    zarr.open_array(out, mode="r+", path=f"{PROGRESS_GROUP}/done")[0, 0] = 0  # as if cut off
    xchm.predict_to_zarr(image, checkpoint, out, region_size=64, progress=False)
    ds = plain_open(out)
    assert ds.attrs["xchm_status"] == "complete" and ds["chm"].rio.crs == CRS


def test_predict_cli__zarr_output_opens_plainly_with_its_crs(tmp_path, checkpoint):
    scene = tmp_path / "scene.tif"
    make_image(96, 80).rio.to_raster(scene)
    out = tmp_path / "chm.zarr"
    args = ["predict", str(scene), "-o", str(out), "--model", str(checkpoint), "-q"]
    assert main([*args, "--bands", "nir,red,green", "--region-size", "64"]) == 0
    assert plain_open(out)["chm"].rio.crs == CRS


def test_predict_to_zarr_s3__plain_open_of_the_url_gives_the_crs(s3, checkpoint):
    url = f"{s3.url}/mosaics/chm.zarr"
    xchm.predict_to_zarr(make_image(96, 80), checkpoint, url, region_size=64, progress=False)
    ds = plain_open(url)  # s3fs, with the endpoint and keys of the environment
    assert ds["chm"].rio.crs == CRS and ds.attrs["xchm_status"] == "complete"
    assert ds["chm"].shape == (96, 80)
    servers.close_s3_clients()
