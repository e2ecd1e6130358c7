"""Location: parsing and printing, the local disk, GDAL names and options (no server)."""

from __future__ import annotations

import os
import pickle
import stat
import threading
from pathlib import Path

import pytest

from xchm import errors
from xchm.storage import Location, default_cache_dir, gdal_env, location

# -- printing and parsing -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "s3://bucket/a//b/c.zarr",
        "s3://bucket/a//b/",
        "gs://b//x",
        "az://container/a//b.tif",
        "https://host:8080/a//b.tif?x=1",
        "file:///tmp//x",
        "memory://scratch//k",
        "relative//dir/x.tif",
        "/abs//dir/",
    ],
)
def test_location__prints_back_exactly_as_typed(text):
    loc = location(text)
    assert str(loc) == text
    assert repr(loc) == f"Location({text!r})"
    assert location(loc) is loc


def test_location__join_adds_one_slash_and_collapses_nothing():
    assert str(location("s3://b/a//k").join("x", "y/z")) == "s3://b/a//k/x/y/z"
    assert str(location("s3://b/a//k/").join("x")) == "s3://b/a//k/x"
    assert str(location("s3://b/a") / "b//c") == "s3://b/a/b//c"
    assert str(location("out//run").join("chm.zarr")) == os.path.join("out//run", "chm.zarr")
    for bad in ["", "/abs", "s3://other/k"]:
        with pytest.raises(errors.InputError, match="s3://b/a"):
            location("s3://b/a").join(bad)


def test_location__kinds_names_parents():
    s3 = location("s3://b/a//k.tif")
    assert (s3.is_url, s3.is_local, s3.backend, s3.scheme) == (True, False, "s3", "s3")
    assert (s3.name, str(s3.parent), str(s3.parent.parent.parent)) == (
        "k.tif",
        "s3://b/a/",
        "s3://b",
    )
    assert str(location("s3://b").parent) == "s3://b"
    local = location(Path("x") / "y.tif")
    assert (local.is_url, local.is_local, local.name) == (False, True, "y.tif")
    assert local.path == Path("x/y.tif")
    file_url = location("file:///tmp/a%20b/c.tif")
    assert (file_url.is_url, file_url.is_local) == (True, True)
    assert file_url.path == Path("/tmp/a b/c.tif")
    assert location("https://h/x.tif").read_only
    with pytest.raises(errors.InputError, match="'s3://b/a//k.tif' is a s3 URL"):
        _ = s3.path


def test_location__refuses_unknown_schemes_and_non_paths():
    with pytest.raises(errors.InputError, match="'ftp://host/x.tif': unsupported URL scheme 'ftp'"):
        location("ftp://host/x.tif")
    with pytest.raises(errors.InputError, match="empty"):
        location("")
    with pytest.raises(errors.InputTypeError, match="got int"):
        location(3)  # type: ignore[arg-type]


def test_location__pickles_with_its_options_and_hides_them_in_repr():
    """A Location travels in Dask graphs; repr never shows credentials."""
    loc = location("s3://b/k", {"key": "AKIA-SECRET", "secret": "s3cr3t"})
    back = pickle.loads(pickle.dumps(loc))
    assert back == loc and back.storage_options == {"key": "AKIA-SECRET", "secret": "s3cr3t"}
    assert "s3cr3t" not in repr(loc) and "AKIA" not in repr(loc)
    assert hash(back) == hash(loc)
    merged = location(loc, {"secret": "other"})
    assert merged.storage_options == {"key": "AKIA-SECRET", "secret": "other"}


# -- the local disk -------------------------------------------------------------------


def test_local__exists_is_dir_listdir_remove(tmp_path):
    root = location(str(tmp_path) + "//tree")
    assert not root.exists() and not root.is_dir()
    with pytest.raises(errors.PathNotFoundError, match="//tree"):
        root.listdir()
    root.join("sub").mkdir()
    root.join("sub", "a.bin").write_bytes(b"a")
    root.join("b.bin").write_bytes(b"bb")
    assert root.exists() and root.is_dir() and not root.join("b.bin").is_dir()
    assert root.listdir() == ["b.bin", "sub"]
    assert root.join("sub", "a.bin").read_bytes() == b"a"
    root.join("b.bin").remove()
    assert root.listdir() == ["sub"]
    root.remove()
    assert not root.exists()
    with pytest.raises(errors.PathNotFoundError, match=r"cannot remove '.*//tree'"):
        root.remove()
    root.remove(missing_ok=True)


def test_local__write_bytes_missing_parent_is_an_output_error_naming_the_path(tmp_path):
    target = location(str(tmp_path / "missing" / "x.bin"))
    with pytest.raises(errors.OutputError, match="missing/x.bin"):
        target.write_bytes(b"x")
    with pytest.raises(errors.PathNotFoundError, match="missing/x.bin"):
        target.read_bytes()


def test_local__write_bytes_is_atomic_readers_see_old_or_new(tmp_path):
    """A reader polling the file while it is rewritten sees only whole contents."""
    target = location(tmp_path / "meta.bin")
    old, new = b"a" * 4_000_000, b"b" * 4_000_000
    target.write_bytes(old)
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = target.path.read_bytes()
            seen.add(data[:1] + data[-1:] + str(len(data)).encode())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            target.write_bytes(new if i % 2 == 0 else old)
    finally:
        stop.set()
        reader.join()
    assert seen <= {b"aa4000000", b"bb4000000"}, f"a reader saw a partial file: {seen}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.bin"]  # no temp left


def test_local__write_bytes_keeps_the_umask_mode(tmp_path):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    location(tmp_path / "atomic.bin").write_bytes(b"x")
    mode = stat.S_IMODE((tmp_path / "atomic.bin").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode)


def test_memory__round_trip_and_zarr_store():
    import numpy as np
    import xarray as xr

    loc = location("memory://xchm-test//tree")
    loc.join("k.bin").write_bytes(b"k")
    assert loc.join("k.bin").read_bytes() == b"k" and loc.listdir() == ["k.bin"]
    ds = xr.Dataset({"v": (("y", "x"), np.arange(6.0).reshape(2, 3))})
    ds.to_zarr(loc.join("d.zarr").zarr_store(), mode="w", consolidated=False)
    back = xr.open_zarr(loc.join("d.zarr").zarr_store(read_only=True), consolidated=False)
    xr.testing.assert_identical(back.load(), ds)
    loc.remove()
    assert not loc.exists()


def test_http__is_read_only():
    loc = location("https://example.org/a//b.tif")
    writes = [lambda: loc.write_bytes(b"x"), loc.remove, loc.zarr_store, lambda: loc.open("wb")]
    for write in writes:
        with pytest.raises(errors.OutputError, match=r"'https://example.org/a//b.tif'.*only reads"):
            write()


def test_missing_backend_names_the_package():
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("gcsfs is installed here")
    expected = r"'gs://b/k'.*pip install 'xchm\[gcs\]'"
    with pytest.raises(errors.MissingDependencyError, match=expected):
        location("gs://b/k").read_bytes()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XCHM_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("XCHM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "xchm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "xchm"


# -- GDAL names and options ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "gdal"),
    [
        ("s3://bucket/a//k.tif", "/vsis3/bucket/a//k.tif"),
        ("s3a://bucket/k.tif", "/vsis3/bucket/k.tif"),
        ("gs://bucket/k.tif", "/vsigs/bucket/k.tif"),
        ("az://container/d/k.tif", "/vsiaz/container/d/k.tif"),
        ("abfs://container@acct.dfs.core.windows.net/k.tif", "/vsiaz/container/k.tif"),
        ("https://host:8080/a//k.tif", "/vsicurl/https://host:8080/a//k.tif"),
        ("http://host/k.tif", "/vsicurl/http://host/k.tif"),
        ("file:///data/k.tif", "/data/k.tif"),
        ("rel//k.tif", "rel//k.tif"),
    ],
)
def test_gdal_path(text, gdal):
    assert location(text).gdal_path() == gdal


@pytest.fixture
def clean_aws(monkeypatch):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_gdal_options__translate_aws_endpoint_url(clean_aws):
    clean_aws.setenv("AWS_ENDPOINT_URL", "http://minio.local:9000")
    clean_aws.setenv("AWS_REGION", "eu-north-1")
    assert location("s3://b/k.tif").gdal_options() == {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "AWS_S3_ENDPOINT": "minio.local:9000",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_REGION": "eu-north-1",
    }
    # The S3-specific variable wins, as in botocore; https gives AWS_HTTPS=YES.
    clean_aws.setenv("AWS_ENDPOINT_URL_S3", "https://ceph.example.org")
    options = location("s3://b/k.tif").gdal_options()
    assert (options["AWS_S3_ENDPOINT"], options["AWS_HTTPS"]) == ("ceph.example.org", "YES")
    # Credentials of the environment are GDAL's own business: never copied.
    clean_aws.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    assert "s3cr3t" not in str(location("s3://b/k.tif").gdal_options())


def test_gdal_options__aws_itself_keeps_virtual_hosting(clean_aws):
    clean_aws.setenv("AWS_ENDPOINT_URL", "https://s3.eu-north-1.amazonaws.com")
    assert "AWS_VIRTUAL_HOSTING" not in location("s3://b/k").gdal_options()
    clean_aws.delenv("AWS_ENDPOINT_URL")
    assert location("s3://b/k").gdal_options() == {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


def test_gdal_options__storage_options_override_the_environment(clean_aws):
    clean_aws.setenv("AWS_ENDPOINT_URL", "http://env-host:1")
    options = {
        "endpoint_url": "https://given-host:2",
        "key": "K",
        "secret": "S",
        "token": "T",
        "requester_pays": True,
        "client_kwargs": {"region_name": "ca-central-1"},
    }
    assert location("s3://b/k", options).gdal_options() == {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "AWS_S3_ENDPOINT": "given-host:2",
        "AWS_HTTPS": "YES",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_REGION": "ca-central-1",
        "AWS_ACCESS_KEY_ID": "K",
        "AWS_SECRET_ACCESS_KEY": "S",
        "AWS_SESSION_TOKEN": "T",
        "AWS_REQUEST_PAYER": "requester",
    }
    assert location("s3://b/k", {"anon": True}).gdal_options()["AWS_NO_SIGN_REQUEST"] == "YES"


def test_gdal_options__gcs_azure_local():
    assert location("gs://b/k", {"token": "/keys/sa.json"}).gdal_options() == {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GOOGLE_APPLICATION_CREDENTIALS": "/keys/sa.json",
    }
    azure = location("abfs://c@acct.dfs.core.windows.net/k", {"sas_token": "sv=1"})
    assert azure.gdal_options() == {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "AZURE_STORAGE_SAS_TOKEN": "sv=1",
        "AZURE_STORAGE_ACCOUNT": "acct",
    }
    assert location("/data/k.tif").gdal_options() == {}


def test_gdal_options__bad_endpoint_names_the_url(clean_aws):
    clean_aws.setenv("AWS_ENDPOINT_URL", "minio:9000")
    with pytest.raises(errors.InputError, match="'s3://b/k'.*'minio:9000'"):
        location("s3://b/k").gdal_options()


def test_gdal_env__sets_and_restores_gdal_config(clean_aws):
    from rasterio.env import get_gdal_config

    clean_aws.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    with gdal_env("s3://b/k.tif", GDAL_HTTP_MAX_RETRY="0") as config:
        assert get_gdal_config("AWS_S3_ENDPOINT") == "127.0.0.1:9"
        assert config["GDAL_HTTP_MAX_RETRY"] == "0"
    assert get_gdal_config("AWS_S3_ENDPOINT") is None


def test_gdal_env__refuses_two_endpoints_at_once(clean_aws):
    one = location("s3://a/k", {"endpoint_url": "http://one:1"})
    two = location("s3://b/k", {"endpoint_url": "http://two:2"})
    with pytest.raises(errors.InputError, match="'s3://b/k' needs GDAL option AWS_S3_ENDPOINT"):
        with gdal_env(one, two):
            pass


def test_location_class_is_frozen():
    loc = Location("s3://b/k")
    with pytest.raises(AttributeError):
        loc.text = "s3://other"  # type: ignore[misc]
