"""Fine-tuning a CHMv2 model on one's own lidar: xchm.train and xchm.evaluate, unchanged.

The head's 256 bins are constants: training moves the weights the head puts on them
(the linear normalisation passes gradients to every positive logit), never the bins.
"""

from __future__ import annotations

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import torch
import xarray as xr

import xchm
import xchm.chips
from xchm.training import TrainConfig, train

FAST = {"batch_size": 8, "lr": 1e-3, "num_workers": 0, "augment": False, "patience": 10}


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    """8-bit RGB at 0.6 m whose heights follow the green brightness (learnable)."""
    size = 256
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    green = 120 + 80 * np.sin(yy / 19.0) * np.cos(xx / 27.0) + rng.normal(0, 5, yy.shape)
    image = np.stack([0.8 * green, green, 0.5 * green]).clip(0, 255).astype("uint8")
    heights = (green / 10.0).astype("float32")
    coords = {"y": 5e6 - 0.6 * (np.arange(size) + 0.5), "x": 4e5 + 0.6 * (np.arange(size) + 0.5)}
    img = xr.DataArray(image, dims=("band", "y", "x"), coords=coords).rio.write_crs("EPSG:32617")
    chm = xr.DataArray(heights, dims=("y", "x"), coords=coords).rio.write_crs("EPSG:32617")
    return xchm.chips.build(
        [xchm.chips.ScenePair(img, chm, scene="rgb")],
        tmp_path_factory.mktemp("cube") / "c.zarr",
        bands=("red", "green", "blue"),
        split_by="block",
        block_size=1,
        fractions={"train": 0.75, "val": 0.25},
        progress=False,
    )


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A CHMv2-shaped checkpoint to fine-tune (random backbone, head spread to vary)."""
    model = xchm.load_model("test-tiny-chmv2")
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    path = tmp_path_factory.mktemp("start") / "chmv2"
    model.save(path)
    return path


def test_train__chmv2_head_learns_on_metres_and_evaluates(cube, start, tmp_path):
    before = xchm.load_model(start)
    result = train(
        cube,
        model="test-tiny-chmv2",
        weights=start,  # its backbone (frozen by the default policy); a new head
        config=TrainConfig(**FAST, epochs=3),
        output=tmp_path / "run",
        progress=False,
    )
    losses = [row["val_loss"] for row in result.history]
    assert min(losses[1:]) < losses[0]
    best = xchm.load_model(result.best_checkpoint)
    assert type(best.decoder).__name__ == "DPTHead"
    assert best.card.bands == ("red", "green", "blue")
    for name, tensor in before.backbone.state_dict().items():  # frozen: only the head moved
        assert torch.equal(best.backbone.state_dict()[name], tensor), name
    report = xchm.evaluate(best, cube, progress=False)
    assert report["mae"] == pytest.approx(result.history[result.best_epoch]["val_mae"], rel=1e-3)


def test_dpt_head__reset_output_starts_near_the_height():
    model = xchm.load_model("test-tiny-chmv2")
    model.decoder.reset_output(12.0)
    with torch.inference_mode():
        heights = model(torch.randn(2, 3, 64, 64))
    assert float((heights - 12.0).abs().max()) < 0.5  # the nearest bin centre: 12.10 m


def test_train__chmv2_checkpoint_fine_tunes_its_own_head(cube, start, tmp_path):
    """model=a CHMv2 checkpoint: its trained head is the starting point (not a new one)."""
    model = xchm.load_model(start)
    image, _ = cube.sel(split="val").read(np.arange(4))
    with torch.inference_mode():
        net_heights = model(torch.from_numpy(model.card.normalize(image, axis=1)))
    result = train(
        cube,
        model=start,
        # None keeps the checkpoint's output layer (a percentile re-initialises it).
        config=TrainConfig(**FAST, epochs=1, max_steps_per_epoch=2, output_bias_percentile=None),
        output=tmp_path / "run",
        progress=False,
    )
    tuned = xchm.load_model(result.best_checkpoint)
    with torch.inference_mode():
        after = tuned(torch.from_numpy(tuned.card.normalize(image, axis=1)))
    assert not torch.equal(after, net_heights)  # it trained
    assert float((after - net_heights).abs().mean()) < 5.0  # from the checkpoint's head


def test_train__chmv2_from_meta_head_and_backbone_files(cube, start, tmp_path):
    """xchm.train(model="chmv2"-like, weights=HEAD, backbone_weights=BACKBONE): Meta's two
    files; the backbone file is part of the run's identity (resume refuses another)."""
    from xchm.errors import ResumeError
    from xchm.testing import export_meta_state_dict

    model = xchm.load_model(start)
    head, backbone = tmp_path / "head.pth", tmp_path / "backbone.pth"
    torch.save(model.decoder.state_dict(), head)
    torch.save(export_meta_state_dict(model.backbone), backbone)
    config = TrainConfig(**FAST, epochs=1, max_steps_per_epoch=2, output_bias_percentile=None)
    result = train(
        cube,
        model="test-tiny-chmv2",
        weights=head,
        backbone_weights=backbone,
        config=config,
        output=tmp_path / "run",
        progress=False,
    )
    best = xchm.load_model(result.best_checkpoint)
    for name, tensor in model.backbone.state_dict().items():  # the file's, frozen
        assert torch.equal(best.backbone.state_dict()[name], tensor), name
    assert str(best.card.provenance["backbone_weights"]).endswith("backbone.pth")
    other = tmp_path / "other.pth"
    torch.save(export_meta_state_dict(xchm.load_model("test-tiny").backbone), other)
    with pytest.raises(ResumeError, match="backbone_weights"):
        train(
            cube,
            model="test-tiny-chmv2",
            weights=head,
            backbone_weights=other,
            config=config,
            output=tmp_path / "run",
            resume=True,
            progress=False,
        )
