"""The ``xchm chips`` commands: build, info, preview, and their error exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xchm.chips
from xchm.chips import ScenePair
from xchm.cli import main

from .test_preview import BUILD_OPTIONS, write_scene

# The CLI spelling of BUILD_OPTIONS, plus no progress bar.
CLI_OPTIONS = ["--block-size", "1", "--min-valid", "0.9", "-q"]
XCHM = Path(sys.executable).with_name("xchm")  # the installed entry point


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_scene(tmp_path_factory.mktemp("cli_chips") / "src")


@pytest.fixture(scope="module")
def cube(scene, tmp_path_factory):
    store = tmp_path_factory.mktemp("cli_cube") / "cube.zarr"
    return xchm.chips.build([scene], store, progress=False, **BUILD_OPTIONS)


def _same_content(a, b):
    np.testing.assert_array_equal(a.image[...], b.image[...])
    np.testing.assert_array_equal(a.height[...], b.height[...])
    for name in ("scene", "date", "origin_x", "origin_y", "split"):
        np.testing.assert_array_equal(a.coord(name), b.coord(name))
    assert a.bands == b.bands and a.attrs["statistics"] == b.attrs["statistics"]


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xchm: error: ")
    return err


# -- build -------------------------------------------------------------------------------
def test_chips_build__pair_equals_python_build(scene, cube, tmp_path, capsys):
    store = tmp_path / "cli.zarr"
    assert main(["chips", "build", "-o", str(store), "--pair", *map(str, scene), *CLI_OPTIONS]) == 0
    assert f"chip cube   {store}" in capsys.readouterr().out  # the summary
    _same_content(xchm.chips.open(store), cube)


def test_chips_build__pairs_csv_with_relative_paths_equals_python_build(scene, tmp_path):
    image, chm = scene
    csv = image.parent.parent / "pairs.csv"  # paths relative to the CSV's directory
    csv.write_text(
        f"image,chm,scene,date\nsrc/{image.name},src/{chm.name},plot-7,2021-06-01\n",
        encoding="utf-8",
    )
    store = tmp_path / "csv.zarr"
    assert main(["chips", "build", "-o", str(store), "--pairs-csv", str(csv), *CLI_OPTIONS]) == 0
    pair = ScenePair(image, chm, scene="plot-7", date="2021-06-01")
    expected = xchm.chips.build([pair], tmp_path / "py.zarr", progress=False, **BUILD_OPTIONS)
    built = xchm.chips.open(store)
    _same_content(built, expected)
    assert set(built.coord("scene")) == {"plot-7"}


def test_chips_build__bands_selects_and_orders_bands(scene, cube, tmp_path):
    store = tmp_path / "mapped.zarr"
    args = ["chips", "build", "-o", str(store), "--pair", *map(str, scene), *CLI_OPTIONS]
    assert main([*args, "--bands", "green=3,nir=NIR"]) == 0
    mapped = xchm.chips.open(store)
    assert mapped.bands == ("green", "nir")
    np.testing.assert_array_equal(mapped.image[...], cube.image[...][:, [2, 0]])


def test_chips_build__band_map_is_an_old_spelling_of_bands(scene, cube, tmp_path, capsys):
    store = tmp_path / "old.zarr"
    args = ["chips", "build", "-o", str(store), "--pair", *map(str, scene), *CLI_OPTIONS]
    assert main([*args, "--band-map", "green=3", "nir=NIR"]) == 0
    assert "--band-map is deprecated" in capsys.readouterr().err
    assert xchm.chips.open(store).bands == ("green", "nir")


def test_chips_build__bands_and_options_reach_build(scene, tmp_path):
    store = tmp_path / "named.zarr"
    args = ["chips", "build", "-o", str(store), "--pair", *map(str, scene), "-q"]
    options = ["--bands", "r", "g", "b", "--split-by", "random", "--val-fraction", "0.3"]
    assert main([*args, *options, "--test-fraction", "0.1", "--keep-no-positive"]) == 0
    built = xchm.chips.open(store)
    assert built.bands == ("red", "green", "blue")
    assert built.attrs["split"]["fractions"] == pytest.approx(
        {"train": 0.6, "val": 0.3, "test": 0.1}
    )
    assert built.filters["removed"]["no_positive"] == 0


def test_chips_build__bad_bands_syntax_is_a_usage_error(scene, tmp_path, capsys):
    store = tmp_path / "bad.zarr"
    args = ["chips", "build", "-o", str(store), "--pair", *map(str, scene), "-q"]
    assert main([*args, "--bands", "nir:4,red=3"]) == 2
    line = _one_line_error(capsys)
    assert "argument --bands" in line and "'nir:4' is not NAME=BAND" in line
    assert not store.exists()


def test_chips_build__missing_image_exits_1(scene, tmp_path, capsys):
    missing = tmp_path / "nope.tif"
    args = ["chips", "build", "-o", str(tmp_path / "c.zarr"), "--pair", str(missing), "x.tif"]
    assert main(args) == 1
    assert str(missing) in _one_line_error(capsys)


def test_chips_build__missing_pairs_csv_exits_1(tmp_path, capsys):
    csv = tmp_path / "pairs.csv"
    assert main(["chips", "build", "-o", str(tmp_path / "c.zarr"), "--pairs-csv", str(csv)]) == 1
    assert str(csv) in _one_line_error(capsys)


def test_chips_build__existing_store_without_overwrite_exits_1(scene, cube, capsys):
    before = (cube.path / "zarr.json").read_bytes()
    args = ["chips", "build", "-o", str(cube.path), "--pair", *map(str, scene), "-q"]
    assert main(args) == 1
    assert "overwrite" in _one_line_error(capsys)
    assert (cube.path / "zarr.json").read_bytes() == before


def test_chips_build__no_pairs_exits_1(tmp_path, capsys):
    assert main(["chips", "build", "-o", str(tmp_path / "c.zarr")]) == 1
    assert "--pair" in _one_line_error(capsys)


# -- info --------------------------------------------------------------------------------
def test_chips_info__prints_the_summary(cube, capsys):
    assert main(["chips", "info", str(cube.path)]) == 0
    assert capsys.readouterr().out.strip() == cube.summary()


def test_chips_info__json_has_attrs_length_and_splits(cube, capsys):
    assert main(["chips", "info", str(cube.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["chips"] == len(cube) == 19
    assert info["splits"] == cube.splits
    assert info["attrs"] == json.loads(json.dumps(cube.attrs))


def test_chips_info__missing_store_exits_1(tmp_path, capsys):
    assert main(["chips", "info", str(tmp_path / "none.zarr")]) == 1
    assert "no Zarr store" in _one_line_error(capsys)


# -- preview -----------------------------------------------------------------------------
def test_chips_preview__writes_png_of_the_split(cube, tmp_path, capsys):
    out = tmp_path / "preview.png"
    args = ["chips", "preview", str(cube.path), "-o", str(out), "--n", "16", "--split", "val"]
    assert main([*args, "--seed", "3", "--columns", "2", "--scale", "1"]) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as image:  # the 3 val chips: 2 columns, 2 rows
        assert image.size == (2 * 2 * 64 + 3 * 4, 2 * 64 + 3 * 4 + 16)


def test_chips_preview__existing_png_without_overwrite_exits_1(cube, tmp_path, capsys):
    out = tmp_path / "preview.png"
    out.write_text("keep me")
    assert main(["chips", "preview", str(cube.path), "-o", str(out)]) == 1
    assert "overwrite" in _one_line_error(capsys)
    assert out.read_text() == "keep me"
    assert main(["chips", "preview", str(cube.path), "-o", str(out), "--overwrite"]) == 0


def test_chips__without_subcommand_prints_help(capsys):
    assert main(["chips"]) == 2  # usage, as argparse
    assert "preview" in capsys.readouterr().out


# -- the installed command ---------------------------------------------------------------
def test_chips__installed_entry_point_runs_info_and_exits_1_on_errors(cube, tmp_path):
    assert XCHM.exists(), f"{XCHM} missing: pip install -e . installs the xchm command"
    ok = subprocess.run(
        [str(XCHM), "chips", "info", str(cube.path)], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and ok.stdout.strip() == cube.summary()
    bad = subprocess.run(
        [str(XCHM), "chips", "info", str(tmp_path / "none.zarr")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1


def test_cli_import__does_not_import_torch():
    code = (
        "import sys, xchm.cli, xchm.cli.chips; xchm.cli.build_parser(); "
        "print(','.join(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
