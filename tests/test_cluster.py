"""Predictions on a real distributed LocalCluster with worker processes."""

import os
import pickle
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import zarr

import xchm
import xchm.cluster
from xchm.errors import MissingDependencyError, ModelNotFoundError, XCHMWarning
from xchm.inference.to_zarr import PROGRESS_GROUP

from .inference.conftest import make_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from xchm.testing import responsive_model

    path = tmp_path_factory.mktemp("cluster") / "model"
    responsive_model().save(path)
    return path


@pytest.fixture(scope="module")
def client():
    with xchm.cluster.start(
        gpus=None, n_workers=2, threads_per_worker=1, dashboard_address=None, quiet=True
    ) as c:
        yield c


def test_start__cpu_workers_get_their_share_of_cores_as_torch_threads(client):
    workers = client.scheduler_info()["workers"]
    assert len(workers) == 2 and all(w["nthreads"] == 1 for w in workers.values())
    cores = len(os.sched_getaffinity(0))
    threads = client.run(lambda: os.environ[xchm.cluster.TORCH_THREADS_ENV])
    assert set(threads.values()) == {str(max(1, cores // 2))}


def _torch_threads_after_use():
    import threading

    import torch

    from xchm.inference.runtime import use_cpu_threads

    before = torch.get_num_threads()
    use_cpu_threads()
    return threading.current_thread().name, before, torch.get_num_threads()


def test_use_cpu_threads__applies_in_every_worker_thread():
    # Nanny workers run with OMP_NUM_THREADS=1, where torch's thread count is per thread:
    # each executor thread must be set, not only the one that loaded the model.
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            env={xchm.cluster.TORCH_THREADS_ENV: "2"},
        ) as cluster,
        Client(cluster, set_as_default=False) as own,
    ):
        results = own.gather([own.submit(_torch_threads_after_use, pure=False) for _ in range(8)])
    assert {before for _, before, _ in results} >= {1}  # what the nanny's setting gives
    assert {after for _, _, after in results} == {2}


def test_start__reuses_an_active_client_instead_of_starting_a_cluster(client):
    with pytest.warns(XCHMWarning, match="already active"):
        again = xchm.cluster.start(gpus=None)
    assert again is client


def test_start__gpus_without_dask_cuda_names_the_extra():
    pytest.importorskip("distributed")
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("dask-cuda is installed here")
    with pytest.raises(MissingDependencyError, match=r"xchm\[gpu\]"):
        xchm.cluster.start(gpus=1)


def test_predict__on_the_cluster_equals_the_local_result(client, checkpoint):
    image = make_image(300, 260)
    lazy = xchm.predict(image.chunk({"y": 128, "x": 128}), checkpoint)
    on_cluster = client.compute(lazy.data).result()
    np.testing.assert_allclose(on_cluster, xchm.predict(image, checkpoint).values, atol=1e-4)


def test_predict__graph_stays_small_with_a_large_model(tmp_path, checkpoint):
    with pytest.warns(xchm.RandomWeightsWarning):
        big = xchm.load_model("dinov3-vits16")
    big.save(tmp_path / "vits")
    weights = (tmp_path / "vits" / "model.safetensors").stat().st_size
    image = make_image(512, 512).chunk({"y": 128, "x": 128})

    def graph_bytes(model):
        return len(pickle.dumps(dict(xchm.predict(image, model).__dask_graph__())))

    # The graph holds the image (1.5 MB here) and, per task, a path + hash, never weights:
    # a 160 MB model and a 1 MB one give graphs of the same size.
    big_graph, tiny_graph = graph_bytes(tmp_path / "vits"), graph_bytes(checkpoint)
    assert weights > 50e6 and abs(big_graph - tiny_graph) < 10_000


def test_predict_to_zarr__span_and_metrics_reach_the_dashboard(client, checkpoint, tmp_path):
    image = make_image(256, 256).chunk({"y": 128, "x": 128})
    xchm.predict_to_zarr(image, checkpoint, tmp_path / "chm.zarr", region_size=128)
    scheduler = client.cluster.scheduler
    spans = {s.name for s in scheduler.extensions["spans"].spans.values()}
    assert ("xchm.predict",) in spans
    metrics = scheduler.cumulative_worker_metrics
    windows = sum(v for k, v in metrics.items() if "xchm-windows" in k)
    model_s = sum(v for k, v in metrics.items() if "xchm-model" in k)
    assert windows >= 36 and model_s > 0  # 6 x 6 lattice windows at least (halos add some)


def test_predict__worker_that_cannot_read_the_model_says_so(client, checkpoint, tmp_path):
    moved = tmp_path / "model"
    shutil.copytree(checkpoint, moved)
    lazy = xchm.predict(make_image(128, 128).chunk({"y": 64, "x": 64}), moved)
    shutil.rmtree(moved)  # the graph names a path the workers cannot see any more
    with pytest.raises(ModelNotFoundError, match=r"cannot be read by Dask worker.*shared file"):
        client.compute(lazy.data).result()


def test_predict_to_zarr__killed_worker_does_not_change_the_output(client, checkpoint, tmp_path):
    image = make_image(512, 512).chunk({"y": 64, "x": 64})
    store = tmp_path / "chm.zarr"
    pids = set(client.run(os.getpid).values())
    killed: list[int] = []

    def kill_one_worker_mid_run():
        done = store / PROGRESS_GROUP / "done" / "zarr.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if done.exists() and np.asarray(zarr.open_array(done.parent, mode="r")[...]).sum() >= 2:
                pid = sorted(pids)[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_worker_mid_run)
    killer.start()
    ds = xchm.predict_to_zarr(image, checkpoint, store, region_size=64, in_flight=4)
    killer.join()
    assert killed, "the run ended before a worker could be killed"
    assert np.asarray(zarr.open_array(store / PROGRESS_GROUP / "done", mode="r")[...]).all()
    expected = xchm.predict(make_image(512, 512), checkpoint).values
    np.testing.assert_allclose(ds["chm"].values, expected, rtol=1e-5, atol=1e-4)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    assert killed[0] not in set(client.run(os.getpid).values())


def test_predict_cli__cog_through_a_scheduler_address(client, checkpoint, tmp_path):
    import rasterio

    from xchm.cli import main

    image = make_image(300, 260).assign_coords(band=[1, 2, 3])
    image.attrs["long_name"] = ("NIR", "Red", "Green")
    image.rio.to_raster(tmp_path / "scene.tif")
    out = tmp_path / "chm.tif"
    address = client.scheduler.address
    args = ["predict", str(tmp_path / "scene.tif"), "-o", str(out), "--model", str(checkpoint)]
    assert main([*args, "--chunks", "128", "--scheduler", address, "-q"]) == 0
    with rasterio.open(out) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_allclose(
            cog.read(1), xchm.predict(make_image(300, 260), checkpoint).values, atol=1e-4
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chm.tif", "scene.tif"]
