"""xchm.chips.build: chips, filters, alignment, statistics, shuffle, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xchm.chips
from xchm.chips import builder as build_module
from xchm.chips import writer as writer_module
from xchm.errors import BandError, InputError
from xchm.models import band_statistics

from .conftest import CRS, LEFT, TOP, cube_chips_by_origin, make_pair, write_pair

# Most scenes here are one split block, so their cubes hold one split; the build's
# warning about the other is what test_splits.py checks.
pytestmark = pytest.mark.filterwarnings("ignore:split .* has no chip:xchm.errors.XCHMWarning")

WIN = 64


def _source_chip(image, chm, origin_x, origin_y, res=2.0):
    row, col = round((TOP - origin_y) / res), round((origin_x - LEFT) / res)
    window = {"y": slice(row, row + WIN), "x": slice(col, col + WIN)}
    return image.isel(**window).values, chm.isel(**window).values, (row, col)


def _nodata_as_nan(cube):
    image = cube.image[...].astype(np.float64)
    image[image == cube.nodata] = np.nan
    return image


# -- chips and filters -------------------------------------------------------------------
def test_build__exact_chip_count_and_filter_counts(tmp_path, build):
    image, chm = make_pair()  # 320 x 384 px: 5 x 6 = 30 chips
    chm[10, 70] = np.nan  # chip (0, 1): a missing height
    image[2, 70, 5] = 0  # chip (1, 0): an image nodata pixel in one band
    chm[128:192, 0:64] = 0.0  # chip (2, 0): no height > 0
    chm[192:256, 0:64] = -1.0  # chip (3, 0): no height > 0 ...
    chm[200, 10] = np.nan  # ... and a missing height: counted as missing (first rule)
    cube = build([write_pair(tmp_path, image, chm)])

    assert len(cube) == 26
    f = cube.filters
    assert f["candidates"] == 30 and f["kept"] == 26
    assert f["removed"] == {"missing": 3, "no_positive": 1, "split_buffer": 0}


def test_build__min_valid_keeps_chips_with_few_missing_pixels(tmp_path, build):
    image, chm = make_pair()
    chm[10, 70] = np.nan
    chm[0:40, 0:64] = np.nan  # 62.5 % of chip (0, 0) missing
    cube = build([write_pair(tmp_path, image, chm)], min_valid=0.9)
    assert cube.filters["removed"]["missing"] == 1
    heights = cube.height[...]
    assert np.isnan(heights).sum() == 1  # the kept chip (0, 1) keeps its NaN


def test_build__chips_equal_the_source_at_their_origin(pair_files, build):
    image, chm = make_pair()
    cube = build([pair_files])
    chips = cube_chips_by_origin(cube)
    assert len(chips) == 30
    seen = set()
    for (x, y), (chip_image, chip_height) in chips.items():
        src_image, src_height, rc = _source_chip(image, chm, x, y)
        np.testing.assert_array_equal(chip_image, src_image)
        np.testing.assert_array_equal(chip_height, src_height)
        seen.add(rc)
    assert seen == {(r, c) for r in range(0, 320 - 63, 64) for c in range(0, 384 - 63, 64)}
    assert set(cube.coord("crs")) == {CRS}
    assert set(cube.coord("scene")) == {"scene_image"}


def test_build__stride_makes_overlapping_chips(pair_files, build):
    cube = build([pair_files], stride=32, split_by="random")
    assert len(cube) == 9 * 11


def test_build__dataarrays_and_files_give_the_same_cube(tmp_path, pair_files, build):
    image, chm = make_pair()
    from_files = build([pair_files])
    from_arrays = build([xchm.chips.ScenePair(image, chm, scene="scene_image")])
    np.testing.assert_array_equal(from_files.image[...], from_arrays.image[...])
    np.testing.assert_array_equal(from_files.height[...], from_arrays.height[...])
    assert from_files.statistics == from_arrays.statistics


# -- alignment -----------------------------------------------------------------------------
def test_build__finer_chm_is_area_averaged_onto_the_image_grid(tmp_path, build):
    image, chm = make_pair()
    fine = np.repeat(np.repeat(chm.values, 2, axis=0), 2, axis=1)
    fine += np.tile(np.array([[-0.5, 0.5], [0.25, -0.25]], dtype="float32"), (320, 384))
    chm_1m = xr.DataArray(
        fine,
        dims=("y", "x"),
        coords={"y": TOP - (np.arange(640) + 0.5), "x": LEFT + np.arange(768) + 0.5},
    ).rio.write_crs(CRS)
    cube = build([write_pair(tmp_path, image, chm_1m)])
    for (x, y), (_, chip_height) in cube_chips_by_origin(cube).items():
        _, expected, _ = _source_chip(image, chm, x, y)
        np.testing.assert_allclose(chip_height, expected, atol=1e-5)


def test_build__chm_in_another_crs_is_reprojected(tmp_path, build):
    image, _ = make_pair()
    rows = np.arange(320)[:, None] * np.ones((1, 384))
    step = xr.DataArray(  # 10 m in the upper half of the scene, 30 m below
        np.where(rows < 160, 10.0, 30.0).astype("float32"),
        dims=("y", "x"),
        coords={"y": image.y, "x": image.x},
    ).rio.write_crs(CRS)
    other_crs = step.rio.reproject("EPSG:32616")  # the neighbouring UTM zone
    cube = build([write_pair(tmp_path, image, other_crs)], min_valid=0.5)
    heights = cube_chips_by_origin(cube)
    upper = [h for (x, y), (_, h) in heights.items() if TOP - y < 64 * 2 * 2]  # rows 0-127
    lower = [h for (x, y), (_, h) in heights.items() if TOP - y >= 192 * 2]
    assert upper and lower
    assert np.nanmedian(np.stack(upper)) == pytest.approx(10.0, abs=0.01)
    assert np.nanmedian(np.stack(lower)) == pytest.approx(30.0, abs=0.01)


def test_build__resolution_resamples_the_image_by_area_average(tmp_path, build):
    image, chm = make_pair()
    fine = xr.DataArray(  # 1 m pixels, each 2 x 2 block holding one 2 m value +- 1
        np.repeat(np.repeat(image.values.astype(np.int32), 2, axis=1), 2, axis=2)
        + np.tile(np.array([[-1, 1], [1, -1]]), (3, 320, 384)),
        dims=("band", "y", "x"),
        coords={"y": TOP - (np.arange(640) + 0.5), "x": LEFT + np.arange(768) + 0.5},
    )
    fine = fine.clip(0).astype("uint16").rio.write_crs(CRS)
    fine[:2, :2, :2] = 1  # keep the first pixel's average exact
    cube = build([write_pair(tmp_path, fine, chm)], resolution=2.0, nodata=None)
    assert cube.pixel_size == 2.0
    for (x, y), (chip_image, _) in cube_chips_by_origin(cube).items():
        expected, _, _ = _source_chip(image, chm, x, y)
        np.testing.assert_array_equal(chip_image, expected)


# -- statistics ------------------------------------------------------------------------------
def test_build__statistics_match_band_statistics_of_the_cube(pair_files, build):
    cube = build([pair_files], stats_sample=5000, seed=3)
    expected = band_statistics(_nodata_as_nan(cube), axis=1, sample=5000, seed=3)
    got = cube.statistics
    for e, g in zip(expected, got, strict=True):
        assert g.clip_max == pytest.approx(e.clip_max, rel=1e-9)
        assert g.mean == pytest.approx(e.mean, rel=1e-9)
        assert g.std == pytest.approx(e.std, rel=1e-9)
    assert cube.attrs["statistics"]["pixels_sampled"] == 5000


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bucket_bytes=st.sampled_from([30_000, 200_000, 10**9]),
    strip_bytes=st.sampled_from([1, 300_000, 10**9]),
    chunk=st.sampled_from([(2, 4), (4, 12), (256, 2560)]),
)
def test_build__buckets_strips_and_shards_change_order_only(
    tmp_path_factory, monkeypatch, bucket_bytes, strip_bytes, chunk
):
    """Memory knobs never change which chips a cube holds or how its stats are defined."""
    image, chm = make_pair(seed=1)
    chm[0:64, 0:64] = np.nan
    directory = tmp_path_factory.mktemp("knobs")
    files = write_pair(directory, image, chm)
    reference = xchm.chips.build(
        [files],
        directory / "ref.zarr",
        bands=("a", "b", "c"),
        progress=False,
        seed=2,
        stats_sample=4000,
    )
    monkeypatch.setattr(writer_module, "_BUCKET_BYTES", bucket_bytes)
    monkeypatch.setattr(build_module, "_STRIP_BYTES", strip_bytes)
    monkeypatch.setattr(writer_module, "CHIPS_PER_CHUNK", chunk[0])
    monkeypatch.setattr(writer_module, "CHIPS_PER_SHARD", chunk[1])
    cube = xchm.chips.build(
        [files],
        directory / "knobs.zarr",
        bands=("a", "b", "c"),
        progress=False,
        seed=2,
        stats_sample=4000,
    )
    ref_chips, chips = cube_chips_by_origin(reference), cube_chips_by_origin(cube)
    assert ref_chips.keys() == chips.keys()
    for key, (img, hgt) in chips.items():
        np.testing.assert_array_equal(img, ref_chips[key][0])
        np.testing.assert_array_equal(hgt, ref_chips[key][1])
    expected = band_statistics(_nodata_as_nan(cube), axis=1, sample=4000, seed=2)
    for e, g in zip(expected, cube.statistics, strict=True):
        assert g.mean == pytest.approx(e.mean, rel=1e-9)
        assert g.clip_max == pytest.approx(e.clip_max, rel=1e-9)


# -- order, determinism, splits --------------------------------------------------------------
def test_build__chips_are_shuffled_deterministically(pair_files, build):
    first, again, other = build([pair_files]), build([pair_files]), build([pair_files], seed=1)
    np.testing.assert_array_equal(first.image[...], again.image[...])
    np.testing.assert_array_equal(first.height[...], again.height[...])
    for name in ("origin_x", "origin_y", "split", "block", "scene"):
        np.testing.assert_array_equal(first.coord(name), again.coord(name))
    keep = {k: v for k, v in first.attrs.items() if k != "provenance"}
    assert keep == {k: v for k, v in again.attrs.items() if k != "provenance"}
    raster_order = np.lexsort((first.coord("origin_x"), -first.coord("origin_y")))
    assert not np.array_equal(raster_order, np.arange(len(first)))
    assert not np.array_equal(first.coord("origin_x"), other.coord("origin_x"))
    assert sorted(first.coord("origin_x")) == sorted(other.coord("origin_x"))


def _footprints(cube, label):
    chosen = cube.coord("split") == label
    return cube.coord("origin_x")[chosen], cube.coord("origin_y")[chosen]


def _overlapping_pairs(cube, size_m):
    tx, ty = _footprints(cube, "train")
    vx, vy = _footprints(cube, "val")
    dx = np.abs(tx[:, None] - vx[None, :])
    dy = np.abs(ty[:, None] - vy[None, :])
    return int(((dx < size_m) & (dy < size_m)).sum())


def test_build__block_split_has_no_spatial_overlap(tmp_path, build):
    image, chm = make_pair(640, 640)
    cube = build(
        [write_pair(tmp_path, image, chm)],
        stride=32,
        block_size=2,
        fractions={"train": 0.5, "val": 0.5},
    )
    assert set(cube.splits) == {"train", "val"}
    assert cube.filters["removed"]["split_buffer"] > 0
    assert _overlapping_pairs(cube, WIN * 2.0) == 0


def test_build__random_split_leaks_between_neighbours(tmp_path, build):
    image, chm = make_pair(640, 640)
    cube = build(
        [write_pair(tmp_path, image, chm)],
        stride=32,
        split_by="random",
        fractions={"train": 0.5, "val": 0.5},
    )
    assert cube.filters["removed"]["split_buffer"] == 0
    assert _overlapping_pairs(cube, WIN * 2.0) > 0


def test_build__scene_split_keeps_each_scene_whole(tmp_path, build):
    pairs = []
    for i in range(6):
        image, chm = make_pair(128, 128, seed=i, left=LEFT + 1000 * i)
        pairs.append(
            xchm.chips.ScenePair(
                *write_pair(tmp_path, image, chm, f"s{i}"), date="2020-07-0" + str(i + 1)
            )
        )
    cube = build(pairs, split_by="scene", fractions={"train": 0.5, "val": 0.5})
    labels = {}
    for scene, label in zip(cube.coord("scene"), cube.coord("split"), strict=True):
        labels.setdefault(scene, set()).add(label)
    assert len(labels) == 6 and all(len(v) == 1 for v in labels.values())
    assert {next(iter(v)) for v in labels.values()} == {"train", "val"}
    dates = dict(zip(cube.coord("scene"), cube.coord("date"), strict=True))
    assert dates["s0_image"] == np.datetime64("2020-07-01")


def test_build__split_labels_do_not_depend_on_other_scenes(tmp_path, build):
    a = write_pair(tmp_path, *make_pair(seed=0), "a")
    b = write_pair(tmp_path, *make_pair(seed=1, left=LEFT + 5000), "b")
    alone = build([a])
    together = build([a, b]).sel(scene="a_image")
    assert _labels_by_origin(alone) == _labels_by_origin(together)


def _labels_by_origin(cube):
    origins = zip(cube.coord("origin_x"), cube.coord("origin_y"), strict=True)
    return dict(zip(origins, cube.coord("split"), strict=True))


# -- failures ----------------------------------------------------------------------------------
def test_build__interrupted_build_never_looks_complete(tmp_path, monkeypatch, pair_files, build):
    store = tmp_path / "cube.zarr"

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(writer_module.ChipWriter, "finish", fail)
        with pytest.raises(KeyboardInterrupt):
            build([pair_files], output=store)
    with pytest.raises(InputError, match="incomplete"):
        xchm.chips.open(store)
    with pytest.raises(FileExistsError, match="overwrite"):
        build([pair_files], output=store)
    assert len(build([pair_files], output=store, overwrite=True)) == 30


# A store that is not a chip cube is refused: tests/chips/test_outputs.py


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"window": 60}, InputError, "multiple of the ViT patch size"),
        ({"stride": 80}, InputError, "skip pixels"),
        ({"bands": ("nir", "red")}, BandError, "has 3 bands"),
        ({"bands": {"nir": 4, "red": 9}}, BandError, "'red' <- band 9"),
        ({"bands": None}, BandError, "without names"),
        ({"split_by": "chips"}, InputError, "split method .split_by=. must be one of"),
        ({"fractions": {"train": 0.5}}, InputError, "sum to 1"),
        ({"min_valid": 0}, InputError, "min_valid"),
        ({"chm_resampling": "fancy"}, InputError, "chm_resampling"),
    ],
)
def test_build__bad_arguments_raise_clear_errors(pair_files, build, kwargs, error, match):
    with pytest.raises(error, match=match):
        build([pair_files], **kwargs)


def test_build__bad_sources_raise_clear_errors(tmp_path, pair_files, build):
    with pytest.raises(FileNotFoundError, match="no such file"):
        build([(tmp_path / "missing.tif", pair_files[1])])
    with pytest.raises(InputError, match="pairs is empty"):
        build([])
    with pytest.raises(InputError, match="scene ids"):
        build([pair_files, pair_files])
    image, chm = make_pair()
    with pytest.raises(InputError, match="no chip passed the filters"):
        build([write_pair(tmp_path, image, chm * 0 - 1, "flat")])


def test_build__band_mapping_selects_and_reorders(pair_files, build):
    cube = build([pair_files], bands={"green": 3, "nir": 1})
    image, chm = make_pair()
    (x, y), (chip, _) = next(iter(cube_chips_by_origin(cube).items()))
    src, _, _ = _source_chip(image, chm, x, y)
    assert cube.bands == ("green", "nir")
    np.testing.assert_array_equal(chip, src[[2, 0]])


def test_build__warns_when_a_declared_nodata_255_removes_bright_chips(tmp_path):
    import warnings

    image, chm = make_pair()
    bright = np.random.default_rng(0).integers(50, 200, image.shape).astype("uint8")
    bright[:, ::40, ::40] = 255  # a saturated pixel in every chip, as in 8-bit aerial RGB
    image = image.copy(data=bright).rio.write_nodata(255)
    rgb = {"bands": ("red", "green", "blue"), "progress": False}
    paths = write_pair(tmp_path, image, chm)
    with pytest.raises(InputError, match="no chip passed.*check nodata"):
        xchm.chips.build([paths], tmp_path / "a.zarr", **rgb)
    bright[:, :128] = 255  # rows 0-127 saturated: chip rows 0-1 removed, rows 2-4 kept
    bright[:, 128:, ::40] = 120  # no more saturated pixels below
    paths = write_pair(tmp_path, image.copy(data=bright), chm, name="half")
    with pytest.warns(UserWarning, match=r"12 of 30 chips .*nodata 255.*--nodata none") as said:
        assert len(xchm.chips.build([paths], tmp_path / "b.zarr", **rgb)) == 18
    (warned,) = [w for w in said if "declared nodata" in str(w.message)]
    assert warned.filename == __file__  # the caller, past renamed_keywords' wrapper
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*declared nodata")
        # nodata given explicitly: the user chose, so no warning
        assert len(xchm.chips.build([paths], tmp_path / "c.zarr", nodata=255, **rgb)) == 18
        assert len(xchm.chips.build([paths], tmp_path / "d.zarr", nodata=None, **rgb)) == 30


# -- names: output= and split_by= (formerly store= and split=) --------------------------------
def test_build__output_and_split_by_and_their_old_names(tmp_path, pair_files):
    options = {"bands": ("nir", "red", "green"), "progress": False}
    new = xchm.chips.build([pair_files], output=tmp_path / "new.zarr", split_by="scene", **options)
    with pytest.warns(FutureWarning) as caught:
        old = xchm.chips.build([pair_files], store=tmp_path / "old.zarr", split="scene", **options)
    said = sorted(str(w.message) for w in caught if w.category is FutureWarning)
    assert said == [
        "build(split=...) is deprecated and will be removed in a future release; use split_by=...",
        "build(store=...) is deprecated and will be removed in a future release; use output=...",
    ]
    assert new.path.name == "new.zarr" and old.path.name == "old.zarr"
    assert new.attrs["split"]["method"] == old.attrs["split"]["method"] == "scene"
    assert new.splits == old.splits


def test_build__old_and_new_name_together_is_a_type_error(tmp_path, pair_files):
    with pytest.raises(TypeError, match="both split_by= and its deprecated name split="):
        xchm.chips.build([pair_files], tmp_path / "c.zarr", split="scene", split_by="block")
    assert not (tmp_path / "c.zarr").exists()
