"""Predict a canopy height map over a real NEON scene, lazily, and write a COG.

Goal: show ``da.chm.predict`` end to end on real imagery, offline: open the Bartlett
(New Hampshire) RGB orthophoto, average it to 0.625 m, predict chunk by chunk with
Dask, and write ``chm.tif`` (a COG) next to NEON's lidar CHM for comparison in a GIS.
The model is ``test-tiny`` with random weights, so the heights are not meaningful
until a trained checkpoint is used (pass ``--model DIR``).

Run: ``python examples/predict_neon.py --out out/predict_neon``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import rioxarray
from rasterio.enums import Resampling

import xchm
from xchm.models import band_statistics

NEON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/predict_neon"), help="output folder")
    parser.add_argument("--model", help="a trained checkpoint directory (default: test-tiny)")
    args = parser.parse_args()

    rgb = rioxarray.open_rasterio(NEON / "BART_crop2019_rgb.tif", masked=True)
    image = rgb.rio.reproject(rgb.rio.crs, resolution=0.625, resampling=Resampling.average)
    image = image.chunk({"band": -1, "y": 96, "x": 96})  # several chunks, to show the blending
    if args.model:
        model = xchm.load_model(args.model)
    else:
        model = xchm.load_model(
            "test-tiny",
            bands=("red", "green", "blue"),
            statistics=band_statistics(image.values),  # reference recipe, from this image
            pixel_size=0.625,
        )
    chm = image.chm.predict(model, bands=["red", "green", "blue"])
    print(f"graph built: {chm.shape} px in {chm.data.numblocks} chunks, nothing computed yet")

    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    chm.rio.to_raster(args.out / "chm.tif", driver="COG")
    print(f"wrote {args.out / 'chm.tif'} in {time.perf_counter() - start:.1f} s")
    print(f"CRS {chm.rio.crs}, pixel {chm.rio.resolution()}, mean {float(chm.mean()):.2f} m")


if __name__ == "__main__":
    main()
