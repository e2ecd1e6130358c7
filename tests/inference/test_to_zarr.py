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
from xchm.errors import InputError
from xchm.inference.to_zarr import PROGRESS_GROUP

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
def test_predict_to_zarr__killed_run_resumes_to_an_identical_store(tmp_path, checkpoint):
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

    image = rioxarray.open_rasterio(
        tmp_path / "scene.tif", chunks={"band": -1, "y": 64, "x": 64}, lock=False
    )
    resumed = xchm.predict_to_zarr(image, checkpoint, store, region_size=64)
    clean = xchm.predict_to_zarr(image, checkpoint, tmp_path / "clean.zarr", region_size=64)
    assert resumed.attrs["xchm_status"] == "complete"
    assert _files(store) == _files(tmp_path / "clean.zarr")  # byte for byte
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
    with pytest.raises(InputError, match="different job.*overlap"):
        xchm.predict_to_zarr(image, checkpoint, store, region_size=128, overlap=8)
    with pytest.raises(InputError, match="different job.*region"):
        xchm.predict_to_zarr(image, checkpoint, store, region_size=64)
    other = image.assign_coords(x=image.x + 2.0)  # one pixel east
    with pytest.raises(InputError, match="different job.*coords"):
        xchm.predict_to_zarr(other, checkpoint, store, region_size=128)
    with pytest.raises(InputError, match="resume=True"):
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
    with pytest.raises(InputError, match="model_digest"):
        xchm.predict_to_zarr(image, model, store)


def test_predict_to_zarr__does_not_touch_other_folders(tmp_path, checkpoint):
    image = make_image(128, 128)
    folder = tmp_path / "data.zarr"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an xchm prediction store"):
        xchm.predict_to_zarr(image, checkpoint, folder)
    with pytest.raises(InputError, match="not a Zarr store"):
        xchm.predict_to_zarr(image, checkpoint, folder, overwrite=True)
    assert (folder / "keep.txt").read_text() == "mine"
    with pytest.raises(InputError, match="ending in .zarr"):
        xchm.predict_to_zarr(image, checkpoint, tmp_path / "chm.tif")
    with pytest.raises(InputError, match="region_size"):
        xchm.predict_to_zarr(image, checkpoint, tmp_path / "a.zarr", region_size=0)
    assert not (tmp_path / "a.zarr").exists()
