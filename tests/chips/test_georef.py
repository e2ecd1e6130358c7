"""xchm.chips.build: georeferencing of the sources (issue 15, case 6).

Nothing is assumed: a CRS must be there (image and CHM), the image's CRS must
count in metres, DataArray coordinates must be a regular grid, and an image
stored south-up or east-to-west gives the chips of its north-up twin.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from xchm.errors import InputError, PathNotFoundError, XCHMError

from .conftest import cube_chips_by_origin, make_pair, write_pair

# Most scenes here are one split block, so their cubes hold one split; the build's
# warning about the other is what test_splits.py checks.
pytestmark = pytest.mark.filterwarnings("ignore:split .* has no chip:xchm.errors.XCHMWarning")


def _small():
    return make_pair(128, 192)  # 2 x 3 chips of 64 px


def _no_crs(da):
    """``da`` without any CRS (rioxarray keeps it in the spatial_ref coordinate)."""
    out = da.drop_vars("spatial_ref")
    out.attrs = {k: v for k, v in out.attrs.items() if k != "grid_mapping"}
    out.encoding = {}
    assert out.rio.crs is None
    return out


def _files(tmp_path, image, chm, name):
    return write_pair(tmp_path / name, image, chm, name)


# -- a CRS on both sides -----------------------------------------------------------------
@pytest.mark.parametrize("as_file", [False, True])
def test_build__chm_without_crs_is_refused(tmp_path, build, as_file):
    """The issue's case: a CHM without CRS was read as if it were in the image's CRS."""
    image, chm = _small()
    chm = _no_crs(chm)
    if as_file:
        image, chm = _files(tmp_path, image, chm, "nocrs")
    with pytest.raises(
        InputError, match=r"CHM of scene 0 .* has no CRS; the image is in EPSG:32617"
    ):
        build([(image, chm)])


@pytest.mark.parametrize("as_file", [False, True])
@pytest.mark.parametrize("chm_has_crs", [False, True])
def test_build__image_without_crs_is_refused(tmp_path, build, as_file, chm_has_crs):
    image, chm = _small()
    image = _no_crs(image)
    if not chm_has_crs:
        chm = _no_crs(chm)
    if as_file:
        image, chm = _files(tmp_path, image, chm, "nocrs")
    with pytest.raises(InputError, match=r"image of scene 0 .* has no CRS.*write_crs"):
        build([(image, chm)])


def test_build__unlabeled_image_without_crs_is_refused(build):
    with pytest.raises(InputError, match=r"image of scene 0 .* has no CRS"):
        build([_no_crs(_small()[0])])


@pytest.mark.parametrize(
    ("crs", "match"), [("EPSG:4326", "geographic CRS"), ("EPSG:2263", "metres")]
)
def test_build__image_crs_must_count_in_metres(tmp_path, build, crs, match):
    """Degrees or feet would become the cube's pixel size in 'metres' (and the model card's)."""
    image, chm = _small()
    image, chm = image.rio.write_crs(crs), chm.rio.write_crs(crs)
    with pytest.raises(InputError, match=rf"{match}.*estimate_utm_crs"):
        build([(image, chm)])
    with pytest.raises(InputError, match=rf"{match}.*gdalwarp"):
        build([_files(tmp_path, image, chm, crs.replace(":", ""))])


def test_build__chm_in_a_geographic_crs_is_warped(build):
    """Only the image's CRS must be metric: the CHM is warped onto the image grid."""
    image, chm = _small()
    chm = chm.rio.reproject("EPSG:4326")
    cube = build([(image, chm)])
    assert len(cube) > 0 and np.isfinite(cube.height[...]).mean() > 0.9


# -- a regular grid ----------------------------------------------------------------------
@pytest.mark.parametrize("which", ["image", "chm"])
@pytest.mark.parametrize(
    ("index", "match"),
    [
        (np.random.default_rng(1).permutation(192), "'x' coordinate is not monotonic"),
        (np.r_[0:64, 70:198], "'x' coordinate is not evenly spaced"),  # a gap of 6 px
        (np.r_[0:64, 63:191], "'x' coordinate repeats a value"),
    ],
)
def test_build__irregular_coordinates_are_refused(tmp_path, build, which, index, match):
    image, chm = make_pair(128, 198)
    if which == "image":
        image, chm = image.isel(x=index), chm.isel(x=slice(0, len(index)))
    else:
        image, chm = image.isel(x=slice(0, len(index))), chm.isel(x=index)
    who = "image" if which == "image" else "CHM"
    with pytest.raises(InputError, match=rf"the {who} of scene 0 .*: the {match}"):
        build([(image, chm)])


@pytest.mark.parametrize(
    "order",
    [
        {"y": slice(None, None, -1)},
        {"x": slice(None, None, -1)},
        {"y": slice(None, None, -1), "x": slice(None, None, -1)},
    ],
)
def test_build__reversed_axes_give_the_chips_of_the_north_up_image(tmp_path, build, order):
    image, chm = _small()
    expected = cube_chips_by_origin(build([(image, chm)]))
    # A cached GeoTransform (as rioxarray.open_rasterio leaves) goes stale when reversed.
    image = image.rio.write_transform(image.rio.transform()).isel(order)
    for pair in ([(image, chm)], [(image, chm.isel(order))]):
        chips = cube_chips_by_origin(build(pair))
        assert chips.keys() == expected.keys()
        for origin, (chip_image, chip_height) in chips.items():
            np.testing.assert_array_equal(chip_image, expected[origin][0])
            np.testing.assert_array_equal(chip_height, expected[origin][1])


def test_build__south_up_file_gives_the_chips_of_the_north_up_file(tmp_path, build):
    image, chm = _small()
    expected = cube_chips_by_origin(build([_files(tmp_path, image, chm, "north")]))
    flipped = image.isel(y=slice(None, None, -1))
    south = _files(
        tmp_path, flipped.rio.write_transform(flipped.rio.transform(recalc=True)), chm, "south"
    )
    with rasterio.open(south[0]) as src:
        assert src.transform.e > 0  # really stored south-up
    chips = cube_chips_by_origin(build([south]))
    assert chips.keys() == expected.keys()
    for origin, (chip_image, chip_height) in chips.items():
        np.testing.assert_array_equal(chip_image, expected[origin][0])
        np.testing.assert_array_equal(chip_height, expected[origin][1])


# -- paths -------------------------------------------------------------------------------
def test_build__missing_file_is_a_path_not_found_error(tmp_path, build):
    image, chm = _small()
    image_path, _ = _files(tmp_path, image, chm, "ok")
    with pytest.raises(PathNotFoundError, match="no such file") as info:
        build([(image_path, tmp_path / "missing_chm.tif")])
    assert isinstance(info.value, XCHMError) and isinstance(info.value, FileNotFoundError)
