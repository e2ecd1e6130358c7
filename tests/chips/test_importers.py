"""xchm.chips.from_directories and from_hf_dataset on real small files."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from rasterio.errors import NotGeoreferencedWarning

import xchm.chips
from xchm.errors import BandError, InputError, MissingDependencyError, XCHMWarning

# Most scenes here are one split block, so their cubes hold one split; the build's
# warning about the other is what test_splits.py checks.
pytestmark = pytest.mark.filterwarnings("ignore:split .* has no chip:xchm.errors.XCHMWarning")

CRS = "EPSG:32617"
LEFT, TOP, RES, WIN = 400_000.0, 7_000_000.0, 2.0, 16
GRID = (3, 4)  # chip rows x chip columns
# Chips that the filters must remove, by name: (rule that removes them).
BAD = {"r0c1": "missing", "r1c2": "no_positive", "r2c3": "missing"}


def chip_arrays(name, rng):
    """An image (3, WIN, WIN) uint16 (0 = nodata) and heights (WIN, WIN) float32."""
    image = rng.integers(100, 4000, (3, WIN, WIN)).astype("uint16")
    height = rng.uniform(1, 20, (WIN, WIN)).astype("float32")
    if name == "r0c1":
        height[3, 4] = np.nan  # missing height
    elif name == "r1c2":
        height = -rng.uniform(0, 2, (WIN, WIN)).astype("float32")  # no height > 0
    elif name == "r2c3":
        image[1, 5, 6] = 0  # image nodata
    return image, height


def write_tif(path, array, *, left=LEFT, top=TOP, nodata=None, georef=True, **attrs):
    array = array if array.ndim == 3 else array[None]
    da = xr.DataArray(
        array,
        dims=("band", "y", "x"),
        coords={
            "band": np.arange(1, len(array) + 1),
            "y": top - RES * (np.arange(array.shape[1]) + 0.5),
            "x": left + RES * (np.arange(array.shape[2]) + 0.5),
        },
    )
    if georef:
        da = da.rio.write_crs(CRS)
    if nodata is not None:
        da = da.rio.write_nodata(nodata, encoded=False)
    da.attrs.update(attrs)
    da.rio.to_raster(path)


def corner(name):
    row, col = int(name[1]), int(name[3])
    return LEFT + col * WIN * RES, TOP - row * WIN * RES


@pytest.fixture
def chip_dirs(tmp_path):
    """images/ and labels/ of GRID GeoTIFF chips; returns (images, labels, {name: arrays})."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    chips = {}
    for r in range(GRID[0]):
        for c in range(GRID[1]):
            name = f"r{r}c{c}"
            image, height = chip_arrays(name, rng)
            left, top = corner(name)
            names = ("NIR", "Red", "Green")
            write_tif(images / f"{name}.tif", image, left=left, top=top, nodata=0, long_name=names)
            stored = np.where(np.isnan(height), -9999, height).astype("float32")
            write_tif(labels / f"{name}.tif", stored, left=left, top=top, nodata=-9999.0)
            chips[name] = (image, height)
    return images, labels, chips


@pytest.fixture
def npy_dirs(tmp_path):
    images, labels = tmp_path / "npy_images", tmp_path / "npy_labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        np.save(images / f"chip{i}.npy", rng.uniform(0, 1, (3, WIN, WIN)).astype("float32"))
        np.save(labels / f"chip{i}.npy", rng.uniform(1, 20, (1, WIN, WIN)).astype("float32"))
    return images, labels


def import_dirs(images, labels, store, **kwargs):
    kwargs.setdefault("progress", False)
    return xchm.chips.from_directories(images, labels, store, **kwargs)


def by_origin(cube):
    image, height = cube.image[...], cube.height[...]
    xs, ys = cube.coord("origin_x"), cube.coord("origin_y")
    return {(x, y): (image[i], height[i]) for i, (x, y) in enumerate(zip(xs, ys, strict=True))}


# -- from_directories ------------------------------------------------------------------
def test_from_directories__counts_chips_and_filters(chip_dirs, tmp_path):
    cube = import_dirs(*chip_dirs[:2], tmp_path / "c.zarr")
    f = cube.filters
    assert len(cube) == GRID[0] * GRID[1] - len(BAD)
    assert f["candidates"] == GRID[0] * GRID[1]
    assert f["removed"] == {"missing": 2, "no_positive": 1, "split_buffer": 0}


def test_from_directories__round_trips_chip_content(chip_dirs, tmp_path):
    images, labels, chips = chip_dirs
    found = by_origin(import_dirs(images, labels, tmp_path / "c.zarr"))
    for name, (image, height) in chips.items():
        if name in BAD:
            assert corner(name) not in found
            continue
        got_image, got_height = found[corner(name)]
        np.testing.assert_array_equal(got_image, image)
        np.testing.assert_array_equal(got_height, height)


def test_from_directories__reads_origins_crs_and_pixel_size(chip_dirs, tmp_path):
    cube = import_dirs(*chip_dirs[:2], tmp_path / "c.zarr")
    assert set(by_origin(cube)) == {corner(n) for n in chip_dirs[2] if n not in BAD}
    assert set(cube.coord("crs")) == {CRS}
    assert (cube.pixel_size, cube.window, cube.image.dtype) == (RES, WIN, np.uint16)
    assert sorted(cube.coord("scene")) == sorted(n for n in chip_dirs[2] if n not in BAD)


def test_from_directories__names_bands_from_descriptions(chip_dirs, tmp_path):
    cube = import_dirs(*chip_dirs[:2], tmp_path / "c.zarr")
    assert cube.bands == ("nir", "red", "green")


def test_from_directories__selects_bands_with_a_mapping(chip_dirs, tmp_path):
    images, labels, chips = chip_dirs
    cube = import_dirs(images, labels, tmp_path / "c.zarr", bands={"green": 3, "nir": "NIR"})
    got_image, _ = by_origin(cube)[corner("r0c0")]
    assert cube.bands == ("green", "nir")
    np.testing.assert_array_equal(got_image, chips["r0c0"][0][[2, 0]])


def test_from_directories__labels_map_blocks_shared_across_files(chip_dirs, tmp_path):
    cube = import_dirs(*chip_dirs[:2], tmp_path / "c.zarr", block_size=2)
    step = 2 * WIN * RES
    xs, ys, labels = cube.coord("origin_x"), cube.coord("origin_y"), cube.coord("split")
    by_block: dict[tuple[int, int], set[str]] = {}
    for x, y, label in zip(xs, ys, labels, strict=True):
        by_block.setdefault((math.floor(-y / step), math.floor(x / step)), set()).add(label)
    assert len(by_block) > 1 and all(len(found) == 1 for found in by_block.values())
    assert set(labels) == {"train", "val"}  # as many map blocks as splits: both get chips


def test_from_directories__label_nodata_becomes_nan(chip_dirs, tmp_path):
    cube = import_dirs(*chip_dirs[:2], tmp_path / "c.zarr", min_valid=0.5)
    _, height = by_origin(cube)[corner("r0c1")]
    assert np.isnan(height[3, 4]) and np.isfinite(height).sum() == WIN * WIN - 1


def test_from_directories__scene_tag_names_the_scene(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    image, height = chip_arrays("r0c0", np.random.default_rng(2))
    write_tif(images / "a.tif", image, nodata=0, scene="WV3-2019-07-02")
    write_tif(labels / "a.tif", height)
    cube = import_dirs(images, labels, tmp_path / "c.zarr", bands=("nir", "red", "green"))
    assert list(cube.coord("scene")) == ["WV3-2019-07-02"]


def test_from_directories__tif_without_crs_is_not_georeferenced(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    image, height = chip_arrays("r0c0", np.random.default_rng(5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        write_tif(images / "a.tif", image, georef=False, long_name=("nir", "red", "green"))
    np.save(labels / "a.npy", height)
    cube = import_dirs(images, labels, tmp_path / "c.zarr", split_by="scene")
    assert cube.pixel_size is None and list(cube.coord("crs")) == [""]


def test_from_directories__one_error_lists_every_bad_file(chip_dirs, tmp_path):
    images, labels, _ = chip_dirs
    rng = np.random.default_rng(3)
    (labels / "r0c0.tif").unlink()  # image without label
    np.save(labels / "extra.npy", rng.uniform(1, 2, (WIN, WIN)))  # label without image
    np.save(images / "r1c1.npy", rng.uniform(1, 2, (3, WIN, WIN)))  # two files named r1c1
    for name, directory, array in [
        ("r0c1", images, rng.integers(1, 9, (3, 32, 32)).astype("uint16")),  # size
        ("r0c2", images, rng.integers(1, 9, (2, WIN, WIN)).astype("uint16")),  # bands
        ("r0c3", labels, rng.uniform(1, 2, (2, WIN, WIN)).astype("float32")),  # label bands
    ]:
        left, top = corner(name)
        write_tif(directory / f"{name}.tif", array, left=left, top=top)
    store = tmp_path / "c.zarr"
    with pytest.raises(InputError, match="6 problems") as info:
        import_dirs(images, labels, store, bands=("nir", "red", "green"))
    for line in (
        "images/r0c0.tif: no chip named 'r0c0'",
        "labels/extra.npy: no chip named 'extra'",
        "images/r1c1.tif: same name as r1c1.npy",
        "images/r0c1.tif: 32x32 px, the others 16x16",
        "images/r0c2.tif: 2 bands, the others 3",
        "labels/r0c3.tif: 2 bands; a label has 1",
    ):
        assert line in str(info.value)
    assert not store.exists()


def test_from_directories__caps_the_list_of_bad_files(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for i in range(25):
        np.save(images / f"only{i}.npy", np.zeros((3, WIN, WIN), "float32"))
    with pytest.raises(InputError, match="and 5 more"):
        import_dirs(images, labels, tmp_path / "c.zarr", bands=("nir", "red", "green"))


def test_from_directories__asks_for_bands_without_descriptions(npy_dirs, tmp_path):
    with pytest.raises(BandError, match="bands="):
        import_dirs(*npy_dirs, tmp_path / "c.zarr", split_by="random")


def test_from_directories__without_georeferencing_falls_back_to_random(npy_dirs, tmp_path):
    with pytest.warns(XCHMWarning, match="falling back to split_by='random'.*optimistic"):
        cube = import_dirs(*npy_dirs, tmp_path / "c.zarr", bands=("nir", "red", "green"))
    assert cube.attrs["split"]["method"] == "random"
    assert cube.pixel_size is None and set(cube.coord("crs")) == {""}
    assert np.isnan(cube.coord("origin_x")).all() and len(cube) == 6


def test_from_directories__fallback_warning_points_at_the_caller(npy_dirs, tmp_path):
    """The warning's stack level skips renamed_keywords' wrapper: it names this file."""
    with pytest.warns(XCHMWarning, match="falling back") as caught:
        xchm.chips.from_directories(
            *npy_dirs, tmp_path / "c.zarr", bands=("nir", "red", "green"), progress=False
        )
    (warned,) = [w for w in caught if "falling back" in str(w.message)]
    assert warned.filename == __file__


def test_from_directories__output_and_split_by_and_their_old_names(npy_dirs, tmp_path):
    options = {"bands": ("a", "b", "c"), "progress": False}
    new = xchm.chips.from_directories(
        *npy_dirs, output=tmp_path / "new.zarr", split_by="scene", **options
    )
    with pytest.warns(FutureWarning) as caught:
        old = xchm.chips.from_directories(
            *npy_dirs, store=tmp_path / "old.zarr", split="scene", **options
        )
    said = sorted(str(w.message) for w in caught if w.category is FutureWarning)
    assert len(said) == 2
    assert said[0].startswith("from_directories(split=...) is deprecated")
    assert said[0].endswith("use split_by=...")
    assert said[1].startswith("from_directories(store=...)") and said[1].endswith("output=...")
    assert new.path.name == "new.zarr" and old.path.name == "old.zarr"
    assert new.attrs["split"]["method"] == old.attrs["split"]["method"] == "scene"
    assert new.splits == old.splits


def test_from_directories__explicit_random_split_does_not_warn(npy_dirs, tmp_path):
    cube = import_dirs(*npy_dirs, tmp_path / "c.zarr", bands=("a", "b", "c"), split_by="random")
    assert cube.attrs["split"]["method"] == "random"


# -- from_hf_dataset -------------------------------------------------------------------
def hf_rows(n, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 1, (n, 3, WIN, WIN)).astype(dtype)
    label = rng.uniform(1, 20, (n, WIN, WIN)).astype("float32")
    return image, label


def save_hf(path, **splits):
    import datasets

    parts = {
        name: datasets.Dataset.from_dict({"image": list(image), "label": list(label)})
        for name, (image, label) in splits.items()
    }
    (parts["data"] if list(parts) == ["data"] else datasets.DatasetDict(parts)).save_to_disk(path)
    return path


def import_hf(path, *args, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("bands", ("nir", "red", "green"))
    return xchm.chips.from_hf_dataset(path, *args, **kwargs)


def test_from_hf_dataset__output_and_split_by_and_their_old_names(tmp_path):
    path = save_hf(tmp_path / "hf", data=hf_rows(6))
    new = import_hf(path, output=tmp_path / "new.zarr", split_by="random")
    with pytest.warns(FutureWarning, match=r"from_hf_dataset\((store|split)=\.\.\.\)"):
        old = import_hf(path, store=tmp_path / "old.zarr", split="random")
    assert len(new) == len(old) and new.attrs["split"]["method"] == "random"


def test_from_hf_dataset__imports_rows_and_filters(tmp_path):
    image, label = hf_rows(6)
    label[1, 0, 0] = np.nan
    label[4] = 0.0
    path = save_hf(tmp_path / "hf", data=(image, label))
    cube = import_hf(path, tmp_path / "c.zarr", split_by="random")
    assert len(cube) == 4 and cube.filters["removed"]["missing"] == 1
    for i, scene in enumerate(cube.coord("scene")):
        np.testing.assert_array_equal(cube.image[i], image[int(scene)])
        np.testing.assert_array_equal(cube.height[i], label[int(scene)])


def test_from_hf_dataset__keeps_source_splits(tmp_path):
    path = save_hf(tmp_path / "hf", train=hf_rows(5, 1), validation=hf_rows(3, 2))
    cube = import_hf(path, tmp_path / "c.zarr", split_by="source")
    assert cube.splits == {"train": 5, "val": 3}
    assert cube.attrs["split"]["method"] == "source"
    assert cube.attrs["provenance"]["inputs"][0]["splits"] == {"train": 5, "validation": 3}
    assert {s.split("/")[0] for s in cube.sel(split="val").coord("scene")} == {"validation"}


def test_from_hf_dataset__source_split_from_a_column(tmp_path):
    import datasets

    image, label = hf_rows(4)
    rows = {"image": list(image), "label": list(label), "part": ["train", "test"] * 2}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "hf")
    cube = import_hf(tmp_path / "hf", tmp_path / "c.zarr", split_by="source", split_column="part")
    assert cube.splits == {"test": 2, "train": 2}


def test_from_hf_dataset__keeps_the_array_feature_dtype(tmp_path):
    import datasets

    _, label = hf_rows(3)
    image = np.random.default_rng(4).integers(1, 4000, (3, 3, WIN, WIN)).astype("uint16")
    features = datasets.Features(
        {
            "image": datasets.Array3D((3, WIN, WIN), "uint16"),
            "label": datasets.Array2D((WIN, WIN), "float32"),
        }
    )
    rows = {"image": list(image), "label": list(label)}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "hf")
    cube = import_hf(tmp_path / "hf", tmp_path / "c.zarr", split_by="random")
    assert cube.image.dtype == np.uint16 and len(cube) == 3


def test_from_hf_dataset__block_split_falls_back_to_random(tmp_path):
    path = save_hf(tmp_path / "hf", data=hf_rows(2))
    with pytest.warns(XCHMWarning, match="no georeferencing"):
        cube = import_hf(path, tmp_path / "c.zarr")
    assert cube.attrs["split"]["method"] == "random"


def test_from_hf_dataset__missing_column_lists_the_columns(tmp_path):
    path = save_hf(tmp_path / "hf", data=hf_rows(2))
    with pytest.raises(InputError, match=r"no column 'chm'.*\['image', 'label'\]"):
        import_hf(path, tmp_path / "c.zarr", label_column="chm")


def test_from_hf_dataset__wrong_image_shape_raises(tmp_path):
    image, label = hf_rows(2)
    path = save_hf(tmp_path / "hf", data=(image[:, 0], label))  # (h, w) images
    with pytest.raises(InputError, match=r"must be \(band, h, w\)"):
        import_hf(path, tmp_path / "c.zarr", split_by="random")


def test_from_hf_dataset__source_split_needs_split_names(tmp_path):
    path = save_hf(tmp_path / "hf", data=hf_rows(2))
    with pytest.raises(InputError, match="split_column="):
        import_hf(path, tmp_path / "c.zarr", split_by="source")


def test_from_hf_dataset__without_datasets_raises_missing_dependency(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingDependencyError, match=r"xchm\[hf\]"):
        import_hf(tmp_path / "hf", tmp_path / "c.zarr")
