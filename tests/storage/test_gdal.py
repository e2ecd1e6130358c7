"""Rasters through GDAL: a COG from S3 (/vsis3/, moto) and over HTTP (/vsicurl/, nginx).

Each read is compared with the read of the same file from the local disk: the values
must be the same bytes, and the coordinates, CRS and attributes identical.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import rasterio
import rioxarray
import xarray as xr
from rasterio.env import get_gdal_config
from rasterio.windows import Window

from tests import servers
from xchm.storage import gdal_env, location


def _read(name: str) -> xr.DataArray:
    with rioxarray.open_rasterio(name) as image:
        return image.load()


def _assert_same(remote: xr.DataArray, local: xr.DataArray) -> None:
    assert remote.dtype == local.dtype
    assert remote.values.tobytes() == local.values.tobytes()
    xr.testing.assert_identical(remote, local)
    assert remote.rio.crs == local.rio.crs and remote.rio.transform() == local.rio.transform()


def test_cog_from_s3_through_gdal_env_is_identical_to_the_local_read(s3, cog):
    key = "imagery//ak/scene.tif"
    s3.put(key, cog.read_bytes())
    loc = location(f"{s3.url}/{key}")
    before = len(s3.server.requests())
    with gdal_env(loc) as config:
        assert config["AWS_S3_ENDPOINT"] == s3.server.endpoint_url.removeprefix("http://")
        remote = _read(loc.gdal_path())
    _assert_same(remote, _read(str(cog)))
    requests = s3.requests(before)
    # GDAL asked for that key (the // kept) and nothing else: no bucket listing.
    assert requests and {(r.method, r.path) for r in requests} <= {
        ("GET", f"/{s3.bucket}/imagery//ak/scene.tif"),
        ("HEAD", f"/{s3.bucket}/imagery//ak/scene.tif"),
    }


def test_cog_from_s3_with_explicit_storage_options(s3, cog, monkeypatch):
    """The environment points at a dead endpoint; storage_options go to GDAL instead."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{servers.free_port()}")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3.put("scene.tif", cog.read_bytes())
    options = {"endpoint_url": s3.server.endpoint_url, "key": "k", "secret": "s"}
    loc = location(f"{s3.url}/scene.tif", options)
    with gdal_env(loc) as config:
        assert config["AWS_ACCESS_KEY_ID"] == "k"
        assert get_gdal_config("AWS_SECRET_ACCESS_KEY") == "s"
        remote = _read(loc.gdal_path())
    _assert_same(remote, _read(str(cog)))
    assert get_gdal_config("AWS_SECRET_ACCESS_KEY") is None  # dropped on exit


def test_cog_from_s3_opened_in_other_threads_inside_gdal_env(s3, cog):
    """rasterio's Env is process-wide here: threads (Dask's) that open files see it."""
    for i in range(3):
        s3.put(f"scene-{i}.tif", cog.read_bytes())
    names = [location(f"{s3.url}/scene-{i}.tif").gdal_path() for i in range(3)]
    with gdal_env(location(s3.url)), ThreadPoolExecutor(3) as pool:
        remote = list(pool.map(_read, names))  # each file opened only in a worker thread
    local = _read(str(cog))
    for image in remote:
        _assert_same(image, local)


def test_cog_from_s3_with_dask_chunks_inside_gdal_env(s3, cog):
    s3.put("scene.tif", cog.read_bytes())
    loc = location(f"{s3.url}/scene.tif")
    with gdal_env(loc):
        lazy = rioxarray.open_rasterio(loc.gdal_path(), chunks={"x": 256, "y": 256}, lock=False)
        remote = lazy.compute(scheduler="threads", num_workers=4)
    np.testing.assert_array_equal(remote.values, _read(str(cog)).values)


def test_cog_over_http_via_vsicurl_is_identical_with_range_requests(nginx, served, cog):
    (served / "cogs").mkdir(exist_ok=True)
    shutil.copyfile(cog, served / "cogs" / "whole.tif")
    loc = location(f"{nginx.url}/cogs/whole.tif")
    assert loc.gdal_path() == f"/vsicurl/{nginx.url}/cogs/whole.tif"
    before = len(nginx.requests())
    with gdal_env(loc):
        remote = _read(loc.gdal_path())
    _assert_same(remote, _read(str(cog)))
    requests = nginx.requests()[before:]
    assert requests and all(r.path == "/cogs/whole.tif" for r in requests)
    assert any(r.status == 206 and r.range.startswith("bytes=") for r in requests)


def test_window_over_http_fetches_only_some_ranges(nginx, served, cog):
    """A 256 x 256 window of a 512 x 512 COG reads a fraction of the file, by ranges."""
    (served / "cogs").mkdir(exist_ok=True)
    shutil.copyfile(cog, served / "cogs" / "window.tif")
    loc = location(f"{nginx.url}/cogs/window.tif")
    before = len(nginx.requests())
    window = Window(256, 0, 256, 256)
    with gdal_env(loc), rasterio.open(loc.gdal_path()) as src:
        remote = src.read(window=window)
    with rasterio.open(cog) as src:
        np.testing.assert_array_equal(remote, src.read(window=window))
    requests = nginx.requests()[before:]
    sent = sum(r.bytes for r in requests)
    assert all(r.status in (200, 206) for r in requests)
    assert all(r.range for r in requests if r.method == "GET")
    assert sent < 0.6 * cog.stat().st_size, (sent, cog.stat().st_size)
