"""``xchm predict --bands`` on a GeoTIFF without band descriptions (most real files)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr

import xchm
from xchm.cli import main

from .conftest import make_image


@pytest.fixture(scope="module")
def scene(tmp_path_factory, model):
    """A 4-band GeoTIFF in NAIP's order (red, green, blue, nir) with no band names."""
    folder = tmp_path_factory.mktemp("bands")
    named = make_image(130, 120)
    blue = (named.sel(band="green") * 0.8).astype(named.dtype).expand_dims(band=["blue"])
    rgbn = xr.concat([named.sel(band=["red", "green"]), blue, named.sel(band=["nir"])], "band")
    rgbn.assign_coords(band=[1, 2, 3, 4]).rio.to_raster(folder / "scene.tif")
    with rasterio.open(folder / "scene.tif") as src:
        assert src.descriptions == (None,) * 4  # what NAIP, Maxar and Planet files look like
    model.save(folder / "model")
    return folder


@pytest.fixture(scope="module")
def expected(scene):
    """The map from the Python API, bands given explicitly (GDAL numbers)."""
    image = rioxarray.open_rasterio(scene / "scene.tif")
    return xchm.predict(image, scene / "model", bands={"nir": 4, "red": 1, "green": 2}).values


def predict(scene, out, *options):
    args = ["predict", str(scene / "scene.tif"), "-o", str(out)]
    return main([*args, "--model", str(scene / "model"), "-q", *options])


@pytest.mark.parametrize(
    "spec",
    ["nir=4,red=1,green=2", "red,green,blue,nir", "naip-rgbn", "NIR = 4, Red = 1, Green = 2"],
)
def test_predict_cli__bands_on_an_undescribed_geotiff_equal_the_python_api(
    scene, expected, tmp_path, spec
):
    out = tmp_path / "chm.tif"
    assert predict(scene, out, "--bands", spec) == 0
    with rasterio.open(out) as cog:
        np.testing.assert_allclose(cog.read(1), expected, rtol=1e-5, atol=1e-4)


def test_predict_cli__without_bands_says_how_to_name_them(scene, tmp_path, capsys):
    assert predict(scene, tmp_path / "chm.tif") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nir' is missing" in err and "--bands" in err


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nir:4", "argument --bands: bands 'nir:4': 'nir:4' is not a band name"),
        ("nir=4,red", "'red' is not NAME=BAND"),
        ("naip-rgb", "not a known sensor layout"),
        ("", "bands is empty"),
    ],
)
def test_predict_cli__bad_bands_syntax_is_a_usage_error(scene, tmp_path, capsys, spec, match):
    assert predict(scene, tmp_path / "chm.tif", "--bands", spec) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err and err.rstrip().endswith("--help')")
    assert not (tmp_path / "chm.tif").exists()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nir=5,red=1,green=2", "'nir' <- band 5: there is no band 5"),
        ("nir=0,red=1,green=2", "band numbers count from 1"),
        ("nir=4,red=4,green=2", "band 4 is chosen for 'nir', 'red'"),
        ("nir=NIR,red=1,green=2", "'nir' <- 'NIR': no band is called that"),
        ("swir=1,nir=4,red=1,green=2", "which the model does not use"),
        ("red,green,nir", "has 4 bands but bands=red,green,nir names 3"),
    ],
)
def test_predict_cli__bands_that_do_not_fit_the_file_fail_clearly(
    scene, tmp_path, capsys, spec, match
):
    assert predict(scene, tmp_path / "chm.tif", "--bands", spec) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err
    assert not (tmp_path / "chm.tif").exists()


@pytest.mark.slow
def test_bands_neon_example__runs_on_a_real_undescribed_geotiff(neon_dir, tmp_path):
    example = Path(__file__).resolve().parents[2] / "examples" / "bands_neon.py"
    out = subprocess.run(
        [sys.executable, str(example), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "descriptions (None, None, None)" in out and "without bands: BandError" in out
    assert out.count("same map as bands={'red': 1, ...}: True") == 3
    assert "exit 0, same map: True" in out


def test_predict_to_zarr__band_string_on_a_dataset_and_a_coordinate_free_array(model, tmp_path):
    image = make_image(128, 128)
    codes = (("B08", "nir"), ("B04", "red"), ("B03", "green"))
    ds = xr.Dataset({code: image.sel(band=name, drop=True) for code, name in codes})
    expected = xchm.predict(image, model).values
    stored = xchm.predict_to_zarr(
        ds.chunk({"x": 64, "y": 64}),
        model,
        tmp_path / "ds.zarr",
        bands="nir=B08,red=B04,green=B03",
        region_size=128,
        progress=False,
    )
    np.testing.assert_allclose(stored["chm"].values, expected, rtol=1e-5, atol=1e-4)
    # No band coordinate: numbers count from 1; the job record names the bands so.
    bare = image.isel(band=[2, 0, 1]).drop_vars("band").chunk({"x": 64, "y": 64})
    stored = xchm.predict_to_zarr(
        bare,
        model,
        tmp_path / "bare.zarr",
        bands="nir=2,red=3,green=1",
        region_size=128,
        progress=False,
    )
    np.testing.assert_allclose(stored["chm"].values, expected, rtol=1e-5, atol=1e-4)
