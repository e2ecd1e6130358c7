"""predict_to_zarr and write_cog on a real S3 server (moto on 127.0.0.1, over HTTP).

Every guarantee the local tests prove for a folder is proved here for an S3 prefix: the
store equals the local one byte for byte, a killed process or worker resumes to an
identical store computing only what is missing, another job's store is refused with
its objects untouched, a prefix xchm did not write is never touched, and a COG appears
whole or not at all. No mocks: s3fs, botocore and GDAL talk HTTP to the server.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dask.array as dsa
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
import zarr

import xchm
from tests import servers
from xchm.errors import OutputError, OutputExistsError, ResumeError
from xchm.inference.job import file_identity
from xchm.inference.to_zarr import PROGRESS_GROUP, open_prediction
from xchm.outputs import MARKER, prepare_output_dir
from xchm.storage import gdal_env, location

from .conftest import make_image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("to_zarr_s3") / "model"
    model.save(path)
    return path


def _objects(s3, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix/`` (all: ``""``) of the test's bucket, by relative key."""
    client = s3.server.client()
    head = prefix + "/" if prefix else ""
    found: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=head):
        for obj in page.get("Contents", []):
            found[obj["Key"][len(head) :]] = s3.get(obj["Key"])
    return dict(sorted(found.items()))


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _stored(ds: xr.Dataset) -> xr.Dataset:
    """The store's content: without ``xchm_run``, this call's summary (not stored)."""
    out = ds.load()
    out.attrs.pop("xchm_run")
    return out


def _done(url: str) -> np.ndarray:
    store = location(url).zarr_store(read_only=True)
    return np.asarray(zarr.open_array(store, mode="r", path=f"{PROGRESS_GROUP}/done")[...])


def _forget_bottom_half(url: str) -> None:
    store = location(url).zarr_store()
    zarr.open_array(store, mode="r+", path=f"{PROGRESS_GROUP}/done")[1, :] = 0


def _put_scene(s3, key: str, image: xr.DataArray, tmp_path: Path) -> str:
    """Upload ``image`` as an uncompressed GeoTIFF (same size for the same shape)."""
    local = tmp_path / key.replace("/", "_")
    named = image.assign_coords(band=[1, 2, 3])
    named.attrs["long_name"] = tuple(image.band.values.tolist())
    named.rio.to_raster(local)
    s3.put(key, local.read_bytes())
    return f"{s3.url}/{key}"


def _open(url: str) -> xr.DataArray:
    """Open a scene on S3 through GDAL (inside ``gdal_env``), as a user does."""
    return rioxarray.open_rasterio(
        location(url).gdal_path(), chunks={"band": -1, "y": 64, "x": 64}, lock=False
    )


def test_predict_to_zarr_s3__equals_the_local_store_byte_for_byte(
    s3, nginx, served, tmp_path, checkpoint
):
    image = make_image(200, 150).chunk({"y": 64, "x": 64})
    local = xchm.predict_to_zarr(image, checkpoint, tmp_path / "chm.zarr", region_size=64)
    url = f"{s3.url}/maps//ak/chm.zarr"  # keys keep their //
    remote = xchm.predict_to_zarr(image, checkpoint, url, region_size=64, progress=False)

    objects = _objects(s3, "maps//ak/chm.zarr")
    assert objects == _files(tmp_path / "chm.zarr")  # every chunk, every zarr.json
    assert MARKER not in objects and "chm/c/3/2" in objects
    xr.testing.assert_identical(_stored(remote), _stored(local))

    root = json.loads(objects["zarr.json"])  # consolidated at completion
    assert root["attributes"]["xchm_status"] == "complete"
    assert {"chm", "spatial_ref", "xchm_progress/done"} <= set(
        root["consolidated_metadata"]["metadata"]
    )
    plain = xr.open_zarr(url, decode_coords="all")  # the standard environment only
    assert plain["chm"].rio.crs == image.rio.crs
    assert plain["chm"].rio.transform() == image.rio.transform()
    np.testing.assert_array_equal(plain["chm"].values, local["chm"].values)
    opened = open_prediction(url)
    assert opened["chm"].rio.crs == image.rio.crs

    # Read only over HTTP (no listing): the consolidated metadata is all it needs.
    shutil.copytree(tmp_path / "chm.zarr", served / "s3-equal" / "chm.zarr")
    web = open_prediction(f"{nginx.url}/s3-equal/chm.zarr")
    xr.testing.assert_identical(web.load(), plain.load())

    # A resume that has nothing to do re-consolidates to the same bytes.
    again = xchm.predict_to_zarr(image, checkpoint, url, region_size=64, progress=False)
    assert "0/12 regions computed (12 already done)" in again.attrs["xchm_run"]
    assert _objects(s3, "maps//ak/chm.zarr") == objects


def test_predict_to_zarr_s3__tasks_carry_the_url_not_a_local_path(s3, checkpoint):
    """What the region tasks pickle: the zarr arrays, i.e. their FsspecStore."""
    image = make_image(128, 128).chunk({"y": 64, "x": 64})
    url = f"{s3.url}/chm.zarr"
    xchm.predict_to_zarr(image, checkpoint, url, region_size=64, progress=False)
    target = zarr.open_group(location(url).zarr_store(), mode="r+")["chm"]  # as the tasks'
    text = pickle.dumps(target).decode("latin-1")
    # The S3 filesystem's options (endpoint, region) and the key; nothing local.
    assert "S3FileSystem" in text and f"{s3.bucket}/chm.zarr" in text
    assert s3.server.endpoint_url in text
    assert os.getcwd() not in text and tempfile.gettempdir() + "/" not in text
    assert s3.server.key not in text and s3.server.secret not in text  # from the env
    back = pickle.loads(pickle.dumps(target))  # what a worker gets writes to the store
    back[0:64, 0:64] = np.float32(-1.0)
    assert float(open_prediction(url)["chm"][0, 0]) == -1.0


# Runs predict_to_zarr and SIGKILLs itself once `after` regions are recorded (the next
# region's chunks are then written and not recorded: the worst moment).
KILLED_AFTER = """
import os, signal, sys
import rioxarray, xchm
import xchm.inference.to_zarr as to_zarr
from xchm.storage import gdal_env, location

after = int(sys.argv[4])
run_local = to_zarr._run_local

def killed_after(pending, write):
    for done, region in enumerate(run_local(pending, write)):
        if done == after:  # this region is written, not recorded
            os.kill(os.getpid(), signal.SIGKILL)
        yield region

to_zarr._run_local = killed_after
scene = location(sys.argv[1])
with gdal_env(scene):
    image = rioxarray.open_rasterio(
        scene.gdal_path(), chunks={"band": -1, "y": 64, "x": 64}, lock=False
    )
    xchm.predict_to_zarr(image, sys.argv[2], sys.argv[3], region_size=64, progress=False)
"""

_CHUNK_PUT = re.compile(r"/chm/c/(\d+)/(\d+)$")


@pytest.mark.slow
def test_predict_to_zarr_s3__killed_process_resumes_to_an_identical_store(
    s3, tmp_path, checkpoint, monkeypatch
):
    monkeypatch.setenv("XCHM_TORCH_THREADS", "1")  # one thread count here and in the child
    scene = _put_scene(s3, "imagery/scene.tif", make_image(256, 256), tmp_path)
    url = f"{s3.url}/killed.zarr"
    args = [sys.executable, "-c", KILLED_AFTER, scene, str(checkpoint), url, "5"]
    child = subprocess.run(args, capture_output=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-3000:]
    done = _done(url)
    assert done.sum() == 5 and done.size == 16  # 5 of 16 regions recorded
    root = json.loads(s3.get("killed.zarr/zarr.json"))
    assert root["attributes"]["xchm_status"] == "incomplete"
    assert "consolidated_metadata" not in root or root["consolidated_metadata"] is None

    since = len(s3.server.requests())
    with gdal_env(location(scene)):  # opened exactly as the child did: the same job
        resumed = xchm.predict_to_zarr(_open(scene), checkpoint, url, region_size=64)
        clean = xchm.predict_to_zarr(
            _open(scene), checkpoint, f"{s3.url}/clean.zarr", region_size=64, progress=False
        )
    assert "11/16 regions computed (5 already done)" in resumed.attrs["xchm_run"]
    written = {
        tuple(int(i) for i in m.groups())
        for r in s3.requests(since)
        if r.method == "PUT" and "/killed.zarr/" in r.path and (m := _CHUNK_PUT.search(r.path))
    }
    missing = {tuple(int(i) for i in ix) for ix in np.argwhere(done == 0)}
    assert written == missing  # only the regions not recorded (chunk = region here)
    assert _objects(s3, "killed.zarr") == _objects(s3, "clean.zarr")  # byte for byte
    assert resumed.attrs["xchm_status"] == "complete"
    np.testing.assert_array_equal(resumed["chm"].values, clean["chm"].values)


@pytest.fixture
def cluster_client(s3):
    """Two worker processes (the S3 environment inherited), closed after the test."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.mark.slow
def test_predict_to_zarr_s3__killed_worker_does_not_change_the_store(
    s3, cluster_client, checkpoint
):
    image = make_image(256, 256).chunk({"y": 64, "x": 64})
    url = f"{s3.url}/chm.zarr"
    pids = set(cluster_client.run(os.getpid).values())
    client = s3.server.client()
    killed: list[int] = []

    def kill_one_worker_mid_run() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            listed = client.list_objects_v2(
                Bucket=s3.bucket, Prefix=f"chm.zarr/{PROGRESS_GROUP}/done/c/"
            )
            if listed.get("KeyCount", 0) >= 2:  # two regions recorded
                pid = sorted(pids)[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker_mid_run)
    killer.start()
    ds = xchm.predict_to_zarr(image, checkpoint, url, region_size=64, in_flight=4, progress=False)
    killer.join()
    assert killed, "the run ended before a worker could be killed"
    assert _done(url).all() and ds.attrs["xchm_status"] == "complete"
    cluster_client.wait_for_workers(2, timeout=120)
    clean = xchm.predict_to_zarr(
        image, checkpoint, f"{s3.url}/clean.zarr", region_size=64, progress=False
    )
    assert _objects(s3, "chm.zarr") == _objects(s3, "clean.zarr")  # byte for byte
    xr.testing.assert_identical(_stored(ds), _stored(clean))


def test_predict_to_zarr_s3__another_jobs_store_is_refused_untouched(s3, tmp_path, checkpoint):
    scene = _put_scene(s3, "imagery/a.tif", make_image(128, 128), tmp_path)
    other = _put_scene(s3, "imagery/b.tif", make_image(128, 128, seed=42), tmp_path)
    url = f"{s3.url}/m.zarr"
    with gdal_env(location(scene)):
        xchm.predict_to_zarr(_open(scene), checkpoint, url, region_size=64, progress=False)
        _forget_bottom_half(url)
        before = _objects(s3, "m.zarr")
        with pytest.raises(ResumeError, match=r"input file\(s\) /vsis3/.*/a\.tif -> .*/b\.tif"):
            xchm.predict_to_zarr(_open(other), checkpoint, url, region_size=64)
        with pytest.raises(ResumeError, match="different job: overlap: 16 -> 8"):
            xchm.predict_to_zarr(_open(scene), checkpoint, url, region_size=64, overlap=8)
        # a.tif replaced by other data of the same size: the URL and the GDAL token are
        # the same, the ETag is not.
        s3.put("imagery/a.tif", s3.get("imagery/b.tif"))
        with pytest.raises(ResumeError, match=r"a\.tif changed since the store was started"):
            xchm.predict_to_zarr(_open(scene), checkpoint, url, region_size=64)
    assert _objects(s3, "m.zarr") == before  # refused before anything changed


def test_file_identity__urls_by_size_etag_and_time_without_download(s3, nginx, served):
    s3.put("a.tif", b"x" * 1000)
    since = len(s3.server.requests())
    for source in (f"{s3.url}/a.tif", f"/vsis3/{s3.bucket}/a.tif"):
        found = file_identity(source)
        assert found["path"] == source and found["size"] == 1000
        assert found["etag"] and found["modified"]
    assert not [r for r in s3.requests(since) if r.method == "GET"]  # HEADs only
    s3.put("a.tif", b"y" * 1000)
    assert file_identity(f"{s3.url}/a.tif")["etag"] != found["etag"]
    (served / "h.tif").write_bytes(b"z" * 321)
    web = file_identity(f"/vsicurl/{nginx.url}/h.tif")
    assert web["size"] == 321 and web["etag"] and web["modified"]
    assert file_identity(f"{s3.url}/gone.tif") == {"path": f"{s3.url}/gone.tif"}


def test_predict_to_zarr_s3__foreign_prefix_is_never_touched(s3, checkpoint):
    image = make_image(128, 128)
    s3.put("data.zarr/keep.txt", b"mine")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="not written by xchm; nothing in it"):
            xchm.predict_to_zarr(image, checkpoint, f"{s3.url}/data.zarr", overwrite=overwrite)
    assert _objects(s3, "data.zarr") == {"keep.txt": b"mine"}
    # A user's own Zarr store on S3 (the imagery, say) given as the output by mistake.
    imagery = f"{s3.url}/imagery.zarr"
    image.assign_coords(band=[1, 2, 3]).to_dataset(name="image").to_zarr(
        location(imagery).zarr_store(), consolidated=False
    )
    before = _objects(s3, "imagery.zarr")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="not written by xchm"):
            xchm.predict_to_zarr(image, checkpoint, imagery, overwrite=overwrite)
    assert _objects(s3, "imagery.zarr") == before
    # Another kind of xchm output: refused even with overwrite.
    prepare_output_dir(f"{s3.url}/cube.zarr", "chip cube")
    s3.put("cube.zarr/data", b"cube data")
    with pytest.raises(OutputExistsError, match=f"{s3.url}/cube.zarr holds an xchm chip cube"):
        xchm.predict_to_zarr(image, checkpoint, f"{s3.url}/cube.zarr", overwrite=True)
    assert s3.get("cube.zarr/data") == b"cube data"


def test_predict_to_zarr_s3__overwrite_replaces_only_a_prediction_store(s3, checkpoint):
    image = make_image(128, 128).chunk({"y": 64, "x": 64})
    url = f"{s3.url}/m.zarr"
    xchm.predict_to_zarr(image, checkpoint, url, region_size=64, progress=False)
    s3.put("m.zarr/chm/c/9/9", b"a stale chunk of the old store")
    with pytest.raises(OutputExistsError, match=f"{s3.url}/m.zarr holds .*resume=True"):
        xchm.predict_to_zarr(image, checkpoint, url, region_size=64, resume=False)
    replaced = xchm.predict_to_zarr(
        image, checkpoint, url, region_size=128, overwrite=True, overlap=8, progress=False
    )
    assert replaced["chm"].attrs["xchm_overlap"] == 8
    objects = _objects(s3, "m.zarr")
    assert "chm/c/9/9" not in objects  # nothing of the old store is left
    consolidated = json.loads(objects["zarr.json"])["consolidated_metadata"]["metadata"]
    assert consolidated["chm"]["attributes"]["xchm_overlap"] == 8
    assert _done(url).shape == (1, 1)
    assert xr.open_zarr(url, decode_coords="all")["chm"].attrs["xchm_overlap"] == 8


class _Stop(Exception):
    pass


def test_predict_to_zarr_s3__a_resume_drops_consolidated_metadata_until_done(
    s3, checkpoint, monkeypatch
):
    import xchm.inference.to_zarr as to_zarr

    image = make_image(128, 128).chunk({"y": 64, "x": 64})
    url = f"{s3.url}/m.zarr"
    xchm.predict_to_zarr(image, checkpoint, url, region_size=64, progress=False)
    finished = _objects(s3, "m.zarr")
    _forget_bottom_half(url)

    def stop(pending, write):
        raise _Stop  # cut off before the first region
        yield

    with monkeypatch.context() as patch:
        patch.setattr(to_zarr, "_run_local", stop)
        with pytest.raises(_Stop):
            xchm.predict_to_zarr(image, checkpoint, url, region_size=64, progress=False)
    root = json.loads(s3.get("m.zarr/zarr.json"))
    assert root["attributes"]["xchm_status"] == "incomplete"
    assert root.get("consolidated_metadata") is None  # no stale picture of the store
    ds = xchm.predict_to_zarr(image, checkpoint, url, region_size=64, progress=False)
    assert "2/4 regions computed (2 already done)" in ds.attrs["xchm_run"]
    assert _objects(s3, "m.zarr") == finished


# -- write_cog ------------------------------------------------------------------------


def _map(values: np.ndarray, chunks: int = 64) -> xr.DataArray:
    h, w = values.shape
    return (
        xr.DataArray(
            values.astype("float32"),
            dims=("y", "x"),
            coords={"y": 7e6 - 2.0 * (np.arange(h) + 0.5), "x": 4e5 + 2.0 * (np.arange(w) + 0.5)},
            name="chm",
        )
        .rio.write_crs("EPSG:32617")
        .chunk({"y": chunks, "x": chunks})
    )


def _staging_dirs() -> list[str]:
    return sorted(p.name for p in Path(tempfile.gettempdir()).glob(f"xchm-cog-{os.getpid()}-*"))


def _uploads(s3) -> list:
    return s3.server.client().list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])


def test_write_cog_s3__equals_the_local_cog_and_reads_back_through_gdal(s3, tmp_path):
    chm = _map(np.random.default_rng(0).random((150, 130)) * 40)
    local = xchm.write_cog(chm, tmp_path / "chm.tif")
    url = f"{s3.url}/maps//chm.tif"
    out = xchm.write_cog(chm, url)
    assert str(out) == url
    assert s3.get("maps//chm.tif") == local.read_bytes()  # the very same file
    with gdal_env(out):
        back = rioxarray.open_rasterio(out.gdal_path())
        np.testing.assert_array_equal(back.values[0], chm.values)
        assert back.rio.crs == chm.rio.crs and back.rio.transform() == chm.rio.transform()
        with rasterio.open(out.gdal_path()) as src:
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert _staging_dirs() == [] and _uploads(s3) == []


def test_write_cog_s3__overwrite_refused_unless_asked(s3):
    chm = _map(np.full((64, 64), 3.0))
    s3.put("chm.tif", b"keep me")
    with pytest.raises(OutputExistsError, match=f"{s3.url}/chm.tif exists; pass overwrite"):
        xchm.write_cog(chm, f"{s3.url}/chm.tif")
    assert s3.get("chm.tif") == b"keep me"
    xchm.write_cog(chm, f"{s3.url}/chm.tif", overwrite=True)
    assert s3.get("chm.tif")[:4] in (b"II*\x00", b"II+\x00")  # a TIFF now

    # An object that appears while the map is computed is not overwritten either.
    def someone_else_writes(block: np.ndarray) -> np.ndarray:
        s3.put("race.tif", b"theirs")
        return block

    racing = _map(np.ones((64, 64)))
    meta = np.empty((0, 0), dtype="float32")  # dask does not call the function to guess it
    racing = racing.copy(data=racing.data.map_blocks(someone_else_writes, meta=meta))
    assert not location(f"{s3.url}/race.tif").exists()
    with pytest.raises(OutputExistsError, match="race.tif exists"):
        xchm.write_cog(racing, f"{s3.url}/race.tif")
    assert s3.get("race.tif") == b"theirs"


def _failing(shape: tuple[int, int]) -> xr.DataArray:
    """A lazy map whose last block fails when computed."""

    def fail(block: np.ndarray, block_info=None) -> np.ndarray:
        if block_info and block_info[0]["chunk-location"] == (1, 1):
            raise RuntimeError("the map could not be computed")
        return block

    chm = _map(np.ones(shape), chunks=shape[0] // 2)
    return chm.copy(data=chm.data.map_blocks(fail, dtype="float32"))


def test_write_cog_s3__no_object_after_a_failure(s3, monkeypatch):
    with pytest.raises(OutputError, match="bucket s3://no-such-bucket does not exist"):
        xchm.write_cog(_map(np.ones((64, 64))), "s3://no-such-bucket/chm.tif")
    assert "no-such-bucket" not in {b["Name"] for b in s3.server.client().list_buckets()["Buckets"]}
    with pytest.raises(RuntimeError, match="could not be computed"):
        xchm.write_cog(_failing((128, 128)), f"{s3.url}/failed.tif")
    assert _objects(s3) == {}
    assert _staging_dirs() == []

    # The network fails in the middle of a multipart upload: the upload is aborted.
    big = _map(np.random.default_rng(1).random((1536, 1536)) * 40, chunks=512)
    opened: list[int] = []

    def cut_after_the_first_part(src, dst, length=0):
        dst.write(src.read())  # about 8.5 MB, more than a part (8 MiB): one goes out
        opened.append(len(_uploads(s3)))
        raise ConnectionResetError("the network went away")

    monkeypatch.setattr(shutil, "copyfileobj", cut_after_the_first_part)
    with pytest.raises(OutputError, match="big.tif': the network went away"):
        xchm.write_cog(big, f"{s3.url}/big.tif")
    monkeypatch.undo()
    assert opened == [1]  # a multipart upload was under way
    assert _objects(s3) == {}  # and no object appeared
    assert _uploads(s3) == []  # its parts were deleted (AbortMultipartUpload)
    assert _staging_dirs() == []


def test_write_cog_s3__on_a_cluster_stages_in_the_store_and_cleans_up(s3, tmp_path):
    from distributed import Client

    chm = _map(np.random.default_rng(2).random((150, 130)) * 40)
    local = xchm.write_cog(chm, tmp_path / "chm.tif")
    with Client(processes=False, n_workers=1, dashboard_address="127.0.0.1:0"):
        xchm.write_cog(chm, f"{s3.url}/out/chm.tif")  # workers stage a Zarr in the store
    assert list(_objects(s3, "out")) == ["chm.tif"]  # the staged store is gone
    with gdal_env(location(f"{s3.url}/out/chm.tif")):
        back = rioxarray.open_rasterio(f"/vsis3/{s3.bucket}/out/chm.tif").values
    np.testing.assert_array_equal(back, rioxarray.open_rasterio(local).values)


def test_write_cog_s3__a_never_computed_map_checks_the_output_first(s3):
    def fail(block: np.ndarray) -> np.ndarray:
        raise AssertionError("the map was computed")

    chm = _map(np.zeros((64, 64)))
    data = dsa.zeros((64, 64), chunks=32, dtype="float32").map_blocks(fail, dtype="float32")
    chm = chm.copy(data=data)
    s3.put("old.tif", b"old")
    with pytest.raises(OutputExistsError, match="exists"):
        xchm.write_cog(chm, f"{s3.url}/old.tif")
    with pytest.raises(OutputError, match=r"must end in one of \.tif, \.tiff"):
        xchm.write_cog(chm, f"{s3.url}/chm.png")
    s3.put("dir.tif/inside", b"x")
    with pytest.raises(OutputExistsError, match="is a folder"):
        xchm.write_cog(chm, f"{s3.url}/dir.tif", overwrite=True)


def test_storage_options_override_the_environment(s3, monkeypatch, checkpoint):
    """The environment points at a dead endpoint; storage_options reach the server."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{servers.free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    options = {"endpoint_url": s3.server.endpoint_url}
    image = make_image(128, 128)
    url = f"{s3.url}/m.zarr"
    ds = xchm.predict_to_zarr(image, checkpoint, url, storage_options=options, progress=False)
    assert ds.attrs["xchm_status"] == "complete" and "m.zarr/zarr.json" in _objects(s3, "")
    assert xchm.open_prediction(url, storage_options=options)["chm"].rio.crs == image.rio.crs
    xchm.write_cog(ds["chm"], f"{s3.url}/chm.tif", storage_options=options)
    assert s3.get("chm.tif")[:4] == b"II*\x00"
