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
