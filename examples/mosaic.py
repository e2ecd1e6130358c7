"""Mosaic several scenes into one canopy height store on a local Dask cluster.

Goal: show the path a regional mosaic takes, offline and small: three overlapping
scenes (GeoTIFFs cut from the real NEON Bartlett orthophoto, averaged to 0.5 m; in
real use, your acquisitions), combined lazily with ``xchm.merge_scenes`` (the
first listed scene that has a pixel wins: list them newest first), predicted on a
local ``distributed`` cluster started by ``xchm.cluster.start`` (it prints the
dashboard link: open it to watch the ``xchm.predict`` span and the xchm-windows /
xchm-model metrics under Fine Performance Metrics), and written region by region
into a resumable Zarr store. Run it twice: the second run finds every region done.

The model is ``test-tiny`` with random weights, saved as a checkpoint directory
because worker processes load the model from a path (pass ``--model DIR`` for a
trained one): heights are not meaningful until then.

Run: ``python examples/mosaic.py --out out/mosaic``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rioxarray
from rasterio.enums import Resampling

import xchm
import xchm.cluster
from xchm.models import band_statistics

NEON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"


def write_scenes(folder: Path) -> list[Path]:
    """Cut three overlapping 0.5 m scenes out of the Bartlett orthophoto (once).

    A second run keeps the files: rewritten inputs would be new data to the resumable
    store, which then refuses to resume.
    """
    paths = [folder / f"scene_{i}.tif" for i in range(3)]
    if all(p.is_file() for p in paths):
        return paths
    rgb = rioxarray.open_rasterio(NEON / "BART_crop2019_rgb.tif")
    image = rgb.rio.reproject(rgb.rio.crs, resolution=0.5, resampling=Resampling.average)
    image = image.assign_coords(band=[1, 2, 3])
    image.attrs["long_name"] = ("red", "green", "blue")  # band descriptions in the files
    h, w = image.shape[1:]
    cuts = [
        (slice(0, h // 2 + 20), slice(0, w)),
        (slice(h // 2 - 20, h), slice(0, w // 2 + 20)),
        (slice(h // 2 - 20, h), slice(w // 2 - 20, w)),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    for path, (ys, xs) in zip(paths, cuts, strict=True):
        image.isel(y=ys, x=xs).rio.to_raster(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/mosaic"), help="output folder")
    parser.add_argument("--model", type=Path, help="a trained checkpoint directory")
    parser.add_argument("--workers", type=int, default=1, help="CPU worker processes (1)")
    args = parser.parse_args()

    scenes = write_scenes(args.out / "scenes")
    mosaic = xchm.merge_scenes(scenes, combine="first", chunks=64)
    print(f"{len(scenes)} scenes -> one {mosaic.shape[1]}x{mosaic.shape[2]} px grid, lazily")

    model_dir = args.model
    if model_dir is None:  # a random test-tiny for RGB at 0.5 m, saved where workers can read it
        model_dir = args.out / "model"
        if not model_dir.exists():
            stats = band_statistics(mosaic.values[:, ::4, ::4])  # reference recipe, subsampled
            xchm.load_model(
                "test-tiny", bands=("red", "green", "blue"), statistics=stats, pixel_size=0.5
            ).save(model_dir)

    # The dashboard link is printed here; a client that is already active would be reused.
    sizing = {} if xchm.cluster.gpu_count() else {"n_workers": args.workers}  # GPUs: 1 each
    with xchm.cluster.start(gpus="auto", dashboard_address=":0", **sizing):
        ds = xchm.predict_to_zarr(mosaic, model_dir, args.out / "chm.zarr", region_size=128)
    chm = ds["chm"]  # (ds.chm is the .chm accessor)
    valid = np.isfinite(chm.values)
    print(
        f"{args.out / 'chm.zarr'}: {chm.shape} px, CRS {chm.rio.crs}, "
        f"{valid.mean():.0%} of pixels mapped, mean {float(chm.mean()):.2f} m"
    )


if __name__ == "__main__":
    main()
