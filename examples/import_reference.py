"""Bring a checkpoint of the reference project into xchm and map canopy height with it.

Goal: show the path a team that trained with the reference notebook (CHM_DINOv3,
above-shrubs) takes: its ``best_dinov3_*.pth`` loads as it is, converts once into an
xchm checkpoint (fast to load, no transformers needed), predicts lazily on Dask, and
exports back into the reference's format. The real files are ViT-L and about 1.5 GB;
here a *random* tiny stand-in is written in the reference's exact format, so the
heights are not meaningful. Run: ``python examples/import_reference.py --out
out/import_reference`` (pass ``--checkpoint best_dinov3_....pth`` to use a real one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (the .rio accessor)
import torch
import xarray as xr

import xchm
from xchm.models.reference_io import export_reference, import_reference
from xchm.testing import responsive_model


def stand_in(path: Path) -> Path:
    """Write a random tiny model in the reference's format (what its training saves)."""
    model = responsive_model("test-tiny", band_map="reference")  # NIR, red, green
    export_reference(model, path, overwrite=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/import_reference"))
    parser.add_argument("--checkpoint", type=Path, help="a reference best_dinov3_*.pth")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    source = args.checkpoint or stand_in(args.out / "best_dinov3_stand_in.pth")

    # 1. The reference's file loads directly (read with weights_only: nothing is unpickled).
    model = xchm.load_model(source)
    card = model.card
    print(f"loaded {card.provenance['weights']}: preset {card.preset}, bands {card.bands}")
    print(f"  band map {card.band_map}, window {card.window} px, pixel {card.pixel_size} m")
    print(
        f"  epoch {card.provenance.get('epoch')}, sha256 {card.provenance['weights_sha256'][:12]}"
    )

    # 2. Convert once (CLI: xchm models import FILE -o DIR); later loads read safetensors.
    folder = import_reference(source, args.out / "chm-model", overwrite=True)
    again = xchm.load_model(folder)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        same = torch.equal(model(x), again(x))
    print(f"imported to {folder}; same heights as the .pth: {same}")

    # 3. Predict lazily over a scene of raw NIR/red/green digital numbers (2 m pixels).
    rng = np.random.default_rng(0)
    raw = rng.uniform(200, 5000, (3, 192, 192)).astype("float32")
    scene = xr.DataArray(
        raw,
        dims=("band", "y", "x"),
        coords={
            "band": ["nir", "red", "green"],
            "y": -2.0 * np.arange(192),
            "x": 2.0 * np.arange(192),
        },
    ).rio.write_crs("EPSG:3338")  # Alaska Albers, as the reference's imagery
    scene = scene.chunk({"band": -1, "y": 96, "x": 96})
    chm = scene.chm.predict(folder)
    print(f"graph: {chm.shape} px in {chm.data.numblocks} chunks, nothing computed yet")
    heights = chm.values
    print(f"canopy height: mean {np.nanmean(heights):.2f} m, max {np.nanmax(heights):.2f} m")

    # 4. And back into the reference's format (CLI: xchm models export DIR --format reference).
    exported = export_reference(folder, args.out / "exported.pth", overwrite=True)
    with torch.inference_mode():
        same = torch.equal(xchm.load_model(exported)(x), again(x))
    print(f"exported to {exported}; round trip identical: {same}")


if __name__ == "__main__":
    main()
