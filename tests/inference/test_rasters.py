"""Imagery by URL: open_image from the S3 server and nginx, lazily, on workers too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import rioxarray
import xarray as xr

import xchm
from xchm.errors import InputError, PathNotFoundError
from xchm.inference.rasters import open_image

GDAL_S3 = ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING")


@pytest.fixture
def no_gdal_s3(monkeypatch):
    """GDAL's own S3 variables unset (as on a fresh machine with AWS_ENDPOINT_URL only)."""
    for name in GDAL_S3:
        monkeypatch.delenv(name, raising=False)
    yield
    for name in GDAL_S3:  # open_image sets them for the process: drop them after the test
        os.environ.pop(name, None)  # (monkeypatch.delenv here would restore them later)


def _put(s3, key, path) -> str:
    s3.put(key, path.read_bytes())
    return f"{s3.url}/{key}"


def test_open_image__s3_cog_reads_lazily_like_the_local_file(s3, cog, no_gdal_s3):
    url = _put(s3, "imagery//scene.tif", cog)
    image = open_image(url, chunks=256)
    assert image.chunks is not None  # lazy: read by the tasks below, outside any GDAL block
    local = rioxarray.open_rasterio(cog)
    xr.testing.assert_equal(image.compute(), local.compute())
    assert image.rio.crs == local.rio.crs
    assert os.environ["AWS_S3_ENDPOINT"] == s3.server.endpoint_url.removeprefix("http://")


def test_open_image__https_cog_through_nginx(nginx, served, cog):
    shutil.copy(cog, served / "scene-http.tif")
    image = open_image(f"{nginx.url}/scene-http.tif", chunks=256)
    xr.testing.assert_equal(image.compute(), rioxarray.open_rasterio(cog).compute())


def test_open_image__missing_names_the_url_as_typed(s3, nginx, no_gdal_s3, tmp_path):
    for url in (f"{s3.url}/no//such.tif", f"{nginx.url}/no-such.tif", str(tmp_path / "x.tif")):
        with pytest.raises(PathNotFoundError, match=f"'{url}'"):
            open_image(url)


def test_open_image__not_an_image(s3, no_gdal_s3):
    s3.put("notes.tif", b"this is text")
    with pytest.raises(InputError, match="as an image"):
        open_image(f"{s3.url}/notes.tif")


def test_merge_scenes__takes_urls(s3, cog, no_gdal_s3):
    url = _put(s3, "a.tif", cog)
    merged = xchm.merge_scenes([url, cog])
    assert merged.attrs["xchm_scenes"] == [url, str(cog)]
    np.testing.assert_array_equal(merged.values, rioxarray.open_rasterio(cog).values)


def test_open_image__workers_of_a_cluster_read_s3(s3, cog, no_gdal_s3):
    """Workers started without GDAL's S3 variables read the lazy image: xchm's plugin."""
    distributed = pytest.importorskip("distributed")
    url = _put(s3, "workers.tif", cog)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        env = client.run(lambda: {k: os.environ.get(k) for k in GDAL_S3})
        assert all(v is None for w in env.values() for v in w.values())  # truly fresh
        image = open_image(url, chunks=256)
        values = image.compute().values
    np.testing.assert_array_equal(values, rioxarray.open_rasterio(cog).values)


def test_import_xchm__lets_rioxarray_read_s3_with_aws_endpoint_url_only(s3, cog, no_gdal_s3):
    """The issue's first line: rioxarray.open_rasterio("s3://...") after ``import xchm``."""
    url = _put(s3, "plain.tif", cog)
    code = (
        "import sys, rioxarray, xchm\n"
        f"image = rioxarray.open_rasterio({url!r}, chunks={{'x': 256, 'y': 256}})\n"
        "print(float(image.sum().compute()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in GDAL_S3}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = float(rioxarray.open_rasterio(cog).sum())
    assert float(done.stdout) == pytest.approx(expected, rel=1e-6)


def test_evaluate_raster__takes_urls(s3, nginx, served, tmp_path, no_gdal_s3):
    """The same score from local GeoTIFFs, from S3 and over HTTP."""
    import rioxarray  # noqa: F401

    rng = np.random.default_rng(1)
    coords = {"y": 100.0 - np.arange(64) * 2.0, "x": np.arange(64) * 2.0}
    for name, offset in (("pred.tif", 1.0), ("ref.tif", 0.0)):
        heights = xr.DataArray(
            rng.random((64, 64), dtype=np.float32) * 20 + offset, dims=("y", "x"), coords=coords
        ).rio.write_crs(32619)
        heights.rio.to_raster(tmp_path / name)
        s3.put(name, (tmp_path / name).read_bytes())
        shutil.copy(tmp_path / name, served / name)
    local = xchm.evaluate_raster(tmp_path / "pred.tif", tmp_path / "ref.tif")
    report = f"{s3.url}/reports//r1"
    remote = xchm.evaluate_raster(f"{s3.url}/pred.tif", f"{nginx.url}/ref.tif", output=report)
    assert remote.mae == pytest.approx(local.mae) and remote.n_pixels == local.n_pixels == 64 * 64
    # The report went to S3 (drawn in a temp folder, one PUT per file), named as typed.
    assert remote.report == report
    keys = {o["Key"] for o in s3.server.client().list_objects_v2(Bucket=s3.bucket)["Contents"]}
    assert {"reports//r1/metrics.json", "reports//r1/density.png"} <= keys
    assert json.loads(s3.get("reports//r1/metrics.json"))["mae"] == pytest.approx(local.mae)
    s3.put("reports/mine/notes.txt", b"mine")  # a folder that is not a report: refused
    with pytest.raises(xchm.errors.OutputExistsError):
        xchm.evaluate_raster(
            tmp_path / "pred.tif", tmp_path / "ref.tif", output=f"{s3.url}/reports/mine"
        )
    assert s3.get("reports/mine/notes.txt") == b"mine"
