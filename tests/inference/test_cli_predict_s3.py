"""`xchm predict` with URLs only: imagery, model and output on the S3 server (moto)."""

from __future__ import annotations

import numpy as np
import pytest
import rioxarray
import xarray as xr

import xchm
from xchm.cli import main
from xchm.storage import gdal_env, location

from .conftest import make_image


@pytest.fixture
def remote(s3, tmp_path, model):
    """The scene and the model in the bucket (and the scene's local copy for reference)."""
    image = make_image(200, 170).assign_coords(band=[1, 2, 3])
    image.attrs["long_name"] = ("NIR", "Red", "Green")
    image.rio.to_raster(tmp_path / "scene.tif")
    s3.put("in/scene.tif", (tmp_path / "scene.tif").read_bytes())
    model.save(f"{s3.url}/models/m")
    return tmp_path / "scene.tif", f"{s3.url}/in/scene.tif", f"{s3.url}/models/m"


def test_predict_cli__urls_to_a_zarr_store_on_s3(s3, remote, capsys):
    local, scene, model = remote
    out = f"{s3.url}/maps//chm.zarr"
    assert main(["predict", scene, "-o", out, "--model", model, "-q", "--chunks", "128"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    stored = xr.open_zarr(out, decode_coords="all")["chm"]  # a plain reader, env only
    expected = xchm.predict(rioxarray.open_rasterio(local, chunks=128), model)
    np.testing.assert_array_equal(stored.values, expected.values)
    assert stored.rio.crs == expected.rio.crs


def test_predict_cli__urls_to_a_cog_on_s3(s3, remote):
    local, scene, model = remote
    out = f"{s3.url}/maps/chm.tif"
    assert main(["predict", scene, "-o", out, "--model", model, "-q"]) == 0
    with gdal_env(out):
        cog = rioxarray.open_rasterio(location(out).gdal_path()).squeeze("band", drop=True)
        values = cog.values
    expected = xchm.predict(rioxarray.open_rasterio(local, chunks=128), model)
    # Other chunks batch the windows differently: float32 rounding only.
    np.testing.assert_allclose(values, expected.values, rtol=0, atol=1e-4)


def test_predict_cli__missing_url_input_is_one_line_naming_it(s3, remote, capsys):
    _, _, model = remote
    missing = f"{s3.url}/in//nothing.tif"
    assert main(["predict", missing, "-o", f"{s3.url}/o.tif", "--model", model, "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing in err[0] and "s3:/x" not in err[0]
