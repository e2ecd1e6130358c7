"""Real servers on 127.0.0.1 for the tests: an S3 server (moto) and an HTTP server (nginx).

Every byte the tests send to "the cloud" goes through HTTP to one of these, through
the clients users run (s3fs, botocore, GDAL's /vsis3/ and /vsicurl/); nothing is
patched in-process. Both run as subprocesses and log every request they answer, so a
test can count requests (``requests()``).

- :func:`start_moto` runs moto's standalone S3-compatible server (``moto[server]``,
  from the ``dev`` extra): ``python -m moto.server -H 127.0.0.1 -p PORT``.
- :func:`start_nginx` runs Debian's nginx (``scripts/install_storage_test_deps.sh``)
  in the foreground with its own configuration, serving a folder with range requests.

Use :func:`unavailable` when a server cannot be had: the test fails under CI (``CI``
set), which must run these tests, and skips elsewhere.

Run by hand to poke at them::

    .venv/bin/python tests/servers.py [FOLDER]   # prints both URLs; Ctrl-C stops them
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

#: Request lines of werkzeug's log (moto) and of our nginx log format.
_COLOUR = r"(?:\x1b\[[0-9;]*m)*"  # werkzeug colours some status lines
_MOTO_LINE = re.compile(rf'"{_COLOUR}([A-Z]+) (\S+) HTTP/[0-9.]+{_COLOUR}" (\d+)')
_NGINX_LINE = re.compile(r"^([A-Z]+) (\S+) (\d+) range=(.*) bytes=(\d+)$")


class ServerUnavailable(RuntimeError):
    """A test server could not be started (the message says why)."""


@dataclass(frozen=True)
class Request:
    """One request a test server answered."""

    method: str
    path: str
    status: int
    range: str = ""
    bytes: int = 0


def in_ci() -> bool:
    """Whether this is a CI run (``CI`` set and not false), which must run every test."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def unavailable(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere, because a test server is missing."""
    import pytest

    if in_ci():
        pytest.fail(f"CI must run this test, but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise ServerUnavailable(f"{what} did not listen on 127.0.0.1:{port} in {timeout:.0f} s")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- S3: moto ---------------------------------------------------------------------------


def moto_missing() -> str | None:
    """Why moto's server cannot run here, or None."""
    try:
        import flask  # noqa: F401  (moto[server] needs it)
        import moto.server  # noqa: F401
    except ImportError as err:
        return f"moto's S3 server is not installed ({err}): pip install -e '.[dev]'"
    return None


@dataclass
class MotoServer:
    """A running moto S3 server: ``endpoint_url``, its request log, ``stop()``."""

    endpoint_url: str
    proc: subprocess.Popen[bytes]
    root: Path
    log: Path

    #: Credentials moto accepts (any are); the tests export them.
    key: str = "xchm-test-key"
    secret: str = "xchm-test-secret"
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point every S3 client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": self.region,
        }

    def client(self):  # noqa: ANN201 (botocore client)
        """A botocore S3 client of this server (for fixtures: buckets, raw objects)."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )

    def create_bucket(self, name: str) -> str:
        """Create a bucket; returns ``s3://name``."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def requests(self) -> list[Request]:
        """Every request answered so far, in order."""
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            match = _MOTO_LINE.search(line)
            if match:
                found.append(Request(match[1], match[2], int(match[3])))
        return found

    def stop(self) -> None:
        """Stop the server and delete its folder."""
        _stop(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


def start_moto(*, timeout: float = 60.0) -> MotoServer:
    """Start moto's S3 server on a free port of 127.0.0.1.

    Raises
    ------
    ServerUnavailable
        moto is not installed, or the server did not come up (the message has its log).
    """
    missing = moto_missing()
    if missing:
        raise ServerUnavailable(missing)
    root = Path(tempfile.mkdtemp(prefix="xchm-moto-"))
    log = root / "moto.log"
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=root,
        )
    server = MotoServer(f"http://127.0.0.1:{port}", proc, root, log)
    try:
        _wait_port(port, proc, log, "moto's S3 server", timeout)
    except BaseException:
        server.stop()
        raise
    return server


def close_s3_clients() -> None:
    """Close the HTTP sessions of every cached s3fs filesystem, then drop them.

    zarr's ``FsspecStore`` (and ``xr.open_zarr("s3://...")``) make s3fs filesystems with
    ``asynchronous=True``, which nothing closes: dropped, they warn "Unclosed client
    session" (an error under pytest's ``-W error``). Their clients live on zarr's
    event loop, so they are closed there. Call it where a test's S3 use ends.
    """
    import s3fs
    from zarr.core.sync import sync

    for fs in list(s3fs.S3FileSystem._cache.values()):
        creator = getattr(fs, "_s3creator", None)
        if fs.asynchronous and creator is not None:
            with contextlib.suppress(Exception):
                if hasattr(creator, "__aexit__"):
                    sync(creator.__aexit__(None, None, None))
                elif hasattr(creator, "clear"):
                    sync(creator.clear())
            fs._s3creator = fs._s3 = None
    s3fs.S3FileSystem.clear_instance_cache()


# -- HTTP: nginx ------------------------------------------------------------------------

NGINX = "/usr/sbin/nginx"

_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    log_format xchm '$request_method $request_uri $status range=$http_range bytes=$body_bytes_sent';
    access_log {root}/access.log xchm;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {serve};
        autoindex off;
        merge_slashes off;
    }}
}}
"""


def nginx_missing() -> str | None:
    """Why nginx cannot run here, or None."""
    if not (Path(NGINX).exists() or shutil.which("nginx")):
        return (
            "nginx is not installed: run scripts/install_storage_test_deps.sh as root "
            "(make test does when run as root)"
        )
    return None


@dataclass
class NginxServer:
    """A running nginx serving ``folder`` at ``url`` (range requests honoured)."""

    url: str
    folder: Path
    proc: subprocess.Popen[bytes]
    root: Path

    @property
    def access_log(self) -> Path:
        """The access log (one line per request: method, URI, status, range, bytes)."""
        return self.root / "access.log"

    def requests(self) -> list[Request]:
        """Every request answered so far, in order."""
        if not self.access_log.exists():
            return []
        found = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            match = _NGINX_LINE.match(line)
            if match:
                rng = "" if match[4] == "-" else match[4]
                found.append(Request(match[1], match[2], int(match[3]), rng, int(match[5])))
        return found

    def stop(self) -> None:
        """Stop nginx and delete its own folder (not the served one)."""
        _stop(self.proc, signal.SIGQUIT)
        shutil.rmtree(self.root, ignore_errors=True)


def start_nginx(folder: Path, *, timeout: float = 30.0) -> NginxServer:
    """Start nginx on a free port of 127.0.0.1 serving ``folder`` (read only).

    nginx runs in the foreground as one process (``daemon off; master_process off``)
    with its pid, logs and temporary folders in a folder of its own, so it needs no
    root and touches nothing of the system's nginx.

    Raises
    ------
    ServerUnavailable
        nginx is not installed, or it did not come up (the message has its log).
    """
    missing = nginx_missing()
    if missing:
        raise ServerUnavailable(missing)
    binary = NGINX if Path(NGINX).exists() else str(shutil.which("nginx"))
    root = Path(tempfile.mkdtemp(prefix="xchm-nginx-"))
    port = free_port()
    conf = root / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(root=root, port=port, serve=Path(folder).resolve()))
    log = root / "error.log"
    with open(root / "stderr.log", "wb") as out:
        proc = subprocess.Popen(
            [binary, "-p", str(root), "-e", str(log), "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = NginxServer(f"http://127.0.0.1:{port}", Path(folder), proc, root)
    try:
        _wait_port(port, proc, root / "stderr.log", "nginx", timeout)
    except BaseException:
        server.stop()
        raise
    return server


if __name__ == "__main__":
    served = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    moto_server, nginx_server = start_moto(), start_nginx(served)
    print(
        f"S3 (moto):  {moto_server.endpoint_url}   export "
        + " ".join(f"{k}={v}" for k, v in moto_server.env().items())
    )
    print(f"HTTP (nginx): {nginx_server.url} serving {served.resolve()}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        nginx_server.stop()
        moto_server.stop()
