"""GPU checks; skipped without CUDA (run them on a GPU machine: pytest -m gpu).

Every comparison uses a model whose output varies with its input (``responsive_model``:
about 2.5 m of spread on random input; an untrained test-tiny outputs its 8.42 m bias
everywhere, so comparing two of those only catches a crash). ``assert_close_under_bf16``
checks that the reference varies, so a test of a constant cannot pass.
"""

import numpy as np
import pytest
import torch

import xchm
from xchm.testing import responsive_model

pytestmark = pytest.mark.gpu


def assert_close_under_bf16(got, expected, *, min_spread=1.0):
    """``got`` (bf16 autocast on CUDA) matches the fp32 CPU ``expected``; a wrong result fails.

    The reference must vary (standard deviation > ``min_spread``). bf16 rounding moves
    values by about 1/30 of that spread on average (measured with CPU bf16 autocast on
    responsive_model: mean 0.08 m for a 2.4 m spread, correlation 0.999); another
    sample, a shifted window or other weights move them by about the spread itself.
    So: mean absolute difference under a tenth of the spread, correlation above 0.99,
    and NaN in the same places.
    """
    got = torch.as_tensor(np.asarray(got, dtype=np.float64)).flatten()
    expected = torch.as_tensor(np.asarray(expected, dtype=np.float64)).flatten()
    assert got.shape == expected.shape
    assert torch.equal(got.isnan(), expected.isnan()), "NaN in other places"
    valid = ~expected.isnan()
    got, expected = got[valid], expected[valid]
    assert got.numel() > 100
    spread = float(expected.std())
    assert spread > min_spread, f"the reference barely varies (std {spread:.3g}): vacuous test"
    mean_diff = float((got - expected).abs().mean())
    assert mean_diff < 0.1 * spread, f"mean |difference| {mean_diff:.3g} for spread {spread:.3g}"
    corr = float(torch.corrcoef(torch.stack([got, expected]))[0, 1])
    assert corr > 0.99, f"correlation {corr:.4f}"


def test_forward__cuda_bf16_autocast_matches_cpu():
    model = responsive_model("test-tiny", multilevel=True)
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x)
        gpu = model.to("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = gpu(x.to("cuda")).float().cpu()
    assert got.shape == expected.shape
    assert_close_under_bf16(got, expected)


def test_save_load__from_cuda_model(tmp_path):
    model = responsive_model().to("cuda")
    model.save(tmp_path / "ckpt")
    again = xchm.load_model(tmp_path / "ckpt").to("cuda")
    fresh = xchm.load_model("test-tiny").to("cuda")  # what a load that lost the weights gives
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to("cuda")
    with torch.inference_mode():
        out, reloaded, lost = model(x), again(x), fresh(x)
    torch.testing.assert_close(reloaded, out, atol=1e-5, rtol=1e-5)
    assert float(out.std()) > 1.0  # the weights decide the output...
    assert float((lost - out).abs().mean()) > 0.5  # ...so a lost load would fail above


def test_predict__cuda_matches_cpu():
    import xarray as xr

    model = responsive_model()
    rng = np.random.default_rng(0)
    image = xr.DataArray(
        rng.integers(0, 6000, (3, 200, 180)).astype("uint16"),
        dims=("band", "y", "x"),
        coords={"band": ["nir", "red", "green"]},
    ).chunk({"y": 100, "x": 90})
    with pytest.warns(xchm.XCHMWarning, match="no CRS"):
        cpu = xchm.predict(image, model, device="cpu").values
    with pytest.warns(xchm.XCHMWarning, match="no CRS"):
        gpu = xchm.predict(image, model, device="cuda").values
    assert_close_under_bf16(gpu, cpu)  # bf16 autocast on CUDA
