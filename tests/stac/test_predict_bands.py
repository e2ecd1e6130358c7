"""``xchm predict --stac --bands``: model bands mapped onto STAC assets, on the real API."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

import xchm
from tests.stac import data
from xchm.cli import main
from xchm.stac import load, search

pytestmark = [
    # odc-geo 0.5.3 (inside odc.stac.load) still calls shapely.ops.transform, which
    # shapely 2.2 deprecates; harmless, and not ours to fix.
    pytest.mark.filterwarnings(
        r"ignore:The 'shapely\.ops\.transform\(\)' function is deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Dataset has no geotransform, gcps, or rpcs:rasterio.errors.NotGeoreferencedWarning"
    ),
]
BY_POSITION = {"nir": "image.4", "red": "image.1", "green": "image.2"}


def nometa(stac, out, *extra):
    """`xchm predict --stac` over the collection whose 4-band asset has no band metadata."""
    bbox = [str(v) for v in data.ZONE18]
    args = ["predict", "--stac", stac.url, "--collection", data.NOMETA, "--bbox", *bbox]
    args += ["--months", "all", "--chunks", "128", "-o", str(out), "--model", "test-tiny"]
    return main([*args, "-q", *extra])


def test_predict_cli__stac_bands_by_asset_position_equal_the_python_api(stac, tmp_path):
    out = tmp_path / "chm.tif"
    assert nometa(stac, out, "--bands", "nir=image.4,red=image.1,green=image.2") == 0
    items = search(data.ZONE18, collections=data.NOMETA, catalog=stac.url, months=None)
    image = load(items, bands=BY_POSITION, bbox=data.ZONE18, chunks=128)
    expected = xchm.predict(image, "test-tiny").values
    with rasterio.open(out) as cog:
        np.testing.assert_allclose(cog.read(1), expected, rtol=1e-5, atol=1e-4)


def test_predict_cli__stac_without_bands_asks_for_positions(stac, tmp_path, capsys):
    assert nometa(stac, tmp_path / "chm.tif") == 1
    err = capsys.readouterr().err
    assert "has no band metadata" in err and "'image.4'" in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nir=4,red=1,green=2", "a band number alone does not say which file"),
        ("swir=image.5", "which the model does not use"),
    ],
)
def test_predict_cli__stac_bands_errors(stac, tmp_path, capsys, spec, message):
    assert nometa(stac, tmp_path / "chm.tif", "--bands", spec) == 1
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and message in err, err  # the preset's warning, the error
    assert not (tmp_path / "chm.tif").exists()
