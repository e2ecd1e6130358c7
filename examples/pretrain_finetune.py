"""Adapt a backbone to your imagery without labels, then fine-tune it for canopy height.

Goal: show ``xchm.pretrain`` end to end on real data, offline. Every NEON RGB image
(the lidar plots and the larger BART crop) is cut into an **unlabeled** chip cube
(images only); ``test-tiny`` continues DINO/iBOT self-distillation on it; its
``backbone/`` output goes to ``xchm.train`` as ``weights=``, which trains a decoder
on the frozen pretrained backbone with the labeled plots; the held-out plots score
it. With Meta's weights, pass ``--model dinov3-vitl16-sat --weights FILE`` (the
teacher and student then start from DINOv3) and use a GPU.

Run: ``python examples/pretrain_finetune.py --out out/pretrain_finetune``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import xchm
import xchm.chips

NEON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"
COMMON = {
    "bands": ("red", "green", "blue"),
    "resolution": 0.5,
    "nodata": None,  # 255 is declared nodata in these files but is saturated white
    "overwrite": True,
    "progress": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/pretrain_finetune"), help="folder")
    parser.add_argument("--model", default="test-tiny", help="preset (test-tiny)")
    parser.add_argument("--weights", help="backbone weights to start from (Meta .pth, ...)")
    parser.add_argument("--ssl-epochs", type=int, default=5, help="pretraining epochs (5)")
    parser.add_argument("--epochs", type=int, default=10, help="decoder epochs (10)")
    args = parser.parse_args()

    images = sorted(NEON.glob("*_rgb.tif"))
    unlabeled = xchm.chips.build(
        images, args.out / "unlabeled.zarr", stride=16, fractions={"train": 1.0}, **COMMON
    )
    ssl = xchm.pretrain(
        unlabeled,
        model=args.model,
        weights=args.weights,
        config=xchm.PretrainConfig(epochs=args.ssl_epochs, batch_size=16, out_dim=1024),
        output=args.out / "ssl",
        resume=(args.out / "ssl" / "checkpoints" / "last.pt").exists(),
    )
    print(
        f"pretrained on {len(unlabeled)} unlabeled chips: loss {ssl.history[0]['loss']:.3f} -> "
        f"{ssl.history[-1]['loss']:.3f}; backbone {ssl.backbone}"
    )

    pairs = [
        xchm.chips.ScenePair(rgb, rgb.with_name(rgb.name.replace("_rgb", "_chm_1m")))
        for rgb in images
        if rgb.with_name(rgb.name.replace("_rgb", "_chm_1m")).exists()
    ]
    labeled = xchm.chips.build(
        pairs,
        args.out / "neon.zarr",
        stride=16,
        split_by="scene",
        fractions={"train": 0.75, "val": 0.25},
        **COMMON,
    )
    config = xchm.TrainConfig(
        epochs=args.epochs,
        batch_size=8,
        lr=1e-2,
        policy="frozen",  # only the decoder learns: the pretrained backbone stays as it is
        loss="mse",
        output_bias_percentile=50.0,
        augment=False,
        scheduler="cosine",
        patience=0,
        num_workers=0,
    )
    result = xchm.train(
        labeled,
        model=args.model,
        weights=ssl.backbone,  # bands and statistics come from the backbone's card
        config=config,
        output=args.out / "run",
        resume=(args.out / "run" / "checkpoints" / "last.pt").exists(),
    )
    metrics = xchm.evaluate(result.best_checkpoint, labeled, split="val", progress=False)
    base = metrics.baseline
    print(
        f"held-out plots: MAE {metrics.mae:.2f} m, RMSE {metrics.rmse:.2f} m, "
        f"R2 {metrics.r2:.2f}; train mean {base['height']:.1f} m: MAE {base['mae']:.2f} m"
    )


if __name__ == "__main__":
    main()
