"""The storage layer against a real S3 server (moto on 127.0.0.1, over HTTP)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr

from tests import servers
from xchm import errors
from xchm.storage import location


def test_s3__keys_keep_double_slashes_and_a_write_is_one_put(s3):
    loc = location(f"{s3.url}/maps//ak/meta.json")
    before = len(s3.server.requests())
    loc.write_bytes(b'{"a": 1}')
    puts = [r for r in s3.requests(before) if r.method in ("PUT", "POST")]
    assert [(r.method, r.path) for r in puts] == [("PUT", f"/{s3.bucket}/maps//ak/meta.json")]
    assert s3.get("maps//ak/meta.json") == b'{"a": 1}'  # the key, read by another client
    assert loc.read_bytes() == b'{"a": 1}'
    assert str(loc) == f"{s3.url}/maps//ak/meta.json"


def test_s3__exists_is_dir_listdir_remove(s3):
    root = location(s3.url).join("run")
    assert not root.exists() and not root.is_dir()
    with pytest.raises(errors.PathNotFoundError, match=f"cannot list '{s3.url}/run'"):
        root.listdir()
    root.join("a.bin").write_bytes(b"a")
    root.join("sub", "b.bin").write_bytes(b"b")
    root.join("sub", "deep", "c.bin").write_bytes(b"c")
    assert root.exists() and root.is_dir()
    assert root.join("a.bin").exists() and not root.join("a.bin").is_dir()
    assert root.listdir() == ["a.bin", "sub"]
    assert root.join("sub").listdir() == ["b.bin", "deep"]
    with pytest.raises(errors.InputError, match="not a folder"):
        root.join("a.bin").listdir()
    root.join("sub").remove()
    assert root.listdir() == ["a.bin"]
    root.remove()
    assert not root.exists()
    with pytest.raises(errors.PathNotFoundError, match=f"cannot remove '{s3.url}/run'"):
        root.remove()
    root.remove(missing_ok=True)


def test_s3__listdir_shows_keys_after_a_double_slash_and_skips_console_folders(s3):
    s3.put("run//x.bin", b"x")
    s3.put("run/a.bin", b"a")
    assert location(s3.url).join("run").listdir() == ["/", "a.bin"]
    s3.put("console/", b"")  # what "Create folder" of a web console makes
    assert location(s3.url).join("console").listdir() == []


def test_s3__sees_other_clients_at_once(s3):
    """No stale listing cache: another program's writes and deletes are seen at once."""
    loc = location(s3.url).join("shared", "done.txt")
    folder = location(s3.url).join("shared")
    assert not loc.exists() and not folder.is_dir()
    s3.put("shared/done.txt", b"1")
    assert loc.exists() and folder.is_dir() and folder.listdir() == ["done.txt"]
    s3.delete("shared/done.txt")
    assert not loc.exists() and not folder.exists()


def test_s3__open_streams_and_missing_files_name_the_url(s3):
    loc = location(s3.url).join("stream.bin")
    with loc.open("wb") as out:
        for _ in range(3):
            out.write(b"x" * 1000)
    with loc.open("rb") as src:
        assert src.read() == b"x" * 3000
    missing = location(s3.url).join("no//such.bin")
    with pytest.raises(errors.PathNotFoundError, match=f"'{s3.url}/no//such.bin'"):
        missing.read_bytes()
    with pytest.raises(errors.PathNotFoundError, match=f"'{s3.url}/no//such.bin'"):
        missing.open("rb")


def test_s3__writing_to_a_missing_bucket_is_an_output_error(s3):
    with pytest.raises(errors.OutputError, match="'s3://no-such-bucket/x.bin'"):
        location("s3://no-such-bucket/x.bin").write_bytes(b"x")


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part:UserWarning")
def test_s3__zarr_round_trip_consolidated_crs_and_plain_open_zarr(s3):
    """to_zarr through our store; a plain ``xr.open_zarr(url)`` (env only) reads it back."""
    rng = np.random.default_rng(0)
    chm = xr.DataArray(
        rng.random((64, 96), dtype=np.float32),
        dims=("y", "x"),
        coords={"y": 100.0 - np.arange(64.0), "x": np.arange(96.0)},
        name="chm",
    ).rio.write_crs(32606)
    ds = chm.to_dataset().chunk({"y": 32, "x": 32})
    url = f"{s3.url}/maps//ak-chm.zarr"
    ds.to_zarr(location(url).zarr_store(), mode="w", consolidated=True, zarr_format=3)

    root = json.loads(s3.get("maps//ak-chm.zarr/zarr.json"))
    assert root["zarr_format"] == 3 and "chm" in root["consolidated_metadata"]["metadata"]
    assert any(r.path.endswith("ak-chm.zarr/chm/c/1/2") for r in s3.requests())

    back = xr.open_zarr(url, consolidated=True, decode_coords="all")  # standard env only
    xr.testing.assert_identical(back.load(), ds.load())
    assert back.rio.crs.to_epsg() == 32606
    back = xr.open_zarr(location(url).zarr_store(read_only=True), decode_coords="all")
    np.testing.assert_array_equal(back["chm"].values, chm.values)


def test_s3__storage_options_override_the_environment(s3, monkeypatch):
    """The environment points at a dead endpoint; explicit storage_options reach the server."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{servers.free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3.put("k.bin", b"k")
    explicit = {
        "endpoint_url": s3.server.endpoint_url,
        "key": s3.server.key,
        "secret": "a-secret-never-printed",
    }
    assert location(f"{s3.url}/k.bin", explicit).read_bytes() == b"k"
    assert location(f"{s3.url}/k.bin", explicit).exists()
    expected = f"cannot read '{s3.url}/k.bin'.*127.0.0.1"
    with pytest.raises(errors.StorageError, match=expected) as err:
        location(f"{s3.url}/k.bin").read_bytes()
    assert "a-secret-never-printed" not in str(err.value)
    assert isinstance(err.value, OSError)


def test_s3__region_from_aws_region(s3, monkeypatch):
    """botocore reads only AWS_DEFAULT_REGION; xchm passes AWS_REGION on."""
    monkeypatch.setenv("AWS_REGION", "eu-north-1")
    assert location(s3.url).fsspec_options()["client_kwargs"] == {"region_name": "eu-north-1"}
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert "client_kwargs" not in location(s3.url).fsspec_options()


@pytest.mark.parametrize("size", [10, 12 * 2**20], ids=["one-request", "multipart"])
def test_open_write__a_failing_block_leaves_no_object(s3, size):
    """`with loc.open("wb")` that raises never commits what it wrote (fsspec's would)."""
    loc = location(f"{s3.url}/half.bin")
    with pytest.raises(RuntimeError, match="cut off"), loc.open("wb") as file:
        file.write(b"x" * size)
        raise RuntimeError("cut off")
    assert not loc.exists()
    with loc.open("wb") as file:  # and a block that ends well commits, whole
        file.write(b"y" * size)
    assert s3.get("half.bin") == b"y" * size
