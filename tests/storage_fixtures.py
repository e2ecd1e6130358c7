"""Fixtures: a real S3 server (moto) and a real HTTP server (nginx) on 127.0.0.1.

Imported by tests/conftest.py, so every test folder can use ``s3``, ``nginx``...

The servers are subprocesses started once per session (tests/servers.py); each test
that uses S3 gets the standard AWS variables pointing at the server (and nothing else
of the machine's AWS setup) and a bucket of its own. Without moto or nginx the tests
skip with the reason, except under CI (``CI`` set), where they fail:
scripts/install_storage_test_deps.sh installs nginx, the ``dev`` extra moto[server].
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests import servers

_BUCKETS = itertools.count()

#: AWS variables that would point the clients elsewhere than the test server.
_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_DEFAULT_REGION",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_NO_SIGN_REQUEST",
    "AWS_S3_ENDPOINT",
    "AWS_HTTPS",
    "AWS_VIRTUAL_HOSTING",
    "AWS_REQUEST_PAYER",
)


@dataclass
class S3:
    """The S3 server and this test's bucket (``url`` is ``s3://<bucket>``)."""

    server: servers.MotoServer
    bucket: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"

    def put(self, key: str, data: bytes) -> None:
        """Write an object with another client (botocore), as another program would."""
        self.server.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        body = self.server.client().get_object(Bucket=self.bucket, Key=key)["Body"]
        return bytes(body.read())

    def delete(self, key: str) -> None:
        self.server.client().delete_object(Bucket=self.bucket, Key=key)

    def requests(self, since: int = 0) -> list[servers.Request]:
        """Requests to this test's bucket, from the ``since``-th server request on."""
        found = self.server.requests()[since:]
        return [r for r in found if r.path.startswith(f"/{self.bucket}")]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[servers.MotoServer]:
    missing = servers.moto_missing()
    if missing:
        servers.unavailable(missing)
    try:
        server = servers.start_moto()
    except servers.ServerUnavailable as err:
        pytest.fail(f"the S3 test server did not start: {err}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(
    moto_server: servers.MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """The standard AWS variables set to the test server; the machine's AWS setup hidden."""
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = {
        **moto_server.env(),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env
    # xchm.storage.gdal_environment() (open_image, import xchm) writes GDAL's names for
    # the endpoint into os.environ for the process: drop them, or the next test sees
    # this server's endpoint (monkeypatch restores what was there before the test).
    for name in ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING"):
        os.environ.pop(name, None)


@pytest.fixture
def s3(moto_server: servers.MotoServer, aws_env: dict[str, str]) -> Iterator[S3]:
    """A fresh bucket on the test server; s3fs's cached clients closed before and after."""
    servers.close_s3_clients()
    bucket = f"xchm-test-{next(_BUCKETS)}"
    moto_server.create_bucket(bucket)
    try:
        yield S3(moto_server, bucket)
    finally:
        servers.close_s3_clients()


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder nginx serves (tests put their files in it)."""
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="session")
def nginx(served: Path) -> Iterator[servers.NginxServer]:
    missing = servers.nginx_missing()
    if missing:
        servers.unavailable(missing)
    try:
        server = servers.start_nginx(served)
    except servers.ServerUnavailable as err:
        pytest.fail(f"the HTTP test server (nginx) did not start: {err}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local 512 x 512 COG (see ``write_cog``); tests copy it where they read it."""
    return write_cog(tmp_path_factory.mktemp("cog") / "scene.tif")


def write_cog(path: Path, size: int = 512, *, seed: int = 0) -> Path:
    """Write a float32 4-band COG (256 px tiles, overviews), random values, UTM CRS."""
    import rioxarray  # noqa: F401
    import xarray as xr

    rng = np.random.default_rng(seed)
    data = rng.random((4, size, size), dtype=np.float32)
    image = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={
            "band": [1, 2, 3, 4],
            "y": 7_000_000.0 - 0.5 * np.arange(size) - 0.25,
            "x": 500_000.0 + 0.5 * np.arange(size) + 0.25,
        },
    ).rio.write_crs(32606)
    image.rio.to_raster(path, driver="COG", blocksize=256, compress="DEFLATE")
    return path
