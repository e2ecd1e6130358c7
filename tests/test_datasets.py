"""synthetic_landscape: a seeded scene whose imagery carries its canopy heights."""

import numpy as np
import pytest

import xchm.datasets
from xchm.errors import InputError


@pytest.fixture(scope="module")
def scene():
    return xchm.datasets.synthetic_landscape(384, seed=4)


def test_synthetic_landscape__same_seed_same_scene_other_seed_differs(scene):
    again = xchm.datasets.synthetic_landscape(384, seed=4)
    other = xchm.datasets.synthetic_landscape(384, seed=5)
    np.testing.assert_array_equal(scene["image"].values, again["image"].values)
    np.testing.assert_array_equal(scene["chm"].values, again["chm"].values)
    assert not np.allclose(np.nan_to_num(scene["chm"].values), np.nan_to_num(other["chm"].values))


def test_synthetic_landscape__georeferenced_with_named_bands_and_units(scene):
    image, chm = scene["image"], scene["chm"]
    assert image.dims == ("band", "y", "x") and list(image.band.values) == ["nir", "red", "green"]
    assert image.rio.crs.to_epsg() == 3338 and chm.rio.crs.to_epsg() == 3338
    assert image.rio.resolution() == (2.0, -2.0) and chm.attrs["units"] == "m"
    assert scene.attrs["synthetic"] is True


def test_synthetic_landscape__has_every_cover_type_and_plausible_heights(scene):
    cover, chm = scene["cover"].values, scene["chm"].values
    assert set(np.unique(cover)) == {0, 1, 2, 3}  # ground, shrub, forest, water
    forest = chm[(cover == 2) & np.isfinite(chm)]
    assert 8 < np.median(forest) < 35 and chm[np.isfinite(chm)].max() < 60
    assert (chm[cover == 3] == 0).all()
    shrub = chm[(cover == 1) & np.isfinite(chm)]
    assert np.percentile(shrub, 90) < 3.5


def test_synthetic_landscape__imagery_tracks_the_cover_and_shadows(scene):
    nir, red = scene["image"].values[0], scene["image"].values[1]
    cover, chm = scene["cover"].values, scene["chm"].values
    ok = np.isfinite(nir)
    ndvi = (nir - red) / (nir + red)
    assert np.nanmean(ndvi[ok & (cover == 2)]) > np.nanmean(ndvi[ok & (cover == 0)]) + 0.2
    assert np.nanmean(nir[ok & (cover == 3)]) < 0.05  # water is dark in NIR
    # Tall canopy casts shadows: the darkest forest pixels sit lower than their neighbours.
    dark = ok & (cover == 2) & (nir < np.nanpercentile(nir[cover == 2], 5))
    assert np.nanmean(chm[dark]) < np.nanmean(chm[ok & (cover == 2)])


def test_synthetic_landscape__missing_edge_is_nan_in_image_and_truth(scene):
    missing = np.isnan(scene["chm"].values)
    assert 0.01 < missing.mean() < 0.1 and missing[:, 0].all() and not missing[:, -1].any()
    np.testing.assert_array_equal(np.isnan(scene["image"].values).all(axis=0), missing)


def test_synthetic_landscape__rejects_tiny_scenes():
    with pytest.raises(InputError, match="at least 64"):
        xchm.datasets.synthetic_landscape(32)


@pytest.mark.parametrize("size", [64, 72, 96])
def test_synthetic_landscape__the_smallest_sizes_are_finite_and_warn_nothing(size):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the 64 px scene divided by zero (a NaN field)
        scene = xchm.datasets.synthetic_landscape(size, seed=0, nodata_edge=False)
    assert np.isfinite(scene["chm"].values).all() and np.isfinite(scene["image"].values).all()
