"""Predict on real NEON airborne imagery and check it lands on the lidar CHM grid."""

import numpy as np
import pytest
import rioxarray
from rasterio.enums import Resampling

import xchm


@pytest.mark.parametrize("plot", ["OSBS_003", "TEAK_050"])
def test_predict__neon_rgb_on_the_lidar_chm_grid(neon_dir, plot):
    rgb = rioxarray.open_rasterio(neon_dir / f"{plot}_rgb.tif", masked=True)
    chm_truth = rioxarray.open_rasterio(neon_dir / f"{plot}_chm_0.5m.tif", masked=True).squeeze()
    image = rgb.rio.reproject_match(chm_truth, resampling=Resampling.average)  # 0.1 m -> 0.5 m
    stats = xchm.models.band_statistics(image.values)
    model = xchm.load_model(
        "test-tiny", bands=("red", "green", "blue"), statistics=stats, pixel_size=0.5
    )

    chm = xchm.predict(image, model, bands=["red", "green", "blue"])

    assert chm.shape == chm_truth.shape == (80, 80)
    assert chm.rio.crs == chm_truth.rio.crs
    assert chm.rio.transform() == chm_truth.rio.transform()
    np.testing.assert_allclose(chm.x, chm_truth.x)
    np.testing.assert_allclose(chm.y, chm_truth.y)
    invalid = np.isnan(image.values).any(axis=0)
    assert np.array_equal(np.isnan(chm.values), invalid)
    assert (~invalid).mean() > 0.5
