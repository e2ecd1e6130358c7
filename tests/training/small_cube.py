"""A small learnable chip cube for the recipe, baseline and lr-finder tests (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import torch
import xarray as xr

import xchm.chips


def learnable_cube(path: Path, size: int = 256) -> xchm.chips.ChipCube:
    """NIR/red/green DN whose heights follow the NIR brightness: lr 1e-2 learns it.

    ``size`` 256 at stride 32 gives 49 chips of 64 px (26 train, 4 val with the
    split below; heights 0.1-15 m).
    """
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    nir = 2500 + 1500 * np.sin(yy / 23.0) * np.cos(xx / 31.0) + rng.normal(0, 100, yy.shape)
    image = np.stack([nir, 0.5 * nir, 0.4 * nir]).clip(1, 9000).astype("uint16")
    heights = (nir / 200.0 - 5).clip(0.1).astype("float32")
    coords = {"y": 7e6 - 2.0 * (np.arange(size) + 0.5), "x": 4e5 + 2.0 * (np.arange(size) + 0.5)}
    img = xr.DataArray(image, dims=("band", "y", "x"), coords=coords).rio.write_crs("EPSG:32617")
    chm = xr.DataArray(heights, dims=("y", "x"), coords=coords).rio.write_crs("EPSG:32617")
    return xchm.chips.build(
        [xchm.chips.ScenePair(img, chm, scene="learnable")],
        path,
        bands=("nir", "red", "green"),
        stride=32,
        split_by="block",
        block_size=1,
        fractions={"train": 0.75, "val": 0.25},
        progress=False,
    )


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: these tiny models run faster so on a shared CPU (~10x under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", name="cube")
def learnable_cube_fixture(tmp_path_factory):
    """The learnable cube, once per test module."""
    return learnable_cube(tmp_path_factory.mktemp("cube") / "c.zarr")
