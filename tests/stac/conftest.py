"""Fixtures: a real STAC API on 127.0.0.1 (session), its test items, a fault proxy.

The server is PostgreSQL + PostGIS + pgstac + stac-fastapi-pgstac (see server.py),
loaded with the collections of data.py (local COGs written here). Without the Debian
packages the STAC tests skip with the reason, except in CI (``CI`` set), where they
fail: CI installs the packages (scripts/install_stac_test_deps.sh). Any other failure
to start the server fails the tests, everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.stac import data, proxy, server


@dataclass
class Catalog:
    """The running test catalog."""

    url: str
    items: list[dict[str, Any]]
    root: Path
    server: server.StacServer

    def ids(self, collection: str = data.COLLECTION) -> set[str]:
        """Ids of the loaded items of a collection."""
        return {i["id"] for i in self.items if i["collection"] == collection}


@pytest.fixture(scope="session")
def stac(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    missing = server.missing_packages()
    if missing:
        reason = (
            f"the STAC tests need the Debian packages {', '.join(missing)}: run "
            "scripts/install_stac_test_deps.sh as root (make test does when run as root)"
        )
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"CI must run the STAC tests, but {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("stac-cogs")
    collections, items = data.build(root)
    try:
        srv = server.start()
    except server.ServerUnavailable as err:
        pytest.fail(f"the STAC test server did not start: {err}")
    try:
        srv.load(collections, items)
        yield Catalog(url=srv.url, items=items, root=root, server=srv)
    finally:
        srv.stop()


@pytest.fixture
def faulty(stac: Catalog) -> Iterator[proxy.Proxy]:
    """A fault-injecting proxy in front of the test server (fresh per test)."""
    p = proxy.Proxy(stac.url).start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def closed_url() -> str:
    """The URL of a stopped server: a port of 127.0.0.1 nobody listens on."""
    return f"http://127.0.0.1:{server.free_port()}"
