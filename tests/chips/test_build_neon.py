"""Build a chip cube from the real NEON plots and check the chips against the sources."""

from __future__ import annotations

import numpy as np
import rioxarray
from rasterio.enums import Resampling

import xchm.chips

PLOTS = ("OSBS_003", "OSBS_006", "TEAK_043", "TEAK_050")


def test_build__neon_chips_match_the_lidar_chm_at_their_origins(tmp_path, neon_dir):
    pairs = [(neon_dir / f"{p}_rgb.tif", neon_dir / f"{p}_chm_0.5m.tif") for p in PLOTS]
    # nodata=None: the RGB files declare 255 as nodata, which is also saturated white.
    cube = xchm.chips.build(
        pairs,
        tmp_path / "neon.zarr",
        resolution=0.5,
        stride=16,
        nodata=None,
        bands=("red", "green", "blue"),
        split_by="scene",
        progress=False,
    )
    assert len(cube) + sum(cube.filters["removed"].values()) == 4 * len(PLOTS)  # 80 px plots
    assert cube.pixel_size == 0.5 and cube.image.dtype == np.uint8
    for i in range(len(cube)):
        scene = cube.coord("scene")[i]
        chm = rioxarray.open_rasterio(neon_dir / f"{scene[:-4]}_chm_0.5m.tif").squeeze()
        t = chm.rio.transform()
        row = round((cube.coord("origin_y")[i] - t.f) / t.e)
        col = round((cube.coord("origin_x")[i] - t.c) / t.a)
        image, height = cube.read([i])
        np.testing.assert_array_equal(height[0], chm.values[row : row + 64, col : col + 64])
        assert cube.coord("crs")[i] == chm.rio.crs.to_string()
        rgb = rioxarray.open_rasterio(neon_dir / f"{scene[:-4]}_rgb.tif")
        rgb = rgb.rio.write_nodata(None).rio.reproject_match(chm, resampling=Resampling.average)
        expected = rgb.values[:, row : row + 64, col : col + 64].astype(int)
        assert np.abs(image[0].astype(int) - expected).max() <= 1
    assert cube.statistics[0].clip_max > 100  # 8-bit DN
