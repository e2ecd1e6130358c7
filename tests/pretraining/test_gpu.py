"""Pretraining on CUDA with bf16 autocast; skipped without a GPU (pytest -m gpu)."""

import pytest
import torch

import xchm
import xchm.chips
from xchm.pretraining import PretrainConfig, pretrain

from ..training.test_trainer import _learnable_scene

pytestmark = pytest.mark.gpu


def test_pretrain__cuda_bf16_steps_are_finite_and_the_backbone_loads(tmp_path):
    img, _ = _learnable_scene(384)
    cube = xchm.chips.build(
        [img], tmp_path / "u.zarr", bands=("nir", "red", "green"), progress=False
    )
    cfg = PretrainConfig(
        epochs=2, batch_size=8, out_dim=256, max_steps_per_epoch=3, koleo_weight=0.1
    )
    run = pretrain(
        cube, model="test-tiny", config=cfg, output=tmp_path / "r", device="cuda", progress=False
    )
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in run.history)
    model = xchm.load_model("test-tiny", weights=run.backbone).to("cuda")
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 64, 64, device="cuda")).isfinite().all()
