"""Synthetic scene pairs with known content for chip cube tests."""

from __future__ import annotations

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

import xchm.chips

CRS = "EPSG:32617"
LEFT, TOP = 400_000.0, 7_000_000.0


def make_pair(height=320, width=384, *, res=2.0, seed=0, left=LEFT, top=TOP):
    """(image, chm) DataArrays on one grid whose chips can be recognised.

    The image's first two bands hold the pixel's row and column + 1 (uint16, so 0
    stays free as nodata); heights are positive and smooth.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([rows + 1, cols + 1, rng.integers(100, 4000, (height, width))])
    coords = {
        "y": top - res * (np.arange(height) + 0.5),
        "x": left + res * (np.arange(width) + 0.5),
    }
    image_da = xr.DataArray(
        image.astype("uint16"), dims=("band", "y", "x"), coords={"band": [1, 2, 3], **coords}
    ).rio.write_crs(CRS)
    image_da = image_da.rio.write_nodata(0)
    heights = 5 + 10 * np.sin(rows / 17.0) ** 2 + rng.uniform(0, 1, (height, width))
    chm_da = xr.DataArray(heights.astype("float32"), dims=("y", "x"), coords=coords)
    chm_da = chm_da.rio.write_crs(CRS).rio.write_nodata(-9999.0)
    return image_da, chm_da


def write_pair(directory, image, chm, name="scene"):
    directory.mkdir(parents=True, exist_ok=True)
    image_path, chm_path = directory / f"{name}_image.tif", directory / f"{name}_chm.tif"
    image.rio.to_raster(image_path)
    chm.rio.to_raster(chm_path)
    return image_path, chm_path


def cube_chips_by_origin(cube):
    """{(origin_x, origin_y): (image, height)} of all chips in a cube."""
    image, height = cube.image[...], cube.height[...]
    xs, ys = cube.coord("origin_x"), cube.coord("origin_y")
    return {(x, y): (image[i], height[i]) for i, (x, y) in enumerate(zip(xs, ys, strict=True))}


@pytest.fixture
def pair_files(tmp_path):
    image, chm = make_pair()
    return write_pair(tmp_path / "src", image, chm)


@pytest.fixture
def build(tmp_path):
    """xchm.chips.build with the tests' defaults (named bands, no progress bar)."""
    counter = iter(range(1000))

    def run(pairs, **kwargs):
        kwargs.setdefault("bands", ("nir", "red", "green"))
        kwargs.setdefault("progress", False)
        output = kwargs.pop("output", tmp_path / f"cube{next(counter)}.zarr")
        return xchm.chips.build(pairs, output, **kwargs)

    return run
