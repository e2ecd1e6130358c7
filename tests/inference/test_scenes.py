"""merge_scenes: several scenes on one grid, combined lazily, predicted without seams."""

import dask
import numpy as np
import pytest

import xchm
from xchm.errors import InputError, PathNotFoundError

from .conftest import make_image


@pytest.fixture
def whole():
    return make_image(200, 260, seed=3)


def test_merge_scenes__tiles_of_a_scene_give_back_the_scene(whole):
    tiles = [
        whole.isel(y=slice(0, 120), x=slice(0, 150)),
        whole.isel(y=slice(0, 120), x=slice(140, 260)),  # 10 px overlap
        whole.isel(y=slice(100, 200), x=slice(0, 260)),
    ]
    merged = xchm.merge_scenes(tiles, chunks=64)
    assert merged.shape == whole.shape and merged.rio.crs == whole.rio.crs
    assert merged.chunks[1][0] == 64 and merged.chunks[0] == (3,)
    np.testing.assert_array_equal(merged.values, whole.values.astype("float32"))
    np.testing.assert_array_equal(merged.x.values, whole.x.values)
    np.testing.assert_array_equal(merged.y.values, whole.y.values)


def test_merge_scenes__prediction_has_no_seam_at_scene_edges(whole, model):
    tiles = [whole.isel(x=slice(0, 150)), whole.isel(x=slice(110, 260))]
    merged = xchm.merge_scenes(tiles, chunks=64)
    np.testing.assert_allclose(
        xchm.predict(merged, model).values,
        xchm.predict(whole, model).values,
        rtol=1e-5,
        atol=1e-4,
    )


def test_merge_scenes__first_rule_prefers_earlier_scenes_where_they_have_data(whole):
    a = whole.isel(x=slice(0, 150)).astype("float32")
    a[:, :50, 100:] = np.nan  # a hole: the second scene fills it
    b = (whole.isel(x=slice(100, 260)) + 1000).astype("float32")
    merged = xchm.merge_scenes([a, b]).values
    np.testing.assert_array_equal(merged[:, 50:, :150], a.values[:, 50:, :])
    np.testing.assert_array_equal(merged[:, :50, 100:150], b.values[:, :50, :50])
    np.testing.assert_array_equal(merged[:, :, 150:], b.values[:, :, 50:])


def test_merge_scenes__mean_rule_averages_the_overlap(whole):
    a = whole.isel(x=slice(0, 150))
    b = (whole.isel(x=slice(100, 260)).astype("float32") + 100).rio.write_crs(whole.rio.crs)
    merged = xchm.merge_scenes([a, b], combine="mean").values
    expected = whole.values[:, :, 100:150].astype("float32") + 50
    np.testing.assert_allclose(merged[:, :, 100:150], expected)
    np.testing.assert_array_equal(merged[:, :, :100], whole.values[:, :, :100])


def test_merge_scenes__gap_between_scenes_is_nan_and_predicts_nan(whole, model):
    merged = xchm.merge_scenes([whole.isel(x=slice(0, 100)), whole.isel(x=slice(180, 260))])
    assert merged.shape == whole.shape
    assert np.isnan(merged.values[:, :, 100:180]).all()
    chm = xchm.predict(merged, model).values
    assert np.isnan(chm[:, 100:180]).all() and np.isfinite(chm[:, :100]).all()


def test_merge_scenes__nodata_value_is_missing(whole):
    a = whole.isel(x=slice(0, 150)).copy()
    a.values[:, :, 120:] = 0
    a = a.rio.write_nodata(0)
    b = whole.isel(x=slice(100, 260))
    merged = xchm.merge_scenes([a, b]).values
    np.testing.assert_array_equal(merged[:, :, 120:150], whole.values[:, :, 120:150])


def test_merge_scenes__is_lazy_and_reads_files(tmp_path, whole):
    paths = []
    for i, xs in enumerate((slice(0, 150), slice(100, 260))):
        tile = whole.isel(x=xs).assign_coords(band=[1, 2, 3])
        tile.attrs["long_name"] = ("NIR", "Red", "Green")
        tile.rio.to_raster(tmp_path / f"s{i}.tif")
        paths.append(tmp_path / f"s{i}.tif")
    with dask.config.set(scheduler="sync"):
        merged = xchm.merge_scenes(paths, chunks=64)
        assert merged.attrs["long_name"] == ("NIR", "Red", "Green")
        assert merged.attrs["xchm_scenes"] == [str(p) for p in paths]
        chm = xchm.predict(merged, "test-tiny")  # bands matched by the files' descriptions
        assert chm.shape == whole.shape[1:]
        np.testing.assert_array_equal(merged.values, whole.values.astype("float32"))


def test_merge_scenes__rejects_mixed_crs_sizes_and_grids(whole):
    other_crs = whole.isel(x=slice(100, 260)).rio.write_crs("EPSG:32618")
    with pytest.raises(InputError, match="one CRS.*EPSG:32617.*EPSG:32618"):
        xchm.merge_scenes([whole, other_crs])
    coarse = make_image(50, 50, res=4.0)
    with pytest.raises(InputError, match="pixel sizes differ"):
        xchm.merge_scenes([whole, coarse])
    shifted = whole.assign_coords(x=whole.x + 0.5)
    with pytest.raises(InputError, match="not on the pixel grid"):
        xchm.merge_scenes([whole, shifted])
    with pytest.raises(InputError, match="band counts differ"):
        xchm.merge_scenes([whole, whole.isel(band=[0, 1])])
    with pytest.raises(InputError, match="non-empty list"):
        xchm.merge_scenes([])
    with pytest.raises(InputError, match="combine"):
        xchm.merge_scenes([whole], combine="latest")
    with pytest.raises(PathNotFoundError, match="does not exist"):
        xchm.merge_scenes(["/nonexistent/scene.tif"])


def test_merge_scenes__irregular_coordinates_are_refused(whole):
    shuffled = whole.isel(x=np.random.default_rng(1).permutation(260))
    with pytest.raises(InputError, match=r"scene #1: the 'x' coordinate is not monotonic"):
        xchm.merge_scenes([whole, shuffled])
    gapped = whole.isel(y=np.r_[0:50, 60:200])
    with pytest.raises(InputError, match=r"scene #0: the 'y' coordinate is not evenly spaced"):
        xchm.merge_scenes([gapped])


@pytest.mark.parametrize("order", [{"y": slice(None, None, -1)}, {"x": slice(None, None, -1)}])
def test_merge_scenes__reversed_scene_is_read_north_up(whole, order):
    """A scene stored south-up (or east-to-west) lands where its coordinates say."""
    left, right = whole.isel(x=slice(0, 150)), whole.isel(x=slice(110, 260))
    # A cached GeoTransform (as rioxarray.open_rasterio leaves) goes stale when reversed.
    right = right.rio.write_transform(right.rio.transform()).isel(order)
    merged = xchm.merge_scenes([left, right], chunks=64)
    np.testing.assert_array_equal(merged.values, whole.values.astype("float32"))
    np.testing.assert_array_equal(merged.y.values, whole.y.values)
    np.testing.assert_array_equal(merged.x.values, whole.x.values)


def test_merge_scenes__south_up_file(tmp_path, whole):
    import rasterio

    flipped = whole.isel(y=slice(None, None, -1))
    flipped.rio.write_transform(flipped.rio.transform(recalc=True)).rio.to_raster(
        tmp_path / "south.tif"
    )
    with rasterio.open(tmp_path / "south.tif") as src:
        assert src.transform.e > 0  # really stored south-up
    merged = xchm.merge_scenes([tmp_path / "south.tif"], chunks=64)
    np.testing.assert_array_equal(merged.values, whole.values.astype("float32"))
    np.testing.assert_allclose(merged.y.values, whole.y.values)
