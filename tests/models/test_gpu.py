"""GPU checks; skipped without CUDA (run them on a GPU machine: pytest -m gpu)."""

import pytest
import torch

import xchm

pytestmark = pytest.mark.gpu


def test_forward__cuda_bf16_autocast_matches_cpu():
    model = xchm.load_model("test-tiny", multilevel=True)
    x = torch.randn(8, 3, 64, 64)
    with torch.inference_mode():
        expected = model(x)
        gpu = model.to("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = gpu(x.to("cuda")).float().cpu()
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=0.1, rtol=0.02)


def test_save_load__from_cuda_model(tmp_path):
    model = xchm.load_model("test-tiny").to("cuda")
    model.save(tmp_path / "ckpt")
    again = xchm.load_model(tmp_path / "ckpt").to("cuda")
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.inference_mode():
        assert torch.equal(model(x), again(x))


def test_predict__cuda_matches_cpu():
    import numpy as np
    import xarray as xr

    from xchm.testing import responsive_model

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
    np.testing.assert_allclose(gpu, cpu, atol=0.5, rtol=0.05)  # bf16 autocast on CUDA
