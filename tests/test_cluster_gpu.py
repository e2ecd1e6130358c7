"""LocalCUDACluster predictions (run where CUDA and dask-cuda are present).

A module of its own: tests/test_cluster.py keeps a CPU client active for its whole
module, and xchm.cluster.start reuses an active client instead of starting one.
dask-cuda comes with the ``gpu`` extra; without it the test skips, except under
``XCHM_GPU_CHECK=1`` (set by benchmarks/gpu_check.sh), where it fails.
"""

import os

import pytest

import xchm
import xchm.cluster

from .inference.conftest import make_image
from .models.test_gpu import assert_close_under_bf16

pytestmark = [pytest.mark.slow, pytest.mark.gpu]


def _require_dask_cuda() -> None:
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        reason = "dask-cuda is not installed: pip install 'xchm[gpu]'"
        if os.environ.get("XCHM_GPU_CHECK", "").lower() not in ("", "0", "false"):
            pytest.fail(f"the GPU check must run the LocalCUDACluster test, but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from xchm.testing import responsive_model

    path = tmp_path_factory.mktemp("cluster_gpu") / "model"
    responsive_model().save(path)
    return path


def test_start__local_cuda_cluster_predicts_on_gpu(checkpoint):
    _require_dask_cuda()
    image = make_image(256, 256)
    with xchm.cluster.start(gpus="auto", dashboard_address=None, quiet=True) as gpu_client:
        n = len(gpu_client.scheduler_info()["workers"])
        assert n >= 1
        on_gpu = gpu_client.compute(
            xchm.predict(image.chunk({"y": 128, "x": 128}), checkpoint).data
        ).result()
    # bf16 autocast on CUDA against the fp32 CPU result of a model whose heights vary
    # (about 2.7 m of spread here): a wrong window, chunk or model would fail.
    cpu = xchm.predict(image, checkpoint, device="cpu").values
    assert_close_under_bf16(on_gpu, cpu)
