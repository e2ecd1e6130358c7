"""write_cog: layers and band names, int16 decimetres, the output path, killed writes."""

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import dask.array as dsa
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

import xchm
from xchm.errors import InputError, OutputError, OutputExistsError, XCHMWarning
from xchm.inference.cog import _host

from .conftest import make_image


def _read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        meta = {
            "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
            "descriptions": src.descriptions,
            "dtype": src.dtypes[0],
            "nodata": src.nodata,
            "crs": src.crs,
            "transform": src.transform,
        }
        return src.read(), meta


def _map(values: np.ndarray, chunks: int | None = None) -> xr.DataArray:
    """A (y, x) height map in metres with a CRS (lazy when ``chunks`` is given)."""
    h, w = values.shape
    chm = xr.DataArray(
        values.astype("float32"),
        dims=("y", "x"),
        coords={"y": 7e6 - 2.0 * (np.arange(h) + 0.5), "x": 4e5 + 2.0 * (np.arange(w) + 0.5)},
        name="chm",
        attrs={"units": "m"},
    ).rio.write_crs("EPSG:32617")
    return chm.chunk({"y": chunks, "x": chunks}) if chunks else chm


def test_write_cog__uncertainty_dataset_writes_two_bands(tmp_path, model):
    # Issue 15, case 7: the Dataset of predict(..., uncertainty=True) used to crash.
    image = make_image(150, 130).chunk({"y": 64, "x": 64})
    ds = xchm.predict(image, model, uncertainty=True)
    out = xchm.write_cog(ds, tmp_path / "chm.tif")
    bands, meta = _read(out)
    assert meta["layout"] == "COG" and meta["descriptions"] == ("chm", "chm_std")
    assert meta["dtype"] == "float32" and np.isnan(meta["nodata"])
    assert meta["crs"] == image.rio.crs and meta["transform"] == image.rio.transform()
    expected = ds.compute()
    np.testing.assert_array_equal(bands[0], expected["chm"].values)
    np.testing.assert_array_equal(bands[1], expected["chm_std"].values)
    assert expected["chm_std"].values.max() > 0  # really the spread, not a copy of chm
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chm.tif"]  # no temporary left


def test_write_cog__on_a_cluster_stages_every_layer(tmp_path, model):
    from distributed import Client

    ds = xchm.predict(make_image(150, 130).chunk({"y": 64, "x": 64}), model, uncertainty=True)
    local, _ = _read(xchm.write_cog(ds, tmp_path / "local.tif"))
    with Client(processes=False, n_workers=1, dashboard_address="127.0.0.1:0"):
        out = xchm.write_cog(ds, tmp_path / "cluster.tif")  # via a temporary Zarr store
    bands, meta = _read(out)
    assert meta["descriptions"] == ("chm", "chm_std") and meta["crs"] == ds.rio.crs
    np.testing.assert_allclose(bands, local, atol=1e-4)  # batches differ: float rounding
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.tif", "local.tif"]


def test_write_cog__single_map_is_one_named_band(tmp_path, model):
    image = make_image(150, 130)
    chm = xchm.predict(image, model)
    bands, meta = _read(xchm.write_cog(chm, tmp_path / "chm.tif"))
    assert bands.shape == (1, 150, 130) and meta["descriptions"] == ("chm",)
    np.testing.assert_array_equal(bands[0], chm.values)


def test_write_cog__writes_what_predict_to_zarr_returns(tmp_path, model):
    image = make_image(150, 130)
    ds = xchm.predict_to_zarr(image, model, tmp_path / "m.zarr", uncertainty=True)
    bands, meta = _read(xchm.write_cog(ds, tmp_path / "both.tif"))
    assert meta["descriptions"] == ("chm", "chm_std") and meta["crs"] == image.rio.crs
    np.testing.assert_array_equal(bands[0], ds["chm"].values)
    np.testing.assert_array_equal(bands[1], ds["chm_std"].values)
    one, meta = _read(xchm.write_cog(ds["chm"], tmp_path / "chm.tif"))  # a store's variable
    assert meta["descriptions"] == ("chm",)
    np.testing.assert_array_equal(one[0], ds["chm"].values)


@pytest.mark.parametrize("chunks", [None, 4], ids=["in-memory", "lazy"])
def test_write_cog__int16_dm_clips_and_counts(tmp_path, chunks):
    values = np.full((8, 8), 12.34)
    values[0, 0], values[0, 1], values[0, 2] = 5000.0, np.inf, 3276.7  # two too high
    values[7, 7], values[7, 6] = -2000.0, -999.8  # one too low (-999.9 m would be nodata)
    values[3, 3] = np.nan
    with pytest.warns(XCHMWarning, match=r"3 in chm pixels were outside .* clipped"):
        out = xchm.write_cog(_map(values, chunks), tmp_path / "dm.tif", int16_dm=True)
    dm, meta = _read(out)
    assert meta["dtype"] == "int16" and meta["nodata"] == -9999
    assert dm[0, 0, :3].tolist() == [32767, 32767, 32767]
    assert dm[0, 7, 7] == -9998 and dm[0, 7, 6] == -9998 and dm[0, 3, 3] == -9999
    assert dm[0, 4, 4] == 123


def test_write_cog__int16_dm_in_range_does_not_warn(tmp_path):
    values = np.linspace(-5, 80, 64).reshape(8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", XCHMWarning)
        out = xchm.write_cog(_map(values, 4), tmp_path / "dm.tif", int16_dm=True)
    dm, _ = _read(out)
    np.testing.assert_array_equal(dm[0], np.round(values.astype("float32") * 10).astype("int16"))


def test_write_cog__int16_dm_uncertainty_scales_both_layers(tmp_path, model):
    ds = xchm.predict(make_image(150, 130), model, uncertainty=True)
    dm, meta = _read(xchm.write_cog(ds, tmp_path / "dm.tif", int16_dm=True))
    assert meta["descriptions"] == ("chm", "chm_std")
    for band, name in enumerate(("chm", "chm_std")):
        np.testing.assert_array_equal(dm[band], np.round(ds[name].values * 10).astype("int16"))


def _never_computed(shape: tuple[int, int]) -> xr.DataArray:
    """A lazy map whose computation fails loudly: any work shows."""

    def fail(block: np.ndarray) -> np.ndarray:
        raise AssertionError("the map was computed")

    data = dsa.zeros(shape, chunks=32, dtype="float32").map_blocks(fail, dtype="float32")
    return _map(np.zeros(shape)).copy(data=data)


def test_write_cog__output_path_is_checked_before_any_work(tmp_path):
    chm = _never_computed((64, 64))
    with pytest.raises(OutputError, match="folder .*no/such does not exist; create it first"):
        xchm.write_cog(chm, tmp_path / "no" / "such" / "chm.tif")
    (tmp_path / "file").write_text("a file where the folder should be")
    with pytest.raises(OutputError, match="does not exist"):
        xchm.write_cog(chm, tmp_path / "file" / "chm.tif")
    (tmp_path / "dir.tif").mkdir()
    with pytest.raises(OutputExistsError, match="is a folder; give a file name"):
        xchm.write_cog(chm, tmp_path / "dir.tif", overwrite=True)
    (tmp_path / "old.tif").write_text("keep me")
    with pytest.raises(OutputExistsError, match="exists; pass overwrite=True"):
        xchm.write_cog(chm, tmp_path / "old.tif")
    assert (tmp_path / "old.tif").read_text() == "keep me"
    with pytest.raises(OutputError, match=r"must end in one of \.tif, \.tiff"):
        xchm.write_cog(chm, tmp_path / "chm.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.tif", "file", "old.tif"]


def test_write_cog__output_keyword_and_its_old_name_path(tmp_path):
    chm = _map(np.full((8, 8), 3.0))
    assert xchm.write_cog(chm, output=tmp_path / "a.tif").name == "a.tif"
    with pytest.warns(FutureWarning, match=r"^write_cog\(path=\.\.\.\) is deprecated.*output="):
        assert xchm.write_cog(chm, path=tmp_path / "b.tif").name == "b.tif"
    np.testing.assert_array_equal(_read(tmp_path / "a.tif")[0], _read(tmp_path / "b.tif")[0])


def test_write_cog__clipping_warning_names_the_caller(tmp_path):
    with pytest.warns(XCHMWarning, match="clipped") as said:
        xchm.write_cog(_map(np.full((8, 8), 5000.0)), tmp_path / "dm.tif", int16_dm=True)
    (warned,) = [w for w in said if "clipped" in str(w.message)]
    assert warned.filename == __file__  # past renamed_keywords' wrapper


def test_write_cog__refuses_what_is_not_a_height_map(tmp_path):
    image = make_image(64, 64)
    with pytest.raises(InputError, match=r"a \(y, x\) height map, got dims \('band', 'y', 'x'\)"):
        xchm.write_cog(image, tmp_path / "a.tif")
    with pytest.raises(InputError, match="takes an xarray DataArray or Dataset.*ndarray"):
        xchm.write_cog(image.values[0], tmp_path / "a.tif")
    with pytest.raises(InputError, match="image not 2-D"):
        xchm.write_cog(xr.Dataset({"image": image}), tmp_path / "a.tif")
    assert not list(tmp_path.iterdir())


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_write_cog__removes_stale_partials_of_this_target_only(tmp_path):
    dead, alive, host = _dead_pid(), os.getppid(), _host()
    stale = [  # leftovers of killed writes of chm.tif on this machine
        f".chm.tif.partial-{host}-{dead}",
        f".chm.tif.partial-{host}-{dead}.tiled.tif",
        f".chm.tif.partial-{dead}.tiled.tif",  # the name earlier versions used
    ]
    kept = [
        f".chm.tif.partial-{host}-{alive}.tiled.tif",  # a write still running
        f".chm.tif.partial-otherhost-{dead}.tiled.tif",  # another machine's (shared folder)
        f".other.tif.partial-{host}-{dead}.tiled.tif",  # another target
        ".chm.tif.partial-notes.txt",  # not a partial name at all
        "chm.tif.partial-1.tiled.tif",  # not hidden: not xchm's name
    ]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    (tmp_path / f".chm.tif.partial-{host}-{dead}.zarr").mkdir()  # a staged store
    (tmp_path / f".chm.tif.partial-{host}-{dead}.zarr" / "zarr.json").write_text("{}")
    xchm.write_cog(_map(np.ones((16, 16))), tmp_path / "chm.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["chm.tif", *kept])


KILLED_WRITE = """
import os, signal, sys
import numpy as np, rasterio.shutil, xarray as xr, rioxarray, xchm
def kill(*args, **kwargs):  # the tiled GeoTIFF is written, the COG not yet
    os.kill(os.getpid(), signal.SIGKILL)
rasterio.shutil.copy = kill
chm = xr.DataArray(np.ones((64, 64), "float32"), dims=("y", "x"),
                   coords={"y": 100.0 - np.arange(64), "x": np.arange(64.0)}).rio.write_crs(3338)
xchm.write_cog(chm.chunk(32), sys.argv[1])
"""


@pytest.mark.slow
def test_write_cog__rerun_after_a_kill_cleans_up(tmp_path):
    out = tmp_path / "chm.tif"
    child = subprocess.run(
        [sys.executable, "-c", KILLED_WRITE, str(out)], capture_output=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".chm.tif.partial-")  # the tiled GeoTIFF
    xchm.write_cog(_map(np.ones((16, 16))), out)
    assert [p.name for p in tmp_path.iterdir()] == ["chm.tif"]
