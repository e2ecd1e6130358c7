"""LocalCUDACluster predictions (run where CUDA and dask-cuda are present).

A module of its own: tests/test_cluster.py keeps a CPU client active for its whole
module, and xchm.cluster.start reuses an active client instead of starting one.
"""

import numpy as np
import pytest

import xchm
import xchm.cluster

from .inference.conftest import make_image

pytestmark = [pytest.mark.slow, pytest.mark.gpu]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from xchm.testing import responsive_model

    path = tmp_path_factory.mktemp("cluster_gpu") / "model"
    responsive_model().save(path)
    return path


def test_start__local_cuda_cluster_predicts_on_gpu(checkpoint):
    pytest.importorskip("dask_cuda")
    image = make_image(256, 256)
    with xchm.cluster.start(gpus="auto", dashboard_address=None, quiet=True) as gpu_client:
        n = len(gpu_client.scheduler_info()["workers"])
        assert n >= 1
        on_gpu = gpu_client.compute(
            xchm.predict(image.chunk({"y": 128, "x": 128}), checkpoint).data
        ).result()
    # bf16 autocast on CUDA: heights agree with the fp32 CPU result within 0.5 m.
    cpu = xchm.predict(image, checkpoint, device="cpu").values
    np.testing.assert_allclose(on_gpu, cpu, atol=0.5)
