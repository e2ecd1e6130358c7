"""Everything xchm.cluster.start() starts listens on 127.0.0.1 unless told otherwise.

Checked on the sockets the processes really listen on (this process and its nanny
and worker processes), not on the printed link.
"""

import os
from urllib.parse import urlparse

import psutil
import pytest

import xchm.cluster
from xchm.cluster import _on_host
from xchm.errors import InputError

from .sockets import listening, not_loopback


@pytest.mark.slow
@pytest.mark.parametrize("dashboard_address", [":0", None], ids=["dashboard-port-only", "none"])
def test_start__every_listening_socket_is_on_loopback(dashboard_address):
    before = listening()
    with xchm.cluster.start(
        gpus=None,
        n_workers=1,
        threads_per_worker=1,
        dashboard_address=dashboard_address,
        quiet=True,
    ) as client:
        workers = client.scheduler_info()["workers"]
        opened = listening() - before
        worker_pids = set(client.run(os.getpid).values())
        assert worker_pids <= {p.pid for p in psutil.Process().children(recursive=True)}
        scheduler_port = urlparse(client.scheduler.address).port
        dashboard_port = urlparse(client.dashboard_link).port
    ports = {port for _, port in opened}
    # Not vacuous: the scheduler, the dashboard (HTTP server), worker and nanny are among them.
    assert {scheduler_port, dashboard_port} <= ports
    assert {urlparse(w).port for w in workers} <= ports
    assert len(opened) >= 5, opened
    assert not not_loopback(opened), f"listening beyond this machine: {not_loopback(opened)}"


def test_on_host__a_port_alone_gets_the_host_an_address_is_kept():
    assert _on_host(":8787", "127.0.0.1") == "127.0.0.1:8787"
    assert _on_host(8787, "127.0.0.1") == "127.0.0.1:8787"
    assert _on_host(":0", "0.0.0.0") == "0.0.0.0:0"
    assert _on_host(":0", "::1") == "[::1]:0"
    assert _on_host("0.0.0.0:8787", "127.0.0.1") == "0.0.0.0:8787"  # asked for explicitly
    assert _on_host("localhost:9000", "127.0.0.1") == "localhost:9000"


@pytest.mark.parametrize("host", ["", "tcp://127.0.0.1", 5])
def test_start__bad_host_is_an_input_error(host):
    with pytest.raises(InputError, match="host must be"):
        xchm.cluster.start(gpus=None, host=host)
