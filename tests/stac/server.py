"""A real STAC API on loopback for the tests: PostgreSQL + PostGIS + pgstac + stac-fastapi.

``start()`` creates a throw-away PostgreSQL cluster in a temporary directory (initdb
and pg_ctl run as the ``postgres`` user through ``runuser`` when we are root, because
initdb refuses root, and CI runs as root), listening on a free port of 127.0.0.1 only,
runs the pypgstac migrations, and starts stac-fastapi-pgstac under uvicorn on another
free port of 127.0.0.1 (the package's own ``run()`` binds 0.0.0.0, so it is not used).
``StacServer.stop()`` stops both and removes the directory.

Run it by hand to poke at the API::

    .venv/bin/python tests/stac/server.py      # prints the URL; Ctrl-C (or SIGTERM) stops it

The Debian packages come from ``scripts/install_stac_test_deps.sh``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PG_VERSION = "15"
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")
POSTGIS_CONTROL = Path(f"/usr/share/postgresql/{PG_VERSION}/extension/postgis.control")
DATABASE = "stac"


class ServerUnavailable(RuntimeError):
    """The STAC test server could not be started (the message says why)."""


def missing_packages() -> list[str]:
    """Debian packages the server needs that are not installed (empty if all are)."""
    missing = []
    if not (PG_BIN / "initdb").exists():
        missing.append(f"postgresql-{PG_VERSION}")
    if not POSTGIS_CONTROL.exists():
        missing.append(f"postgresql-{PG_VERSION}-postgis-3")
    return missing


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    """Run ``cmd`` as the postgres user when we are root (initdb refuses root)."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        raise ServerUnavailable(
            f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n"
            f"{done.stdout[-2000:]}{done.stderr[-2000:]}{tail}"
        )


@dataclass
class StacServer:
    """A running STAC API (``url``) backed by its own PostgreSQL cluster (``dsn``)."""

    url: str
    dsn: str
    root: Path
    pg_data: Path
    api: subprocess.Popen[bytes] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def load(self, collections: Iterable[dict[str, Any]], items: Iterable[dict[str, Any]]) -> None:
        """Insert collections and items (STAC dicts) with pypgstac's loader."""
        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader, Methods

        with PgstacDB(dsn=self.dsn) as db:
            loader = Loader(db=db)
            loader.load_collections(iter(list(collections)), insert_mode=Methods.upsert)
            loader.load_items(iter(list(items)), insert_mode=Methods.upsert)

    def get(self, path: str) -> dict[str, Any]:
        """GET a JSON document from the API."""
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return dict(json.load(response))

    def stop(self) -> None:
        """Stop the API and the database and delete the data directory."""
        if self.api is not None and self.api.poll() is None:
            self.api.send_signal(signal.SIGTERM)
            try:
                self.api.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait(timeout=10)
        if (self.pg_data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres(
                    [str(PG_BIN / "pg_ctl"), "-D", str(self.pg_data), "-m", "immediate", "stop"]
                ),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(self.root, ignore_errors=True)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerUnavailable(
                f"the STAC API exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise ServerUnavailable(f"the STAC API did not answer at {url} within {timeout:.0f} s")


def start(*, api_timeout: float = 60.0) -> StacServer:
    """Start PostgreSQL + PostGIS + pgstac + stac-fastapi-pgstac on 127.0.0.1.

    Raises
    ------
    ServerUnavailable
        A Debian package is missing or a step failed (the message has the logs).
    """
    missing = missing_packages()
    if missing:
        raise ServerUnavailable(
            f"Debian packages missing: {', '.join(missing)}; run scripts/install_stac_test_deps.sh"
        )
    # Not under pytest's tmp_path: its parents are private to root, and the postgres
    # user must be able to enter the data directory.
    root = Path(tempfile.mkdtemp(prefix="xchm-stac-"))
    root.chmod(0o755)
    pg_data, sockets = root / "pgdata", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    dsn = f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"
    server = StacServer(url="", dsn=dsn, root=root, pg_data=pg_data)
    try:
        t0 = time.perf_counter()
        _run(
            _as_postgres(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(pg_data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            ),
            "initdb",
        )
        log = root / "postgres.log"
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        if os.geteuid() == 0:
            log.touch()
            shutil.chown(log, "postgres")
        _run(
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(pg_data), "-o", options, "-l", str(log)]
                + ["-w", "-t", "60", "start"]
            ),
            "pg_ctl start",
            log,
        )
        _run(
            [
                str(PG_BIN / "psql"),
                f"postgresql://postgres@127.0.0.1:{port}/postgres",
                "-q",
                "-c",
                f"CREATE DATABASE {DATABASE}",
            ],
            "CREATE DATABASE",
        )
        server.timings["postgres_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        from pypgstac.db import PgstacDB
        from pypgstac.migrate import Migrate

        with PgstacDB(dsn=dsn) as db:
            Migrate(db).run_migration()
        server.timings["migrate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        api_port = free_port()
        env = {
            **os.environ,
            "PGUSER": "postgres",
            "PGPASSWORD": "unused",  # trust authentication on loopback
            "PGHOST": "127.0.0.1",
            "PGPORT": str(port),
            "PGDATABASE": DATABASE,
            "DB_MIN_CONN_SIZE": "1",
            "DB_MAX_CONN_SIZE": "4",
        }
        api_log = root / "api.log"
        with api_log.open("wb") as out:
            # cwd=root: the settings read a .env file from the working directory.
            server.api = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app"]
                + ["--factory", "--host", "127.0.0.1", "--port", str(api_port)]
                + ["--log-level", "warning", "--no-access-log"],
                cwd=root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server.url = f"http://127.0.0.1:{api_port}"
        _wait_http(server.url + "/_mgmt/ping", server.api, api_log, api_timeout)
        server.timings["api_s"] = time.perf_counter() - t0
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running() -> Iterator[StacServer]:
    """``start()`` as a context manager."""
    server = start()
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":  # pragma: no cover - manual use

    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM too: stop the API and the database on the way out

    signal.signal(signal.SIGTERM, _interrupt)
    with running() as srv:
        print(f"STAC API at {srv.url} (database {srv.dsn}); timings {srv.timings}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)
