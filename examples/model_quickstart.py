"""Load a canopy height model, feed it one real NEON window, save and reload it.

Goal: show the model API end to end on real imagery, offline. The backbone here
is a *random* tiny DINOv3 written in Meta's file layout (a stand-in for Meta's
gated weights file), so the heights are not meaningful yet: training comes with
the training module. Run: ``python examples/model_quickstart.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import rioxarray
import torch
from rasterio.enums import Resampling

import xchm
from xchm.models import band_statistics
from xchm.testing import write_meta_weights

NEON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"


def main() -> None:
    print("presets:", ", ".join(xchm.list_models()))
    with tempfile.TemporaryDirectory() as tmp:
        # 1. A stand-in for Meta's weights file: same layout, random tiny backbone.
        weights = Path(tmp) / "dinov3-tiny-meta-layout.pth"
        write_meta_weights(weights, "test-tiny")

        # 2. NEON RGB at 0.1 m (Bartlett forest) averaged to 0.625 m; take one 64x64 window.
        image = rioxarray.open_rasterio(NEON / "BART_crop2019_rgb.tif", masked=True)
        image = image.rio.reproject(image.rio.crs, resolution=0.625, resampling=Resampling.average)
        pixels = image.values[:, :64, :64]

        # 3. RGB bands map onto their own pretrained filters; statistics follow the
        #    reference recipe (clip at mean + 3 sd, scale, z-score), here from this window.
        stats = dict(zip(("red", "green", "blue"), band_statistics(pixels), strict=True))
        model = xchm.load_model(
            "test-tiny",
            weights=weights,
            bands=("red", "green", "blue"),
            statistics=stats,
            pixel_size=0.625,
        )
        print(
            f"model: {model.card.preset}, bands {model.card.bands}, band map {model.card.band_map}"
        )

        x = torch.from_numpy(model.card.normalize(pixels))[None]
        with torch.inference_mode():
            height = model(x)[0, 0]
        low, high = height.min().item(), height.max().item()
        print(f"predicted height: mean {height.mean():.2f} m, range {low:.2f}-{high:.2f} m")

        # 4. Save and reload: bit-identical predictions.
        model.save(Path(tmp) / "my-model")
        again = xchm.load_model(Path(tmp) / "my-model")
        with torch.inference_mode():
            same = torch.equal(again(x)[0, 0], height)
        print(f"checkpoint round trip identical: {same}")


if __name__ == "__main__":
    main()
