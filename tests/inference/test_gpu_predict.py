"""Predict's GPU options on CUDA: precision, the folded model, torch.compile, CUDA graphs.

Skipped without CUDA (``pytest -m gpu`` on a GPU machine; benchmarks/gpu_check.sh runs
them). The comparisons use ``responsive_model`` (heights vary by metres), so a path that
returned a constant or another window's heights would fail.
"""

import numpy as np
import pytest
import torch
import xarray as xr

import xchm
from xchm.inference.runtime import autocast_dtype
from xchm.inference.telemetry import collect
from xchm.testing import responsive_model

from ..models.test_gpu import assert_close_under_bf16

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def model():
    return responsive_model()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    image = xr.DataArray(
        rng.integers(0, 6000, (3, 300, 260)).astype("uint16"),
        dims=("band", "y", "x"),
        coords={"band": ["nir", "red", "green"]},
    ).rio.write_crs("EPSG:32617")
    return image.chunk({"y": 150, "x": 130})


@pytest.fixture(scope="module")
def cpu_fp32(model, image):
    return xchm.predict(image, model, device="cpu", precision="fp32").values


def test_auto_is_bf16_on_cuda():
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16"])
def test_predict__reduced_precision_on_cuda_is_close_to_fp32(model, image, cpu_fp32, precision):
    got = xchm.predict(image, model, device="cuda", precision=precision).values
    assert_close_under_bf16(got, cpu_fp32)


def test_predict__fp32_on_cuda_matches_cpu(model, image, cpu_fp32):
    got = xchm.predict(image, model, device="cuda", precision="fp32").values
    diff = np.abs(got - cpu_fp32)  # cuDNN may use TF32 for fp32 convolutions
    assert float(diff.mean()) < 0.05 and float(diff.max()) < 0.5


def test_predict__bf16_on_cuda_is_chunk_invariant(model, image):
    one = xchm.predict(image.chunk({"y": -1, "x": -1}), model, device="cuda").values
    many = xchm.predict(image.chunk({"y": 100, "x": 90}), model, device="cuda").values
    np.testing.assert_allclose(many, one, atol=1e-3, rtol=0)


@pytest.mark.parametrize("mode", [True, "reduce-overhead"])
def test_predict__compiled_on_cuda_matches_eager(model, image, mode):
    eager = xchm.predict(image, model, device="cuda", batch_size=64).values
    with collect() as tally:
        compiled = xchm.predict(image, model, device="cuda", batch_size=64, compile=mode).values
    assert tally["windows"] > 0
    assert_close_under_bf16(compiled, eager)
    np.testing.assert_allclose(compiled, eager, atol=0.05, rtol=0)


def test_predict__cuda_with_nodata_skips_and_reports(model, image):
    data = image.values.copy()
    data[:, :150] = 0
    holed = image.copy(data=data)
    with collect() as tally:
        chm = xchm.predict(holed, model, device="cuda", nodata=0).values
    assert tally["windows_skipped"] > 0
    assert np.isnan(chm[:150]).all() and np.isfinite(chm[150:]).all()
