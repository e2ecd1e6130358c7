"""A Dask cluster that shares nothing with the client but the network.

The scheduler and two workers are started with the ``dask scheduler`` / ``dask worker``
commands as separate processes, running as another unprivileged user (``nobody``)
that cannot read the client's files (pytest's temporary folders are mode 700), each
worker with its own empty HOME and working directory. Imagery, checkpoint and output
live only in the S3 server. Any hidden dependence on a shared file system (a local
path in a task, a file the client writes for the workers, a model saved to /tmp)
fails here. The run: COG in S3 -> ``predict_to_zarr`` to S3 on that cluster -> one
worker killed mid-run -> rerun -> the store equals the local single-process result.

Switching users needs root (CI runs as root); elsewhere the test skips, except under
CI, where it fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

import xchm
from tests import servers
from tests.storage_fixtures import write_cog
from xchm.inference.rasters import open_image
from xchm.storage import location

NOBODY = 65534
DASK = Path(sys.executable).with_name("dask")


def _as_nobody(command: list[str], home: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``command`` as uid/gid 65534 in its own session, with only ``env``."""
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command],
            env={**env, "HOME": str(home), "PATH": os.environ["PATH"]},
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@contextlib.contextmanager
def _cluster(aws: dict[str, str], workers: int) -> Iterator[tuple[object, list[subprocess.Popen]]]:
    """Scheduler + workers as ``nobody``, each worker in its own empty HOME; yields a Client."""
    from distributed import Client

    root = Path(tempfile.mkdtemp(prefix="xchm-shared-nothing-"))
    root.chmod(0o755)
    port = servers.free_port()
    env = {**aws, "OMP_NUM_THREADS": "1", "XCHM_TORCH_THREADS": "1"}
    procs: list[subprocess.Popen] = []
    homes = []
    for name in ["scheduler", *(f"worker-{i}" for i in range(workers))]:
        home = root / name
        home.mkdir(mode=0o700)
        os.chown(home, NOBODY, NOBODY)
        homes.append(home)
    try:
        procs.append(
            _as_nobody(
                [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port)]
                + ["--no-dashboard", "--no-show"],
                homes[0],
                env,
                root / "scheduler.log",
            )
        )
        address = f"tcp://127.0.0.1:{port}"
        for i, home in enumerate(homes[1:]):
            procs.append(
                _as_nobody(
                    [str(DASK), "worker", address, "--host", "127.0.0.1", "--nthreads", "1"]
                    + ["--name", f"worker-{i}", "--local-directory", str(home / "dask")]
                    + ["--no-nanny", "--no-dashboard", "--death-timeout", "60"],
                    home,
                    env,
                    root / f"worker-{i}.log",
                )
            )
        client = Client(address, timeout=60)
        try:
            client.wait_for_workers(workers, timeout=120)
            yield client, procs[1:]
        finally:
            client.close()
    except BaseException:
        for log in sorted(root.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        for proc in reversed(procs):
            _kill(proc)
        subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture
def as_root():
    if os.geteuid() != 0:
        servers.unavailable("the shared-nothing cluster test switches users: it needs root")


def _chunks(s3, prefix: str) -> dict[str, bytes]:
    """The chm array's objects in the store (chunks and metadata) by key."""
    client = s3.server.client()
    listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix}/chm/")
    return {o["Key"][len(prefix) :]: s3.get(o["Key"]) for o in listed.get("Contents", [])}


# The processes run the same interpreter and site-packages, but as another user the
# interpreter may load the system's libpython (a patch release apart): Dask then warns.
@pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning")
def test_shared_nothing_cluster__killed_worker_then_rerun_equals_local(
    as_root, s3, aws_env, tmp_path
):
    # Everything the workers need is in the store; the client's folder is mode 700.
    assert os.stat(tmp_path).st_mode & 0o777 == 0o700 or not os.access(
        tmp_path, os.R_OK, effective_ids=False
    )
    cog = write_cog(tmp_path / "scene.tif", size=768, seed=3)
    s3.put("imagery/scene.tif", cog.read_bytes())
    model = xchm.load_model("test-tiny", pixel_size=0.5)  # the COG has 0.5 m pixels
    model.save(f"{s3.url}/models/chm")
    image_url, model_url, output = (
        f"{s3.url}/imagery/scene.tif",
        f"{s3.url}/models/chm",
        f"{s3.url}/maps/chm.zarr",
    )
    options = dict(region_size=128, bands={"nir": 4, "red": 3, "green": 2}, progress=False)

    # The reference: this process alone, local disk.
    local = xchm.predict_to_zarr(
        open_image(cog, chunks=128), model, tmp_path / "local.zarr", **options
    )

    with _cluster(aws_env, workers=2) as (client, workers):
        seen = client.run(lambda: (os.geteuid(), os.access(str(tmp_path), os.R_OK)))
        assert all(uid == NOBODY and not readable for uid, readable in seen.values())

        failure: list[BaseException] = []

        def run() -> None:
            try:
                xchm.predict_to_zarr(
                    open_image(image_url, chunks=128), model_url, output, **options
                )
            except BaseException as err:  # noqa: BLE001 - reported below
                failure.append(err)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 300
        while not any(k.startswith("/chm/c/") for k in _chunks(s3, "maps/chm.zarr")):
            assert thread.is_alive() and time.monotonic() < deadline, failure
            time.sleep(0.2)
        _kill(workers[0])  # worker and nanny: its running tasks are lost
        root = zarr.open_group(location(output).zarr_store(read_only=True), mode="r")
        killed_mid_run = root.attrs.get("xchm_status") != "complete"
        thread.join(timeout=600)
        assert not thread.is_alive()
        # The survivor may finish the job, or Dask may give up on the lost tasks; either
        # way a rerun with the same arguments finishes the same store.
        ds = xchm.predict_to_zarr(open_image(image_url, chunks=128), model_url, output, **options)
    assert killed_mid_run
    assert ds.attrs["xchm_status"] == "complete"
    np.testing.assert_array_equal(ds["chm"].values, local["chm"].values)
    assert ds["chm"].rio.crs == local["chm"].rio.crs
    local_chunks = {
        "/chm/" + str(p.relative_to(tmp_path / "local.zarr" / "chm")): p.read_bytes()
        for p in sorted((tmp_path / "local.zarr" / "chm").rglob("*"))
        if p.is_file()
    }
    assert _chunks(s3, "maps/chm.zarr") == local_chunks
