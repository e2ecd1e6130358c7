"""Chip cubes open the conventional way: a plain ``xr.open_zarr`` gives coords and CRS.

Plain means no ``decode_coords="all"`` and no ``consolidated=``: what a user types.
"""

from __future__ import annotations

import warnings

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

import xchm.chips
from tests import servers
from xchm.chips.layout import CHIP_ARRAYS

from .conftest import CRS, make_pair, write_pair

BANDS = ("nir", "red", "green")
OPTIONS = {"bands": BANDS, "progress": False, "block_size": 1}


def plain_open(store):
    """``xr.open_zarr(store)`` with every warning recorded (none may be)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = xr.open_zarr(store)
    assert [str(w.message) for w in caught] == []
    return ds


def same_as_to_xarray(ds, cube):
    """The plain open holds what ChipCube.to_xarray gives, as coordinates."""
    mine = cube.to_xarray()
    for name in (*CHIP_ARRAYS, "band"):
        assert name in ds.coords, name
        np.testing.assert_array_equal(ds[name].values, mine[name].values)
    np.testing.assert_array_equal(ds["image"].values, mine["image"].values)
    if cube.labeled:
        np.testing.assert_array_equal(ds["height"].values, mine["height"].values)


def test_build__plain_open_gives_the_coordinates_and_the_crs(tmp_path):
    cube = xchm.chips.build([make_pair(256, 192)], tmp_path / "c.zarr", **OPTIONS)
    ds = plain_open(tmp_path / "c.zarr")
    assert set(ds.data_vars) == {"image", "height"}
    assert ds["image"].rio.crs == CRS and ds["height"].rio.crs == CRS
    assert list(ds["band"].values) == list(BANDS)
    same_as_to_xarray(ds, cube)
    assert ds.attrs["xchm"]["complete"] is True  # the group attrs, as xchm.chips.open reads


def test_build__scenes_in_two_crs_have_no_single_crs_but_open_plainly(tmp_path):
    a = make_pair(128, 128)
    b = tuple(da.rio.write_crs("EPSG:32618") for da in make_pair(128, 128, seed=1))
    cube = xchm.chips.build(
        [xchm.chips.ScenePair(*a, scene="a"), xchm.chips.ScenePair(*b, scene="b")],
        tmp_path / "c.zarr",
        **OPTIONS,
    )
    ds = plain_open(tmp_path / "c.zarr")
    assert "spatial_ref" not in ds.variables and ds["image"].rio.crs is None
    assert set(ds["crs"].values) == {CRS, "EPSG:32618"}  # each chip's own
    same_as_to_xarray(ds, cube)


def test_build__an_unlabeled_cube_opens_plainly_with_its_crs(tmp_path):
    image, _ = make_pair(128, 192)
    cube = xchm.chips.build([image], tmp_path / "u.zarr", **OPTIONS)
    ds = plain_open(tmp_path / "u.zarr")
    assert set(ds.data_vars) == {"image"} and ds["image"].rio.crs == CRS
    same_as_to_xarray(ds, cube)


def test_build_s3__plain_open_of_the_url_gives_the_crs(s3, tmp_path):
    pair = write_pair(tmp_path / "src", *make_pair(128, 192))
    url = f"{s3.url}/chips/c.zarr"
    cube = xchm.chips.build([pair], url, **OPTIONS)
    ds = plain_open(url)  # s3fs, with the endpoint and keys of the environment
    assert ds["image"].rio.crs == CRS
    same_as_to_xarray(ds, cube)
    servers.close_s3_clients()
