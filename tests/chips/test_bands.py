"""Band selection in chip cubes: the same rules, and the same code, as predict."""

from contextlib import ExitStack

import numpy as np
import pytest
import rioxarray
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import xchm
import xchm.chips
from xchm.chips.sources import ScenePair, open_scene
from xchm.errors import BandError
from xchm.inference.inputs import as_band_array

from .conftest import make_pair

# One split, so that one small scene never leaves a split empty.
OPTIONS = {"fractions": {"train": 1.0}, "progress": False, "min_valid": 0.5}
MODEL_BANDS = ("nir", "red", "green")


@pytest.fixture(scope="module")
def pair():
    """A 4-band image (no band names, coordinate 1..4) and its CHM, 128 x 128 px."""
    image, chm = make_pair(128, 128)
    fourth = (image.isel(band=2) // 2 + 1).expand_dims(band=[4])
    return xr.concat([image, fourth], "band"), chm


@pytest.fixture(scope="module")
def card():
    return xchm.load_model("test-tiny").card  # bands nir, red, green


def test_build__honours_a_dataarray_band_coordinate(pair, tmp_path):
    image, chm = pair
    named = image.assign_coords(band=["NIR", "Red", "Green", "Blue"])
    cube = xchm.chips.build([(named, chm)], tmp_path / "named.zarr", **OPTIONS)
    explicit = xchm.chips.build(
        [(image, chm)], tmp_path / "explicit.zarr", bands=("nir", "red", "green", "blue"), **OPTIONS
    )
    assert cube.bands == explicit.bands == ("nir", "red", "green", "blue")
    np.testing.assert_array_equal(cube.image[...], explicit.image[...])


def test_build__layout_and_string_syntax(pair, tmp_path):
    image, chm = pair
    cube = xchm.chips.build([(image, chm)], tmp_path / "wv.zarr", bands="worldview-bgrn", **OPTIONS)
    assert cube.bands == ("blue", "green", "red", "nir")
    picked = xchm.chips.build([(image, chm)], tmp_path / "s.zarr", bands="nir=4,red=3", **OPTIONS)
    assert picked.bands == ("nir", "red")
    np.testing.assert_array_equal(picked.image[...], cube.image[...][:, [3, 2]])


@pytest.mark.parametrize(
    ("bands", "match"),
    [
        ({"nir": 5}, "'nir' <- band 5: there is no band 5"),
        ({"nir": 0}, "band numbers count from 1"),
        ({"nir": 1, "red": 1}, "band 1 is chosen for 'nir', 'red'"),
        ({"nir": "NIR"}, "no band is called that"),
        ("nir=4,red", "is not NAME=BAND"),
        ("naip-rgb", "not a known sensor layout"),
        (None, "4 bands without names"),
    ],
)
def test_build__band_errors_are_raised_before_anything_is_written(pair, tmp_path, bands, match):
    with pytest.raises(BandError, match=match):
        xchm.chips.build([pair], tmp_path / "c.zarr", bands=bands, **OPTIONS)
    assert not (tmp_path / "c.zarr").exists()


def _chips_selection(image, bands):
    """The bands chips.build takes from ``image`` (its code path, nothing written)."""
    with ExitStack() as stack:
        scene = open_scene(
            ScenePair(image, None),
            0,
            stack,
            bands=bands,
            resolution=None,
            nodata="auto",
            chm_resampling="average",
            strip_rows=64,
        )
        return scene.bands, scene.image.values


def _predict_selection(image, card, bands):
    """The bands predict feeds the model from ``image`` (its code path, lazily)."""
    return as_band_array(image, card, bands).values


@pytest.fixture(scope="module")
def geotiff(pair, tmp_path_factory):
    path = tmp_path_factory.mktemp("tif") / "scene.tif"
    pair[0].rio.to_raster(path)
    return path


@settings(max_examples=15, deadline=None)
@given(order=st.permutations([1, 2, 3, 4]), source=st.sampled_from(["array", "file", "subset"]))
def test_band_numbers_mean_the_same_in_predict_and_chips(pair, geotiff, card, order, source):
    image = pair[0]
    if source == "array":  # no band coordinate at all: numbers are positions from 1
        image = image.drop_vars("band")
    elif source == "file":  # rioxarray: GDAL's numbers in the coordinate
        image = rioxarray.open_rasterio(geotiff)
    else:  # a selection keeps GDAL's numbers: band 4 is still band 4
        image = rioxarray.open_rasterio(geotiff).sel(band=[4, 2, 3, 1])
    bands = dict(zip(MODEL_BANDS, order[:3], strict=True))
    expected = pair[0].values[[n - 1 for n in order[:3]]]  # GDAL band n is row n - 1
    names, chips = _chips_selection(image, bands)
    assert names == MODEL_BANDS
    np.testing.assert_array_equal(chips, expected)
    np.testing.assert_array_equal(_predict_selection(image, card, bands), expected)
    text = ",".join(f"{b}={n}" for b, n in bands.items())  # --bands spelling
    np.testing.assert_array_equal(_predict_selection(image, card, text), expected)


def test_band_numbers__a_zero_based_coordinate_is_refused_in_both(pair, card):
    image = pair[0].assign_coords(band=[0, 1, 2, 3])
    bands = {"nir": 1, "red": 2, "green": 3}
    with pytest.raises(BandError, match="ambiguous"):
        _chips_selection(image, bands)
    with pytest.raises(BandError, match="ambiguous"):
        _predict_selection(image, card, bands)


def test_band_names__the_same_coordinate_names_in_predict_and_chips(pair, card):
    image = pair[0].assign_coords(band=["Green", "NIR", "Blue", "Red"])
    names, chips = _chips_selection(image, None)
    assert names == ("green", "nir", "blue", "red")
    np.testing.assert_array_equal(chips, pair[0].values)
    np.testing.assert_array_equal(_predict_selection(image, card, None), pair[0].values[[1, 3, 0]])
