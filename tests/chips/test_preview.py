"""xchm.chips.preview: PNG grid of image/height chip pairs."""

from __future__ import annotations

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from PIL import Image

import xchm.chips
from xchm.chips.cube import ChipCube
from xchm.chips.preview import LEGEND_HEIGHT, MARGIN, NODATA_GREY, preview
from xchm.errors import InputError, OutputError

WIN = 64
# Build options shared with the CLI tests: one-chip split blocks give train and val
# chips from one small scene; min_valid keeps chips with a few missing pixels.
BUILD_OPTIONS = {"block_size": 1, "min_valid": 0.9}


def write_scene(directory, name="scene"):
    """Write a 3-band uint16 image (nodata 0, named bands) and a float32 CHM GeoTIFF.

    256 x 320 px at 2 m in EPSG:32617: 4 x 5 chips of 64 px. The CHM has a NaN
    patch, a chip of zeros (dropped: no height > 0) and scattered zeros; the image
    has a few nodata pixels.
    """
    rng = np.random.default_rng(42)
    h, w = 256, 320
    coords = {
        "y": 7_000_000 - 2.0 * (np.arange(h) + 0.5),
        "x": 400_000 + 2.0 * (np.arange(w) + 0.5),
    }
    pixels = rng.integers(100, 4000, (3, h, w)).astype("uint16")
    pixels[:, 5, 5] = 0  # nodata in every band
    pixels[1, 70, 200] = 0  # nodata in one band
    image = xr.DataArray(pixels, dims=("band", "y", "x"), coords={"band": [1, 2, 3], **coords})
    image.attrs["long_name"] = ("NIR", "Red", "Green")  # written as band descriptions
    image = image.rio.write_crs("EPSG:32617").rio.write_nodata(0)
    heights = rng.uniform(0, 30, (h, w)).astype("float32")
    heights[rng.random((h, w)) < 0.05] = 0.0
    heights[0:64, 64:128] = 0.0
    heights[100:110, 150:160] = np.nan
    chm = xr.DataArray(heights, dims=("y", "x"), coords=coords)
    chm = chm.rio.write_crs("EPSG:32617").rio.write_nodata(np.nan)
    directory.mkdir(parents=True, exist_ok=True)
    image_path, chm_path = directory / f"{name}_image.tif", directory / f"{name}_chm.tif"
    image.rio.to_raster(image_path)
    chm.rio.to_raster(chm_path)
    return image_path, chm_path


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preview")
    pair = write_scene(folder / "src")
    built = xchm.chips.build([pair], folder / "cube.zarr", progress=False, **BUILD_OPTIONS)
    assert set(built.splits) == {"train", "val"}  # the tests below need both
    return built


def _png(path):
    with Image.open(path) as image:
        return image.mode, np.asarray(image)


def _panels(canvas, i, *, left):
    """The image (left=True) or height panel of pair i in a one-column, scale-1 grid."""
    top = MARGIN + i * (WIN + MARGIN)
    x0 = MARGIN + (0 if left else WIN)
    return canvas[top : top + WIN, x0 : x0 + WIN]


@pytest.mark.parametrize(
    ("n", "columns", "scale", "size"),
    [
        (5, 2, 2, (2 * 2 * 128 + 3 * 4, 3 * 128 + 4 * 4 + 16)),  # 3 rows, last one half full
        (3, 4, 1, (3 * 2 * 64 + 4 * 4, 64 + 2 * 4 + 16)),  # fewer pairs than columns
        (1000, 5, 1, (5 * 2 * 64 + 6 * 4, 4 * 64 + 5 * 4 + 16)),  # n > chips: all 19
    ],
)
def test_preview__png_size_follows_n_columns_and_scale(cube, tmp_path, n, columns, scale, size):
    assert len(cube) == 19  # 20 chips less the one without heights
    out = preview(cube, tmp_path / "p.png", n=n, columns=columns, scale=scale)
    mode, pixels = _png(out)
    assert mode == "RGB"
    assert (pixels.shape[1], pixels.shape[0]) == size


def test_preview__picks_only_chips_of_the_split(cube, tmp_path, monkeypatch):
    read = []
    original = ChipCube.read

    def spy(self, positions):
        read.extend(self.index[np.asarray(positions)])
        return original(self, positions)

    monkeypatch.setattr(ChipCube, "read", spy)
    preview(cube, tmp_path / "p.png", n=len(cube), split="val")
    labels = cube.coord("split")
    assert sorted(read) == np.flatnonzero(labels == "val").tolist()


def test_preview__nan_heights_are_grey(cube, tmp_path):
    out = preview(cube, tmp_path / "p.png", n=len(cube), columns=1, scale=1)
    _, canvas = _png(out)
    _, heights = cube.read(np.arange(len(cube)))  # the grid shows chips in cube order
    assert np.isnan(heights).sum() == 100
    for i, chip in enumerate(heights):
        grey = (_panels(canvas, i, left=False) == NODATA_GREY).all(axis=-1)
        np.testing.assert_array_equal(grey, np.isnan(chip))


def test_preview__nodata_image_pixels_are_black(cube, tmp_path):
    out = preview(cube, tmp_path / "p.png", n=len(cube), columns=1, scale=1)
    _, canvas = _png(out)
    images, _ = cube.read(np.arange(len(cube)))
    missing = (images == cube.nodata).any(axis=1)
    assert missing.sum() == 2
    black = np.stack([(_panels(canvas, i, left=True) == 0).all(axis=-1) for i in range(len(cube))])
    assert black[missing].all()


def test_preview__upscales_by_nearest_neighbour(cube, tmp_path):
    _, small = _png(preview(cube, tmp_path / "s.png", n=1, scale=1))
    _, large = _png(preview(cube, tmp_path / "l.png", n=1, scale=3))
    pair_small = small[MARGIN : MARGIN + WIN, MARGIN : MARGIN + 2 * WIN]
    pair_large = large[MARGIN : MARGIN + 3 * WIN, MARGIN : MARGIN + 6 * WIN]
    np.testing.assert_array_equal(pair_large[::3, ::3], pair_small)


def test_preview__same_seed_same_png_other_seed_other_chips(cube, tmp_path):
    a = _png(preview(cube, tmp_path / "a.png", n=4, seed=1))[1]
    b = _png(preview(cube, tmp_path / "b.png", n=4, seed=1))[1]
    c = _png(preview(cube, tmp_path / "c.png", n=4, seed=2))[1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_preview__legend_line_is_drawn(cube, tmp_path):
    _, canvas = _png(preview(cube, tmp_path / "p.png", n=2))
    legend = canvas[-LEGEND_HEIGHT:]
    assert (legend.min(axis=-1) < 100).any()  # dark text and ramp on white


def test_preview__refuses_to_overwrite(cube, tmp_path):
    out = tmp_path / "p.png"
    out.write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        preview(cube, out)
    assert out.read_text() == "keep me"


def test_preview__overwrite_replaces_and_leaves_no_other_file(cube, tmp_path):
    out = tmp_path / "p.png"
    out.write_text("old")
    assert preview(cube, out, n=2, overwrite=True) == out
    assert _png(out)[0] == "RGB"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


def test_preview__missing_directory_creates_nothing(cube, tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        preview(cube, tmp_path / "sub" / "p.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "test"}, "not in this cube"),
        ({"n": 0}, "n must be a positive integer"),
        ({"scale": 1.5}, "scale must be a positive integer"),
    ],
)
def test_preview__bad_arguments_raise_input_error(cube, tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        preview(cube, tmp_path / "p.png", **kwargs)


def test_preview__path_must_be_png(cube, tmp_path):
    with pytest.raises(InputError, match=r"\.png"):
        preview(cube, tmp_path / "p.jpg")


def test_preview__output_keyword_and_its_old_name_path(cube, tmp_path):
    assert preview(cube, output=tmp_path / "a.png", n=2).name == "a.png"
    assert cube.preview(output=tmp_path / "b.png", n=2).name == "b.png"
    with pytest.warns(FutureWarning, match=r"^preview\(path=\.\.\.\) is deprecated.*output="):
        assert preview(cube, path=tmp_path / "c.png", n=2).name == "c.png"
    with pytest.warns(FutureWarning, match=r"^ChipCube.preview\(path=\.\.\.\).*output="):
        assert cube.preview(path=tmp_path / "d.png", n=2).name == "d.png"
