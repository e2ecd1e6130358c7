"""Pretraining on CUDA with bf16 autocast; skipped without a GPU (pytest -m gpu).

Finite losses alone pass for a run that learns nothing (say, gradients lost under
autocast): the run must lower the DINO loss clearly more than a control whose student
barely moves (as the CPU test does), and the saved backbone must be the trained one,
giving on the GPU the features it gives on the CPU.
"""

import pytest
import torch

import xchm
import xchm.chips
from xchm.models.backbone import backbone_features
from xchm.pretraining import PretrainConfig, pretrain

from ..models.test_gpu import assert_close_under_bf16
from .test_pretrain import SMALL

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    """An unlabeled cube of a varied synthetic landscape (as in test_pretrain)."""
    from xchm.datasets import synthetic_landscape

    scene = synthetic_landscape(512, seed=3, nodata_edge=False)
    return xchm.chips.build(
        [scene["image"]],
        tmp_path_factory.mktemp("u") / "u.zarr",
        bands=("nir", "red", "green"),
        split_by="random",
        fractions={"train": 1.0},
        progress=False,
    )


def test_pretrain__cuda_bf16_lowers_the_loss_and_the_backbone_loads(unlabeled, tmp_path):
    cfg = PretrainConfig(**{**SMALL, "epochs": 6, "lr": 2e-3, "warmup_epochs": 0.5})
    assert cfg.mixed_precision  # bf16 autocast on CUDA
    run = pretrain(
        unlabeled,
        model="test-tiny",
        config=cfg,
        output=tmp_path / "a",
        device="cuda",
        progress=False,
    )
    still = pretrain(
        unlabeled,
        model="test-tiny",
        config=PretrainConfig(**{**cfg.to_dict(), "lr": 1e-9, "min_lr": 1e-9}),
        output=tmp_path / "b",
        device="cuda",
        progress=False,
    )
    losses = [r["loss"] for r in run.history]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0] - 0.2, losses
    assert losses[-1] < still.history[-1]["loss"] - 0.2, (losses, still.history[-1]["loss"])

    # The saved backbone is the trained one: it moved away from test-tiny's start...
    start = xchm.load_model("test-tiny").backbone.state_dict()
    model = xchm.load_model("test-tiny", weights=run.backbone)
    trained = model.backbone.state_dict()
    moved = [k for k in start if k in trained and not torch.equal(start[k], trained[k])]
    assert len(moved) > 10, moved
    # ...and gives on the GPU (bf16) the features it gives on the CPU.
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cpu = backbone_features(model.backbone, x, [3])[0]
        gpu_backbone = model.backbone.to("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gpu = backbone_features(gpu_backbone, x.to("cuda"), [3])[0].float().cpu()
    assert_close_under_bf16(gpu, cpu, min_spread=0.1)
