"""Fine-tune a model on a chip cube and evaluate it on held-out plots.

Goal: show ``xchm.train`` and ``xchm.evaluate`` end to end on real data, offline:
the chip cube of ``examples/chips_neon.py`` (NEON plots, whole plots held out for
validation) trains ``test-tiny`` for a few epochs (random backbone, so every layer
trains: policy ``full``), then the best checkpoint is scored on the held-out plots
next to predicting the training mean, with a report folder of plots. With Meta's
weights, pass ``--model dinov3-vitl16-sat --weights FILE`` and the reference's
frozen policy (``--policy frozen``): the backbone stays as pretrained.

Run: ``python examples/train_evaluate.py --out out/train_evaluate``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import xchm
import xchm.chips

NEON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/train_evaluate"), help="folder")
    parser.add_argument("--model", default="test-tiny", help="preset or checkpoint (test-tiny)")
    parser.add_argument("--weights", help="backbone weights for a preset (Meta .pth, ...)")
    parser.add_argument("--policy", default="full", help="fine-tuning policy (full)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs (10)")
    args = parser.parse_args()

    pairs = [
        xchm.chips.ScenePair(rgb, rgb.with_name(rgb.name.replace("_rgb", "_chm_1m")))
        for rgb in sorted(NEON.glob("*_rgb.tif"))
        if rgb.with_name(rgb.name.replace("_rgb", "_chm_1m")).exists()
    ]
    cube = xchm.chips.build(
        pairs,
        args.out / "neon.zarr",
        bands=("red", "green", "blue"),
        resolution=0.5,
        stride=16,
        nodata=None,  # 255 is declared nodata in these files but is saturated white
        split_by="scene",
        fractions={"train": 0.75, "val": 0.25},
        overwrite=True,
        progress=False,
    )
    config = xchm.TrainConfig(
        epochs=args.epochs,
        batch_size=8,
        lr=1e-2,
        policy=args.policy,
        ft_rate=1.0,
        loss="mse",
        output_bias_percentile=50.0,
        augment=False,
        scheduler="cosine",
        patience=0,
        num_workers=0,
    )
    result = xchm.train(
        cube,
        model=args.model,
        weights=args.weights,
        config=config,
        output=args.out / "run",
        resume=(args.out / "run" / "checkpoints" / "last.pt").exists(),
    )
    metrics = xchm.evaluate(
        result.best_checkpoint, cube, split="val", output=args.out / "report", overwrite=True
    )
    base = metrics.baseline
    print(f"best epoch {result.best_epoch} of {len(result.history)}: {result.best_checkpoint}")
    print(
        f"held-out plots: MAE {metrics.mae:.2f} m, RMSE {metrics.rmse:.2f} m, "
        f"R2 {metrics.r2:.2f}; train mean {base['height']:.1f} m: MAE {base['mae']:.2f} m"
    )
    print(f"report: {metrics.report}")


if __name__ == "__main__":
    main()
