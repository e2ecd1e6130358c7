"""Unlabeled chip cubes: image chips alone (no CHM), for self-supervised pretraining."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from PIL import Image

import xchm
import xchm.chips
from xchm.chips import ScenePair
from xchm.chips import builder as build_module
from xchm.chips import writer as writer_module
from xchm.chips.preview import LEGEND_HEIGHT, MARGIN, _quicklook, preview
from xchm.cli import main
from xchm.errors import InputError
from xchm.models import band_statistics
from xchm.training import TrainConfig
from xchm.training.data import ChipStream

from .conftest import LEFT, TOP, make_pair, write_pair

WIN = 64
BANDS = ("nir", "red", "green")
UNLABELED = "unlabeled .*imagery alone.*xchm.pretrain.*not xchm.train"


def _scene(tmp_path_factory):
    """A 320 x 384 px scene (5 x 6 = 30 chips) whose filters differ with and without CHM.

    Chip (1, 0) has an image nodata pixel (missing either way); chip (0, 1) a
    missing height and chip (2, 0) only zero heights, which only a labeled build
    drops.
    """
    image, chm = make_pair()
    image[2, 70, 5] = 0  # chip (1, 0)
    chm[10, 70] = np.nan  # chip (0, 1)
    chm[128:192, 0:64] = 0.0  # chip (2, 0)
    return image, chm, write_pair(tmp_path_factory.mktemp("unlabeled_src"), image, chm)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return _scene(tmp_path_factory)


def _build(pairs, store, **kwargs):
    options = {"bands": BANDS, "progress": False, "block_size": 1}
    options.update(fractions={"train": 0.5, "val": 0.5})
    return xchm.chips.build(pairs, store, **{**options, **kwargs})


@pytest.fixture(scope="module")
def cubes(scene, tmp_path_factory):
    """The scene built labeled (image + CHM) and unlabeled (the image alone)."""
    _, _, (image_path, chm_path) = scene
    folder = tmp_path_factory.mktemp("unlabeled_cubes")
    labeled = _build([(image_path, chm_path)], folder / "labeled.zarr")
    unlabeled = _build([image_path], folder / "unlabeled.zarr")
    return labeled, unlabeled


@pytest.fixture(scope="module")
def cube(cubes):
    return cubes[1]


def _origin_rc(x, y, res=2.0):
    return round((TOP - y) / res) // WIN, round((x - LEFT) / res) // WIN


def _origins(cube):
    return list(zip(cube.coord("origin_x"), cube.coord("origin_y"), strict=True))


def _images_by_origin(cube):
    image = cube.read_images(np.arange(len(cube)))
    return {xy: image[i] for i, xy in enumerate(_origins(cube))}


# -- building -----------------------------------------------------------------------------
def test_build__unlabeled_writes_no_height_array(cube):
    group = zarr.open_group(str(cube.path), mode="r")
    assert "height" not in group and "_staging" not in group
    assert "image" in group and group["image"].shape == (len(cube), 3, WIN, WIN)
    assert group.attrs["labeled"] is False and cube.labeled is False
    assert group.attrs["xchm"]["format_version"] == 1


def test_build__unlabeled_filters_look_at_the_image_only(cube):
    f = cube.filters
    # Only the image nodata chip goes; the NaN-height and zero-height chips stay.
    assert len(cube) == f["kept"] == 29 and f["candidates"] == 30
    assert f["removed"] == {"missing": 1, "no_positive": 0, "split_buffer": 0}
    assert f["drop_no_positive"] is False
    assert f["rules"]["no_positive"].startswith("not applicable")
    kept = {_origin_rc(*xy) for xy in _origins(cube)}
    assert (1, 0) not in kept and {(0, 1), (2, 0)} <= kept


def test_build__labeled_cube_says_labeled_and_still_filters_heights(cubes):
    labeled, _ = cubes
    assert labeled.attrs["labeled"] is True and labeled.labeled
    assert labeled.filters["removed"] == {"missing": 2, "no_positive": 1, "split_buffer": 0}
    assert labeled.filters["drop_no_positive"] is True


def test_build__same_image_chips_as_the_labeled_build(scene, cubes):
    image, _, _ = scene
    labeled, unlabeled = cubes
    with_heights, alone = _images_by_origin(labeled), _images_by_origin(unlabeled)
    assert set(with_heights) < set(alone)
    extra = {_origin_rc(*xy) for xy in set(alone) - set(with_heights)}
    assert extra == {(0, 1), (2, 0)}  # what only the heights ruled out
    for xy, chip in alone.items():
        if xy in with_heights:
            np.testing.assert_array_equal(chip, with_heights[xy])
        r, c = _origin_rc(*xy)
        window = {"y": slice(r * WIN, (r + 1) * WIN), "x": slice(c * WIN, (c + 1) * WIN)}
        np.testing.assert_array_equal(chip, image.isel(**window).values)


def test_build__splits_work_as_for_a_labeled_cube(cubes):
    labeled, unlabeled = cubes
    assert set(unlabeled.splits) == {"train", "val"}
    split_of = dict(zip(_origins(labeled), labeled.coord("split"), strict=True))
    for xy, label in zip(_origins(unlabeled), unlabeled.coord("split"), strict=True):
        if xy in split_of:
            assert label == split_of[xy]  # the split does not depend on heights
    val = unlabeled.sel(split="val")
    assert set(val.coord("split")) == {"val"} and len(val) == unlabeled.splits["val"]
    assert unlabeled.attrs["split"]["counts"] == unlabeled.splits


def test_build__scene_split_holds_out_whole_images(scene, tmp_path):
    image, _, _ = scene
    images = [ScenePair(image, None, scene=f"s{i}") for i in range(4)]
    cube = _build(images, tmp_path / "c.zarr", split_by="scene", seed=3)
    by_split = {s: set(cube.sel(split=s).coord("scene")) for s in cube.splits}
    assert set().union(*by_split.values()) == {"s0", "s1", "s2", "s3"}
    assert sum(len(v) for v in by_split.values()) == 4  # no scene in two splits
    assert len(cube) == 4 * 29


@pytest.mark.parametrize(
    "form",
    ["path alone", "path in list", "pair with None", "tuple with None", "dict", "DataArray"],
)
def test_build__every_way_to_give_an_image_alone(scene, cube, tmp_path, form):
    image, _, (image_path, _) = scene
    pairs = {
        "path alone": str(image_path),
        "path in list": [image_path],
        "pair with None": [ScenePair(image_path, None)],
        "tuple with None": [(image_path, None)],
        "dict": [{"image": image_path}],
        "DataArray": [image.rename("scene_image")],
    }[form]
    built = _build(pairs, tmp_path / "c.zarr")
    assert not built.labeled
    np.testing.assert_array_equal(built.image[...], cube.image[...])
    np.testing.assert_array_equal(built.coord("origin_x"), cube.coord("origin_x"))


def test_build__unlabeled_statistics_follow_band_statistics(cube):
    image = cube.image[...].astype(np.float64)
    image[image == cube.nodata] = np.nan
    expected = band_statistics(image, axis=1, sample=1_000_000, seed=0)
    for e, g in zip(expected, cube.statistics, strict=True):
        assert g.mean == pytest.approx(e.mean, rel=1e-9)
        assert g.clip_max == pytest.approx(e.clip_max, rel=1e-9)


def test_build__unlabeled_min_valid_keeps_the_nodata_chip(scene, tmp_path):
    _, _, (image_path, _) = scene
    cube = _build([image_path], tmp_path / "c.zarr", min_valid=0.9)
    assert len(cube) == 30 and cube.filters["removed"]["missing"] == 0


@pytest.mark.parametrize("chunk", [(2, 4), (4, 12)])
def test_build__unlabeled_buckets_stage_images_only(scene, cube, tmp_path, monkeypatch, chunk):
    """Small buckets (bounded memory) shuffle the same chips, with no staged heights."""
    _, _, (image_path, _) = scene
    staged = []
    final_arrays = writer_module.ChipWriter._final_arrays

    def spy(self, n):  # called once every bucket is staged
        staged.extend(name for name, _ in self.group["_staging"].arrays())
        return final_arrays(self, n)

    monkeypatch.setattr(writer_module.ChipWriter, "_final_arrays", spy)
    monkeypatch.setattr(writer_module, "_BUCKET_BYTES", 30_000)
    monkeypatch.setattr(build_module, "_STRIP_BYTES", 1)
    monkeypatch.setattr(writer_module, "CHIPS_PER_CHUNK", chunk[0])
    monkeypatch.setattr(writer_module, "CHIPS_PER_SHARD", chunk[1])
    small = _build([image_path], tmp_path / "c.zarr")
    assert len(staged) > 1 and all(name.startswith("image_") for name in staged)
    reference = _images_by_origin(cube)
    got = _images_by_origin(small)
    assert got.keys() == reference.keys()
    for key, chip in got.items():
        np.testing.assert_array_equal(chip, reference[key])


def test_build__mixing_images_with_and_without_chm_raises(scene, tmp_path):
    _, _, (image_path, chm_path) = scene
    store = tmp_path / "mixed.zarr"
    with pytest.raises(InputError, match=r"1 image\(s\) have no CHM.*either labeled"):
        _build([(image_path, chm_path), image_path], store)
    with pytest.raises(InputError, match="no CHM"):
        _build([ScenePair(image_path, None), ScenePair(image_path, chm_path)], store)
    assert not store.exists()


def test_build__drop_no_positive_true_without_chm_raises(scene, tmp_path):
    _, _, (image_path, _) = scene
    with pytest.raises(InputError, match="drop_no_positive=True needs heights"):
        _build([image_path], tmp_path / "c.zarr", drop_no_positive=True)
    assert not (tmp_path / "c.zarr").exists()
    assert len(_build([image_path], tmp_path / "d.zarr", drop_no_positive=False)) == 29


def test_build__dict_with_unknown_key_raises(scene, tmp_path):
    _, _, (image_path, _) = scene
    with pytest.raises(InputError, match="may have 'chm', 'scene', 'date'"):
        _build([{"image": image_path, "height": image_path}], tmp_path / "c.zarr")


def test_writer__height_batch_must_match_labeled(tmp_path):
    settings = writer_module.CubeSettings(
        bands=BANDS,
        window=WIN,
        dtype="<u2",
        nodata=0.0,
        pixel_size=2.0,
        labeled=False,
        drop_no_positive=False,
    )
    writer = writer_module.ChipWriter(tmp_path / "w.zarr", settings, expected_chips=1)
    image = np.ones((1, 3, WIN, WIN), dtype="<u2")
    meta = {"scene": "s", "crs": "", "date": None, "origin_x": [0.0], "origin_y": [0.0]}
    with pytest.raises(InputError, match="unlabeled.*height=None"):
        writer.add(image, np.ones((1, WIN, WIN), "f4"), block_first=[[0, 0]], **meta)
    assert writer.add(image, None, block_first=[[0, 0]], **meta) == 1


# -- reading ------------------------------------------------------------------------------
def test_height_and_read_raise_the_clear_error(cube):
    with pytest.raises(InputError, match=UNLABELED):
        cube.height  # noqa: B018
    with pytest.raises(InputError, match=UNLABELED):
        cube.read([0, 1])
    with pytest.raises(InputError, match=UNLABELED):
        cube.sel(split="val").read([0])


def test_read_images__selected_chips_in_the_order_asked(cubes):
    labeled, unlabeled = cubes
    val = unlabeled.sel(split="val")
    np.testing.assert_array_equal(val.read_images([2, 0]), unlabeled.image[...][val.index[[2, 0]]])
    image, _ = labeled.read([3, 1])  # on a labeled cube: the images of read
    np.testing.assert_array_equal(labeled.read_images([3, 1]), image)


def test_to_xarray__has_no_height(cube):
    val = cube.sel(split="val")
    ds = val.to_xarray()
    assert "height" not in ds and list(ds.data_vars) == ["image"]
    np.testing.assert_array_equal(ds["image"].values, cube.image[...][val.index])
    assert set(ds.split.values) == {"val"}


def test_summary_and_repr_say_unlabeled(cubes):
    labeled, unlabeled = cubes
    text = unlabeled.summary()
    assert "labels      unlabeled: image chips only" in text and "xchm.pretrain" in text
    assert "no_positive" not in text and "missing 1" in text
    assert "chips, unlabeled, bands" in repr(unlabeled) and ", unlabeled" not in repr(labeled)
    assert "labels      labeled: image and height chips" in labeled.summary()


def test_model_card__works_for_pretraining(cube):
    card = cube.model_card("test-tiny")
    assert card.bands == BANDS and card.statistics == cube.statistics


def test_old_cube_without_labeled_attr_is_labeled(scene, tmp_path):
    _, _, (image_path, chm_path) = scene
    built = _build([(image_path, chm_path)], tmp_path / "old.zarr")
    group = zarr.open_group(str(built.path), mode="r+")
    group.attrs.put({k: v for k, v in group.attrs.asdict().items() if k != "labeled"})
    old = xchm.chips.open(built.path)
    assert "labeled" not in old.attrs
    assert old.labeled
    image, height = old.read([0])
    assert height.shape == (1, WIN, WIN) and "height" in old.to_xarray()


# -- preview ------------------------------------------------------------------------------
def test_preview__image_chips_only(cube, tmp_path):
    out = preview(cube, tmp_path / "p.png", n=len(cube), columns=1, scale=1)
    with Image.open(out) as png:
        canvas = np.asarray(png)
    n = len(cube)
    assert canvas.shape == (n * WIN + (n + 1) * MARGIN + LEGEND_HEIGHT, WIN + 2 * MARGIN, 3)
    expected = _quicklook(cube.read_images(np.arange(n)), cube.bands, cube.nodata)
    for i in range(n):
        top = MARGIN + i * (WIN + MARGIN)
        np.testing.assert_array_equal(canvas[top : top + WIN, MARGIN : MARGIN + WIN], expected[i])
    assert (canvas[-LEGEND_HEIGHT:].min(axis=-1) < 100).any()  # the legend's text


def test_preview__method_and_split(cube, tmp_path):
    out = cube.preview(tmp_path / "p.png", n=3, columns=3, split="val")
    with Image.open(out) as png:
        assert png.size == (3 * 4 * WIN + 4 * MARGIN, 4 * WIN + 2 * MARGIN + LEGEND_HEIGHT)


# -- training refuses it ------------------------------------------------------------------
def test_chip_stream__refuses_an_unlabeled_cube(cube):
    with pytest.raises(InputError, match=UNLABELED) as err:
        ChipStream(cube, split="train", batch_size=2)
    assert "so ChipStream" in str(err.value)
    with pytest.raises(InputError, match=UNLABELED):
        ChipStream(str(cube.path), split=None, batch_size=2)


@pytest.mark.parametrize("bias", [90.0, None])
def test_train__refuses_an_unlabeled_cube(cube, tmp_path, bias):
    config = TrainConfig(epochs=1, batch_size=2, num_workers=0, output_bias_percentile=bias)
    with pytest.raises(InputError, match=UNLABELED):
        xchm.train(cube, model="test-tiny", config=config, output=tmp_path / "run", progress=False)


# -- command line -------------------------------------------------------------------------
CLI = ["--bands", *BANDS, "--block-size", "1", "--val-fraction", "0.5", "-q"]


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xchm: error: ")
    return err


def test_cli_build__image_makes_the_unlabeled_cube(scene, cube, tmp_path, capsys):
    _, _, (image_path, _) = scene
    store = tmp_path / "cli.zarr"
    assert main(["chips", "build", "-o", str(store), "--image", str(image_path), *CLI]) == 0
    assert "unlabeled" in capsys.readouterr().out  # the summary
    built = xchm.chips.open(store)
    assert not built.labeled
    np.testing.assert_array_equal(built.image[...], cube.image[...])
    np.testing.assert_array_equal(built.coord("split"), cube.coord("split"))


def test_cli_build__repeated_image_and_keep_no_positive(scene, tmp_path):
    _, _, (image_path, _) = scene
    other = tmp_path / "other.tif"
    other.write_bytes(image_path.read_bytes())
    store = tmp_path / "two.zarr"
    args = ["--image", str(image_path), "--image", str(other), "--keep-no-positive"]
    assert main(["chips", "build", "-o", str(store), *args, *CLI]) == 0
    built = xchm.chips.open(store)
    assert set(built.coord("scene")) == {"scene_image", "other"} and len(built) == 2 * 29


def test_cli_build__image_only_csv(scene, tmp_path):
    _, _, (image_path, _) = scene
    csv = image_path.parent.parent / "images.csv"
    csv.write_text(
        f"image,scene,date\n{image_path.parent.name}/{image_path.name},plot-9,2022-05-01\n",
        encoding="utf-8",
    )
    store = tmp_path / "csv.zarr"
    assert main(["chips", "build", "-o", str(store), "--pairs-csv", str(csv), *CLI]) == 0
    built = xchm.chips.open(store)
    assert not built.labeled and "height" not in zarr.open_group(str(store), mode="r")
    assert set(built.coord("scene")) == {"plot-9"}
    assert set(built.coord("date").astype(str)) == {"2022-05-01"}


def test_cli_build__mixing_pair_and_image_exits_1(scene, tmp_path, capsys):
    _, _, (image_path, chm_path) = scene
    store = tmp_path / "mixed.zarr"
    args = ["--pair", str(image_path), str(chm_path), "--image", str(image_path)]
    assert main(["chips", "build", "-o", str(store), *args, *CLI]) == 1
    assert "no CHM" in _one_line_error(capsys)
    assert not store.exists()


def test_cli_build__csv_with_an_empty_chm_cell_exits_1(scene, tmp_path, capsys):
    _, _, (image_path, chm_path) = scene
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"image,chm\n{image_path},{chm_path}\n{image_path},\n", encoding="utf-8")
    assert main(["chips", "build", "-o", str(tmp_path / "c.zarr"), "--pairs-csv", str(csv)]) == 1
    err = _one_line_error(capsys)
    assert "line 3: chm must not be empty" in err and "leave out the chm column" in err


def test_cli_info__shows_unlabeled(cubes, capsys):
    labeled, unlabeled = cubes
    assert main(["chips", "info", str(unlabeled.path)]) == 0
    assert "unlabeled: image chips only" in capsys.readouterr().out
    assert main(["chips", "info", str(unlabeled.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["labeled"] is False and info["attrs"]["labeled"] is False
    assert main(["chips", "info", str(labeled.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labeled"] is True


def test_cli_preview__unlabeled_cube(cube, tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["chips", "preview", str(cube.path), "-o", str(out), "--n", "2"]) == 0
    with Image.open(out) as png:
        assert png.size == (2 * 4 * WIN + 3 * MARGIN, 4 * WIN + 2 * MARGIN + LEGEND_HEIGHT)
