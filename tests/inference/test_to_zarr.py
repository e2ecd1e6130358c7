"""predict_to_zarr: region-by-region stores, resume after a crash, fingerprints."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rioxarray
import xarray as xr
import zarr

import xchm
from xchm.errors import InputError, OutputError, OutputExistsError, ResumeError
from xchm.inference.to_zarr import PROGRESS_GROUP
from xchm.outputs import MARKER, prepare_output_dir

from .conftest import make_image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("to_zarr") / "model"
    model.save(path)
    return path


def _files(store: Path, variable: str = "chm") -> dict[str, bytes]:
    """Every file of one variable of a store, by relative path (chunks and metadata)."""
    root = store / variable
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _differ(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    """The files that differ between two ``_files`` listings (a short, readable diff)."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _done(store: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(store, mode="r", path=f"{PROGRESS_GROUP}/done")[...])


def test_predict_to_zarr__equals_predict_with_georeferencing(tmp_path, checkpoint):
    image = make_image(300, 260).chunk({"y": 128, "x": 128})
    ds = xchm.predict_to_zarr(image, checkpoint, tmp_path / "chm.zarr", region_size=256)
    expected = xchm.predict(image, checkpoint)
    np.testing.assert_array_equal(ds["chm"].values, expected.values)
    back = xr.open_zarr(tmp_path / "chm.zarr", decode_coords="all", consolidated=False)["chm"]
    assert back.rio.crs == image.rio.crs
    assert back.rio.transform() == image.rio.transform()
    assert back.encoding["chunks"] == (128, 128)
    assert ds.attrs["xchm_status"] == "complete" and back.attrs["units"] == "m"
    assert _done(tmp_path / "chm.zarr").all()


def test_predict_to_zarr__output_keyword_its_old_name_and_progress_by_default(
    tmp_path, checkpoint, capsys
):
    image = make_image(130, 130)
    ds = xchm.predict_to_zarr(image, checkpoint, output=tmp_path / "chm.zarr", region_size=128)
    assert "regions computed" in capsys.readouterr().err  # progress=True: the summary line
    with pytest.warns(FutureWarning, match=r"^predict_to_zarr\(store=\.\.\.\).*use output="):
        again = xchm.predict_to_zarr(  # the same job: resumes, nothing left to compute
            image, checkpoint, store=tmp_path / "chm.zarr", region_size=128, progress=False
        )
    assert "0/1 regions computed" in again.attrs["xchm_run"]
    assert capsys.readouterr().err == ""  # progress=False: quiet
    np.testing.assert_array_equal(again["chm"].values, ds["chm"].values)
    with pytest.raises(TypeError, match="both output= and its deprecated name store="):
        xchm.predict_to_zarr(image, checkpoint, tmp_path / "a.zarr", store=tmp_path / "b.zarr")


def test_predict_to_zarr__uncertainty_writes_both_layers(tmp_path, checkpoint):
    image = make_image(200, 150)
    ds = xchm.predict_to_zarr(
        image, checkpoint, tmp_path / "chm.zarr", region_size=128, uncertainty=True
    )
    expected = xchm.predict(image, checkpoint, uncertainty=True)
    for name in ("chm", "chm_std"):
        np.testing.assert_allclose(ds[name].values, expected[name].values, rtol=1e-6, atol=1e-6)
        assert ds[name].rio.crs == image.rio.crs


def test_predict_to_zarr__finished_store_is_not_recomputed(tmp_path, checkpoint, capsys):
    image = make_image(200, 150).chunk({"y": 64, "x": 64})
    store = tmp_path / "chm.zarr"
    xchm.predict_to_zarr(image, checkpoint, store, region_size=64)
    before = {p: p.stat().st_mtime_ns for p in (store / "chm").rglob("*") if p.is_file()}
    xchm.predict_to_zarr(image, checkpoint, store, region_size=64, progress=True)
    after = {p: p.stat().st_mtime_ns for p in (store / "chm").rglob("*") if p.is_file()}
    assert before == after
    assert "0/12 regions computed (12 already done)" in capsys.readouterr().err


def test_predict_to_zarr__skips_regions_marked_done(tmp_path, checkpoint):
    image = make_image(256, 256).chunk({"y": 64, "x": 64})
    store = tmp_path / "chm.zarr"
    xchm.predict_to_zarr(image, checkpoint, store, region_size=128)
    # Forget one region and spoil its chunks: only that region is computed again.
    zarr.open_array(store, mode="r+", path=f"{PROGRESS_GROUP}/done")[1, 0] = 0
    chm = zarr.open_array(store, mode="r+", path="chm")
    reference = chm[...]
    chm[0:128, 0:128] = -1.0  # a region marked done: must stay as it is
    chm[128:256, 0:128] = -2.0  # the forgotten region: must be recomputed
    xchm.predict_to_zarr(image, checkpoint, store, region_size=128)
    out = chm[...]
    assert (out[0:128, 0:128] == -1.0).all()
    np.testing.assert_array_equal(out[128:256, :], reference[128:256, :])


CHILD = """
import sys, rioxarray, xchm
image = rioxarray.open_rasterio(sys.argv[1], chunks={"band": -1, "y": 64, "x": 64}, lock=False)
xchm.predict_to_zarr(image, sys.argv[2], sys.argv[3], region_size=64)
"""


@pytest.mark.slow
def test_predict_to_zarr__killed_run_resumes_to_an_identical_store(
    tmp_path, checkpoint, monkeypatch
):
    # Float sums follow torch's thread count: the child and this process (whose count
    # earlier tests may have left elsewhere) use the same one, as workers of a job do.
    monkeypatch.setenv("XCHM_TORCH_THREADS", "1")
    scene = make_image(512, 512).assign_coords(band=[1, 2, 3])
    scene.attrs["long_name"] = ("NIR", "Red", "Green")  # band descriptions in the GeoTIFF
    scene.rio.to_raster(tmp_path / "scene.tif")
    store = tmp_path / "killed.zarr"
    args = [sys.executable, "-c", CHILD, str(tmp_path / "scene.tif"), str(checkpoint), str(store)]
    with subprocess.Popen(args, stderr=subprocess.PIPE) as child:
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and child.poll() is None:
                if (store / PROGRESS_GROUP / "done" / "zarr.json").exists() and _done(
                    store
                ).sum() >= 2:
                    break
                time.sleep(0.02)
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    interrupted = _done(store)
    assert 2 <= interrupted.sum() < interrupted.size  # really cut off mid-run
    assert xr.open_zarr(store, consolidated=False).attrs["xchm_status"] == "incomplete"

    # Opened exactly as the child did (the same path string): the same input token.
    image = rioxarray.open_rasterio(
        str(tmp_path / "scene.tif"), chunks={"band": -1, "y": 64, "x": 64}, lock=False
    )
    resumed = xchm.predict_to_zarr(image, checkpoint, store, region_size=64)
    clean = xchm.predict_to_zarr(image, checkpoint, tmp_path / "clean.zarr", region_size=64)
    assert resumed.attrs["xchm_status"] == "complete"
    assert _differ(_files(store), _files(tmp_path / "clean.zarr")) == []  # byte for byte
    np.testing.assert_array_equal(resumed["chm"].values, clean["chm"].values)


def test_predict_to_zarr__store_cut_off_while_laid_out_starts_over(tmp_path, checkpoint):
    image = make_image(128, 128)
    store = tmp_path / "chm.zarr"
    xchm.predict_to_zarr(image, checkpoint, store)
    # As if killed before the fingerprint was written: status still "incomplete".
    zarr.open_group(store, mode="r+").attrs["xchm_status"] = "incomplete"
    del zarr.open_group(store, mode="r+", path=PROGRESS_GROUP).attrs["fingerprint"]
    ds = xchm.predict_to_zarr(image, checkpoint, store)
    assert ds.attrs["xchm_status"] == "complete"
    np.testing.assert_array_equal(ds["chm"].values, xchm.predict(image, checkpoint).values)


def test_predict_to_zarr__refuses_another_jobs_store(tmp_path, checkpoint, model):
    image = make_image(200, 150).chunk({"y": 64, "x": 64})
    store = tmp_path / "chm.zarr"
    xchm.predict_to_zarr(image, checkpoint, store, region_size=128)
    with pytest.raises(ResumeError, match="different job: overlap: 16 -> 8"):
        xchm.predict_to_zarr(image, checkpoint, store, region_size=128, overlap=8)
    with pytest.raises(ResumeError, match="different job: region size: 128x128 -> 64x64"):
        xchm.predict_to_zarr(image, checkpoint, store, region_size=64)
    other = image.assign_coords(x=image.x + 2.0)  # one pixel east
    with pytest.raises(ResumeError, match="different job: the x/y coordinates differ"):
        xchm.predict_to_zarr(other, checkpoint, store, region_size=128)
    with pytest.raises(OutputExistsError, match="resume=True"):
        xchm.predict_to_zarr(image, checkpoint, store, region_size=128, resume=False)
    replaced = xchm.predict_to_zarr(image, checkpoint, store, overwrite=True, overlap=8)
    assert replaced["chm"].attrs["xchm_overlap"] == 8


def test_predict_to_zarr__model_object_weights_are_part_of_the_job(tmp_path):
    import torch

    image = make_image(128, 128)
    store = tmp_path / "chm.zarr"
    model = xchm.load_model("test-tiny")
    xchm.predict_to_zarr(image, model, store)
    with torch.no_grad():
        model.decoder.output.bias.add_(1.0)
    with pytest.raises(ResumeError, match="the model or its weights differ"):
        xchm.predict_to_zarr(image, model, store)


def test_predict_to_zarr__does_not_touch_other_folders(tmp_path, checkpoint):
    image = make_image(128, 128)
    folder = tmp_path / "data.zarr"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not written by xchm; nothing in it is touched"):
        xchm.predict_to_zarr(image, checkpoint, folder)
    with pytest.raises(OutputExistsError, match="not written by xchm; nothing in it is touched"):
        xchm.predict_to_zarr(image, checkpoint, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
    assert (folder / "keep.txt").read_text() == "mine"
    # A user's own Zarr store (the imagery, say) given as the output by mistake.
    imagery = tmp_path / "imagery.zarr"
    image.assign_coords(band=[1, 2, 3]).to_dataset(name="image").to_zarr(
        imagery, consolidated=False
    )
    files = _state(imagery)
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="not written by xchm"):
            xchm.predict_to_zarr(image, checkpoint, imagery, overwrite=overwrite)
    assert _state(imagery) == files
    with pytest.raises(InputError, match="ending in .zarr"):
        xchm.predict_to_zarr(image, checkpoint, tmp_path / "chm.tif")
    with pytest.raises(InputError, match="region_size"):
        xchm.predict_to_zarr(image, checkpoint, tmp_path / "a.zarr", region_size=0)
    assert not (tmp_path / "a.zarr").exists()


def _forget_bottom_half(store: Path) -> None:
    """Mark the bottom row of regions not done, as if the run was killed halfway."""
    zarr.open_array(store, mode="r+", path=f"{PROGRESS_GROUP}/done")[1, :] = 0


def _state(store: Path) -> dict[str, bytes]:
    """Every file of a store (chunks, metadata, progress), to show nothing was touched."""
    return {
        str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()
    }


def test_predict_to_zarr__resume_with_other_data_is_refused(tmp_path, checkpoint):
    # Issue 15, case 1: a store of scene a, cut off halfway, resumed with scene b.
    a = make_image(256, 256, seed=0).chunk({"x": 64, "y": 64})
    b = make_image(256, 256, seed=42).chunk({"x": 64, "y": 64})
    store = tmp_path / "m.zarr"
    xchm.predict_to_zarr(a, checkpoint, store, region_size=128)
    _forget_bottom_half(store)
    before = _state(store)
    with pytest.raises(ResumeError, match="different job: the input data differ"):
        xchm.predict_to_zarr(b, checkpoint, store, region_size=128)
    assert _state(store) == before  # refused before any work
    # The same data rebuilt from scratch (another dask array object) is the same job.
    again = make_image(256, 256, seed=0).chunk({"x": 64, "y": 64})
    ds = xchm.predict_to_zarr(again, checkpoint, store, region_size=128)
    assert "2/4 regions computed (2 already done)" in ds.attrs["xchm_run"]
    np.testing.assert_array_equal(ds["chm"].values, xchm.predict(a, checkpoint).values)


def test_predict_to_zarr__resume_with_other_in_memory_data_is_refused(tmp_path, checkpoint):
    a = make_image(128, 128)
    b = a.copy(data=a.values.copy())
    b[0, 100, 100] += 1  # one pixel of one band
    store = tmp_path / "m.zarr"
    xchm.predict_to_zarr(a, checkpoint, store, region_size=64)
    with pytest.raises(ResumeError, match="the input data differ"):
        xchm.predict_to_zarr(b, checkpoint, store, region_size=64)
    xchm.predict_to_zarr(a.copy(deep=True), checkpoint, store, region_size=64)  # same content


def test_predict_to_zarr__resume_with_other_nodata_is_refused(tmp_path, checkpoint):
    image = make_image(256, 256).rio.write_nodata(0).chunk({"x": 64, "y": 64})
    store = tmp_path / "m.zarr"
    xchm.predict_to_zarr(image, checkpoint, store, region_size=128)
    _forget_bottom_half(store)
    before = _state(store)
    with pytest.raises(ResumeError, match=r"different job: nodata: 0 -> 255\."):
        xchm.predict_to_zarr(image, checkpoint, store, region_size=128, nodata=255)
    with pytest.raises(ResumeError, match=r"nodata: 0 -> None"):
        xchm.predict_to_zarr(image.rio.write_nodata(None), checkpoint, store, region_size=128)
    assert _state(store) == before
    xchm.predict_to_zarr(image, checkpoint, store, region_size=128, nodata=0)  # the same value


def test_predict_to_zarr__resume_with_other_bands_is_refused(tmp_path, checkpoint):
    image = make_image(256, 256).chunk({"x": 64, "y": 64})
    store = tmp_path / "m.zarr"
    xchm.predict_to_zarr(image, checkpoint, store, region_size=128)
    _forget_bottom_half(store)
    before = _state(store)
    swapped = {"nir": "red", "red": "nir", "green": "green"}
    with pytest.raises(ResumeError, match=r"bands: nir=band 1 \('nir'\).* -> nir=band 2 \('red'\)"):
        xchm.predict_to_zarr(image, checkpoint, store, region_size=128, bands=swapped)
    # Relabelled bands: the same data, but another band now feeds nir.
    relabelled = image.assign_coords(band=["red", "nir", "green"])
    with pytest.raises(ResumeError, match=r"bands: .* -> nir=band 2 \('nir'\)"):
        xchm.predict_to_zarr(relabelled, checkpoint, store, region_size=128)
    assert _state(store) == before
    same = {"nir": "nir", "red": "red", "green": "green"}  # spelled out, but the same choice
    xchm.predict_to_zarr(image, checkpoint, store, region_size=128, bands=same)


def _write(image: xr.DataArray, path: Path) -> str:
    """Write ``image`` as a GeoTIFF with its band names as band descriptions."""
    named = image.assign_coords(band=[1, 2, 3])
    named.attrs["long_name"] = tuple(image.band.values.tolist())
    named.rio.to_raster(path)
    return str(path)


def _open(path: str | Path) -> xr.DataArray:
    return rioxarray.open_rasterio(path, chunks={"band": -1, "y": 64, "x": 64})


def test_predict_to_zarr__resume_with_other_files_is_refused(tmp_path, checkpoint):
    a = _write(make_image(256, 256, seed=0), tmp_path / "a.tif")
    b = _write(make_image(256, 256, seed=42), tmp_path / "b.tif")
    store = tmp_path / "m.zarr"
    xchm.predict_to_zarr(_open(a), checkpoint, store, region_size=128)
    _forget_bottom_half(store)
    before = _state(store)
    with pytest.raises(ResumeError, match=r"input file\(s\) .*a\.tif -> .*b\.tif"):
        xchm.predict_to_zarr(_open(b), checkpoint, store, region_size=128)
    # The same file through another spelling of its path: refused, with the fix.
    with pytest.raises(ResumeError, match="same file.*another spelling of the path"):
        xchm.predict_to_zarr(_open(Path(a)), checkpoint, store, region_size=128)
    assert _state(store) == before
    # a.tif replaced by other data under the same name, size and modification time.
    stat = os.stat(a)
    Path(a).write_bytes(Path(b).read_bytes())
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(a).st_size == stat.st_size
    with pytest.raises(ResumeError, match=r"a\.tif changed since the store was started"):
        xchm.predict_to_zarr(_open(a), checkpoint, store, region_size=128)
    assert _state(store) == before


def test_predict_to_zarr__reopened_file_resumes(tmp_path, checkpoint):
    a = _write(make_image(256, 256), tmp_path / "a.tif")
    store = tmp_path / "m.zarr"
    xchm.predict_to_zarr(_open(a), checkpoint, store, region_size=128)
    _forget_bottom_half(store)
    ds = xchm.predict_to_zarr(_open(a), checkpoint, store, region_size=128)
    assert "2/4 regions computed (2 already done)" in ds.attrs["xchm_run"]
    np.testing.assert_array_equal(ds["chm"].values, xchm.predict(_open(a), checkpoint).values)


def test_predict_to_zarr__merged_scenes_resume_until_a_scene_changes(tmp_path, checkpoint):
    whole = make_image(256, 256)
    west = _write(whole.isel(x=slice(0, 128)), tmp_path / "west.tif")
    east = _write(whole.isel(x=slice(128, 256)), tmp_path / "east.tif")
    store = tmp_path / "m.zarr"
    xchm.predict_to_zarr(
        xchm.merge_scenes([west, east], chunks=64), checkpoint, store, region_size=128
    )
    _forget_bottom_half(store)
    ds = xchm.predict_to_zarr(
        xchm.merge_scenes([west, east], chunks=64), checkpoint, store, region_size=128
    )
    assert "2/4 regions computed (2 already done)" in ds.attrs["xchm_run"]
    _forget_bottom_half(store)
    before = _state(store)
    stat = os.stat(east)  # east replaced by other data, same name, size and mtime
    _write(make_image(256, 256, seed=42).isel(x=slice(128, 256)), Path(east))
    os.utime(east, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(
        ResumeError, match=r"differ: \S*/east\.tif changed since the store was started"
    ):
        xchm.predict_to_zarr(
            xchm.merge_scenes([west, east], chunks=64), checkpoint, store, region_size=128
        )
    assert _state(store) == before


def test_predict_to_zarr__store_of_an_older_xchm_is_refused(tmp_path, checkpoint):
    image = make_image(128, 128)
    store = tmp_path / "m.zarr"
    xchm.predict_to_zarr(image, checkpoint, store, region_size=64)
    progress = zarr.open_group(store, mode="r+", path=PROGRESS_GROUP)
    old = dict(progress.attrs["fingerprint"])
    for key in ("input", "bands", "nodata"):  # not recorded before issue 15
        del old[key]
    progress.attrs["fingerprint"] = old
    with pytest.raises(ResumeError, match="older xchm that did not record its input"):
        xchm.predict_to_zarr(image, checkpoint, store, region_size=64)
    xchm.predict_to_zarr(image, checkpoint, store, region_size=64, overwrite=True)


# Killed (SIGKILL) at an exact point of laying out a store.
KILLED_AT = """
import os, signal, sys
import rioxarray, zarr, xchm, xchm.outputs
if sys.argv[3] == "marker":  # right after the store folder is created and marked
    mark = xchm.outputs.mark
    def kill_after_mark(*args, **kwargs):
        mark(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    xchm.outputs.mark = kill_after_mark
else:  # metadata written, the progress record not yet
    open_group = zarr.open_group
    def kill_at_progress(*args, **kwargs):
        if kwargs.get("path") == "xchm_progress" and kwargs.get("mode") == "a":
            os.kill(os.getpid(), signal.SIGKILL)
        return open_group(*args, **kwargs)
    zarr.open_group = kill_at_progress
image = rioxarray.open_rasterio(sys.argv[1], chunks={"band": -1, "y": 64, "x": 64})
xchm.predict_to_zarr(image, sys.argv[2], sys.argv[4], region_size=64)
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["marker", "metadata"])
def test_predict_to_zarr__killed_while_creating_the_store_reruns(tmp_path, checkpoint, point):
    a, store = _write(make_image(128, 128), tmp_path / "a.tif"), tmp_path / "m.zarr"
    args = [sys.executable, "-c", KILLED_AT, a, str(checkpoint), point, str(store)]
    child = subprocess.run(args, capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert (store / MARKER).exists()
    assert (store / "chm" / "zarr.json").exists() == (point == "metadata")
    ds = xchm.predict_to_zarr(_open(a), checkpoint, store, region_size=64)  # the same call
    assert ds.attrs["xchm_status"] == "complete"
    assert not (store / MARKER).exists()  # a laid-out store is known by its fingerprint
    np.testing.assert_array_equal(ds["chm"].values, xchm.predict(_open(a), checkpoint).values)


def test_predict_to_zarr__output_path_rules(tmp_path, checkpoint):
    image = make_image(128, 128)
    (tmp_path / "file.zarr").write_text("a file")
    with pytest.raises(OutputExistsError, match="is a file, not a folder"):
        xchm.predict_to_zarr(image, checkpoint, tmp_path / "file.zarr")
    (tmp_path / "parent").write_text("a file where a folder should be")
    with pytest.raises(OutputError, match="cannot create"):
        xchm.predict_to_zarr(image, checkpoint, tmp_path / "parent" / "m.zarr")
    prepare_output_dir(tmp_path / "cube.zarr", "chip cube")
    (tmp_path / "cube.zarr" / "data").write_text("cube data")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="holds an xchm chip cube"):
            xchm.predict_to_zarr(image, checkpoint, tmp_path / "cube.zarr", overwrite=overwrite)
    assert (tmp_path / "cube.zarr" / "data").read_text() == "cube data"
    (tmp_path / "empty.zarr").mkdir()  # an empty folder is fine
    xchm.predict_to_zarr(image, checkpoint, tmp_path / "empty.zarr")
