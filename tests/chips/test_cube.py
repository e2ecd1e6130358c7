"""Opening and inspecting chip cubes: ChipCube, xchm.chips.open."""

from __future__ import annotations

import dask.array as dsa
import numpy as np
import pytest
import zarr

import xchm
import xchm.chips
from xchm.errors import InputError


@pytest.fixture
def cube(pair_files, build):
    return build([pair_files], fractions={"train": 0.5, "val": 0.5}, block_size=1)


def test_open__reopens_what_build_returned(cube):
    again = xchm.chips.open(cube.path)
    assert len(again) == len(cube) == 30
    assert again.bands == ("nir", "red", "green")
    assert again.statistics == cube.statistics
    assert again.window == 64 and again.pixel_size == 2.0 and again.nodata == 0


def test_open__missing_store_and_foreign_group(tmp_path):
    with pytest.raises(FileNotFoundError):
        xchm.chips.open(tmp_path / "nothing.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(InputError, match="not an xchm chip cube"):
        xchm.chips.open(tmp_path / "other.zarr")


def test_open__unknown_format_version(cube):
    group = zarr.open_group(str(cube.path), mode="r+")
    group.attrs["xchm"] = {**group.attrs["xchm"], "format_version": 99}
    with pytest.raises(InputError, match="version 99"):
        xchm.chips.open(cube.path)


def test_sel__selects_one_split(cube):
    assert set(cube.splits) == {"train", "val"}
    train = cube.sel(split="train")
    assert len(train) == cube.splits["train"]
    assert set(train.coord("split")) == {"train"}
    assert np.all(np.diff(train.index) > 0)
    both = cube.sel(split=["train", "val"])
    assert len(both) == len(cube)


def test_sel__unknown_label_lists_the_known_ones(cube):
    with pytest.raises(InputError, match=r"\['test'\] not in this cube; it has \['train', 'val'\]"):
        cube.sel(split="test")


def test_read__returns_the_selected_chips_in_the_order_asked(cube):
    val = cube.sel(split="val")
    image, height = val.read([2, 0])
    full_image, full_height = cube.image[...], cube.height[...]
    np.testing.assert_array_equal(image, full_image[val.index[[2, 0]]])
    np.testing.assert_array_equal(height, full_height[val.index[[2, 0]]])


def test_to_xarray__lazy_dataset_with_chip_coordinates(cube):
    val = cube.sel(split="val")
    ds = val.to_xarray()
    assert isinstance(ds["image"].data, dsa.Array)
    assert ds["image"].dims == ("chip", "band", "y", "x")
    assert list(ds.band.values) == ["nir", "red", "green"]
    assert set(ds.split.values) == {"val"}
    np.testing.assert_array_equal(ds["height"].values, cube.height[...][val.index])
    assert ds["height"].attrs["units"] == "m"


def test_model_card__carries_the_cubes_data_contract(cube):
    card = cube.model_card("test-tiny")
    assert card.bands == cube.bands
    assert card.statistics == cube.statistics
    assert card.pixel_size == 2.0 and card.window == 64
    model = xchm.load_model("test-tiny", bands=card.bands, statistics=card.statistics)
    assert model.card.statistics == cube.statistics


def test_summary__names_counts_and_statistics(cube):
    text = cube.summary()
    assert "30 of 30 candidates" in text
    assert "('nir', 'red', 'green')" in text
    assert f"{cube.statistics[0].mean:.4f}" in text
    assert "30 chips" in repr(cube)


def test_preview__method_writes_the_png(cube, tmp_path):
    out = cube.preview(tmp_path / "p.png", n=4, split="val")
    assert out.read_bytes().startswith(b"\x89PNG")
