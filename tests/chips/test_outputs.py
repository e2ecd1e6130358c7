"""Where chip cubes go: new, empty or a chip cube; never a folder xchm did not write.

``chips.build`` and the importers follow :mod:`xchm.outputs`: ``overwrite=True``
replaces a previous chip cube (complete or not) and nothing else, and a build
killed at any moment leaves a folder that a rerun recognises as its own.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import xchm.chips
import xchm.outputs
from xchm.chips import writer as writer_module
from xchm.chips.preview import preview
from xchm.chips.store import is_chip_cube
from xchm.errors import (
    InputError,
    OutputError,
    OutputExistsError,
    PathNotFoundError,
    XCHMError,
)
from xchm.outputs import MARKER, mark, output_kind

# Most scenes here are one split block, so their cubes hold one split; the build's
# warning about the other is what test_splits.py checks.
pytestmark = pytest.mark.filterwarnings("ignore:split .* has no chip:xchm.errors.XCHMWarning")

WIN = 16


def snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def user_zarr(tmp_path):
    """A user's own Zarr v3 store (not an xchm cube) with data in it."""
    path = tmp_path / "mine.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs["project"] = "my survey"
    group.create_array("heights", shape=(4,), dtype="float32")[:] = [1, 2, 3, 4]
    return path


@pytest.fixture
def user_folder(tmp_path):
    path = tmp_path / "mine"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    (path / "sub").mkdir()
    (path / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return path


@pytest.fixture
def npy_dirs(tmp_path):
    """images/ and labels/ of 4 small .npy chips."""
    images, labels = tmp_path / "npy_images", tmp_path / "npy_labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        np.save(images / f"chip{i}.npy", rng.uniform(0, 1, (3, WIN, WIN)).astype("float32"))
        np.save(labels / f"chip{i}.npy", rng.uniform(1, 20, (1, WIN, WIN)).astype("float32"))
    return images, labels


def import_dirs(dirs, store, **kwargs):
    return xchm.chips.from_directories(
        *dirs, store, bands=("nir", "red", "green"), split_by="random", progress=False, **kwargs
    )


# -- foreign folders are refused and untouched ------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("target", ["user_folder", "user_zarr"])
def test_build__refuses_a_folder_xchm_did_not_write(request, pair_files, build, target, overwrite):
    store = request.getfixturevalue(target)
    before = snapshot(store)
    with pytest.raises(OutputExistsError, match="not written by xchm; nothing in it is touched"):
        build([pair_files], output=store, overwrite=overwrite)
    assert snapshot(store) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_from_directories__refuses_a_user_zarr_store_before_reading(
    npy_dirs, user_zarr, monkeypatch, overwrite
):
    def no_reading(*args, **kwargs):
        raise AssertionError("chips were read before the store was checked")

    monkeypatch.setattr("xchm.chips.importers._read_header", no_reading)
    before = snapshot(user_zarr)
    with pytest.raises(OutputExistsError, match="not written by xchm"):
        import_dirs(npy_dirs, user_zarr, overwrite=overwrite)
    assert snapshot(user_zarr) == before


def test_from_hf_dataset__refuses_a_user_zarr_store(tmp_path, user_zarr):
    pytest.importorskip("datasets")
    before = snapshot(user_zarr)
    with pytest.raises(OutputExistsError, match="not written by xchm"):
        xchm.chips.from_hf_dataset(tmp_path / "hf", user_zarr, overwrite=True, progress=False)
    assert snapshot(user_zarr) == before


def test_build__refuses_a_file_and_another_kind_of_xchm_output(tmp_path, pair_files, build):
    a_file = tmp_path / "cube.zarr"
    a_file.write_text("keep me")
    with pytest.raises(OutputExistsError, match="is a file"):
        build([pair_files], output=a_file, overwrite=True)
    assert a_file.read_text() == "keep me"
    run = tmp_path / "run"
    run.mkdir()
    mark(run, "training run")
    (run / "metrics.csv").write_text("epoch,loss\n")
    before = snapshot(run)
    with pytest.raises(OutputExistsError, match="holds an xchm training run, not a chip cube"):
        build([pair_files], output=run, overwrite=True)
    assert snapshot(run) == before


# -- a previous cube --------------------------------------------------------------------
def test_build__overwrite_replaces_a_previous_cube(tmp_path, pair_files, build):
    store = tmp_path / "cube.zarr"
    first = build([pair_files], output=store, window=32)
    assert first.window == 32
    with pytest.raises(OutputExistsError, match="pass overwrite=True") as err:
        build([pair_files], output=store)
    assert "did not finish" not in str(err.value)
    second = build([pair_files], output=store, window=64, overwrite=True)
    assert second.window == 64 and len(second) == 30
    fresh = build([pair_files], output=tmp_path / "fresh.zarr", window=64)
    # Nothing of the first cube is left (its 32 px arrays had other chunk files).
    assert sorted(snapshot(store)) == sorted(snapshot(fresh.path))


def test_build__a_finished_cube_has_no_marker_file_for_zarr_to_warn_about(
    tmp_path, pair_files, build
):
    cube = build([pair_files], output=tmp_path / "cube.zarr")
    assert not (cube.path / MARKER).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        members = dict(zarr.open_group(str(cube.path), mode="r").members())
    assert {"image", "height", "split"} <= set(members)
    # Its attrs still say whose it is.
    assert is_chip_cube(cube.path)


def test_from_directories__overwrite_replaces_a_previous_cube(
    tmp_path, npy_dirs, pair_files, build
):
    store = tmp_path / "cube.zarr"
    build([pair_files], output=store)  # a cube of another source, window 64
    with pytest.raises(OutputExistsError, match="overwrite"):
        import_dirs(npy_dirs, store)
    cube = import_dirs(npy_dirs, store, overwrite=True)
    assert cube.window == WIN and len(cube) == 4


# -- a build killed at any moment is recognised and redone --------------------------------
class Killed(BaseException):
    """Stands for a kill: nothing after it runs (not an Exception, like a SIGKILL)."""


def _rerun_after_kill(store, pair_files, build):
    """A killed build's store: not a cube to open, refused without overwrite, redone with it."""
    with pytest.raises(InputError, match="incomplete"):
        xchm.chips.open(store)
    with pytest.raises(OutputExistsError, match="did not finish.*overwrite=True"):
        build([pair_files], output=store)
    cube = build([pair_files], output=store, overwrite=True)
    assert len(cube) == 30 and len(xchm.chips.open(store)) == 30


def test_build__killed_before_zarr_json_is_redone(tmp_path, monkeypatch, pair_files, build):
    store = tmp_path / "cube.zarr"

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(zarr, "create_group", killed)
        with pytest.raises(Killed):
            build([pair_files], output=store)
    assert sorted(p.name for p in store.iterdir()) == [MARKER]
    with pytest.raises(InputError, match="incomplete: its build was cut off"):
        xchm.chips.open(store)
    # Nothing was written but the marker: the same call simply runs again.
    assert len(build([pair_files], output=store)) == 30


def test_build__killed_while_adding_chips_is_redone(tmp_path, monkeypatch, pair_files, build):
    store = tmp_path / "cube.zarr"
    add = writer_module.ChipWriter.add
    seen = []

    def killed_after_a_batch(self, *args, **kwargs):
        # The folder stays marked while chips are written, so a kill here is safe.
        seen.append(output_kind(self.path))
        add(self, *args, **kwargs)
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(writer_module.ChipWriter, "add", killed_after_a_batch)
        with pytest.raises(Killed):
            build([pair_files], output=store)
    assert seen == ["chip cube"]
    assert (store / "zarr.json").is_file()
    _rerun_after_kill(store, pair_files, build)


def test_build__killed_while_finishing_is_redone(tmp_path, monkeypatch, pair_files, build):
    store = tmp_path / "cube.zarr"
    update = writer_module.ChipWriter._attrs

    def killed(self, *args, **kwargs):
        update(self, *args, **kwargs)
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(writer_module.ChipWriter, "_attrs", killed)
        with pytest.raises(Killed):
            build([pair_files], output=store)
    _rerun_after_kill(store, pair_files, build)


def test_build__killed_while_clearing_a_previous_cube_is_redone(
    tmp_path, monkeypatch, pair_files, build
):
    store = tmp_path / "cube.zarr"
    build([pair_files], output=store)

    def killed_after_zarr_json(folder):
        # the worst moment: attrs gone, arrays still there (folder: a Path or a Location)
        (Path(str(folder)) / "zarr.json").unlink()
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(xchm.outputs, "_clear", killed_after_zarr_json)
        with pytest.raises(Killed):
            build([pair_files], output=store, overwrite=True)
    assert (store / "image").is_dir()
    _rerun_after_kill(store, pair_files, build)


# -- errors are xchm's ---------------------------------------------------------------------
def test_missing_inputs_raise_path_not_found(tmp_path, npy_dirs):
    with pytest.raises(PathNotFoundError, match="no Zarr store at .*does not exist"):
        xchm.chips.open(tmp_path / "none.zarr")
    with pytest.raises(PathNotFoundError, match="chip directory .*nope does not exist"):
        import_dirs((tmp_path / "nope", npy_dirs[1]), tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()


def test_from_hf_dataset__missing_dataset_raises_path_not_found(tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(PathNotFoundError, match="no dataset folder at"):
        xchm.chips.from_hf_dataset(tmp_path / "none", tmp_path / "c.zarr", progress=False)
    assert not (tmp_path / "c.zarr").exists()


def test_preview__output_errors_are_xchm_errors(tmp_path, pair_files, build):
    pytest.importorskip("PIL")
    cube = build([pair_files], output=tmp_path / "cube.zarr")
    existing = tmp_path / "p.png"
    existing.write_text("keep me")
    with pytest.raises(OutputExistsError, match="overwrite"):
        preview(cube, existing)
    assert existing.read_text() == "keep me"
    with pytest.raises(OutputError, match="does not exist") as err:
        preview(cube, tmp_path / "sub" / "p.png")
    assert isinstance(err.value, XCHMError)
