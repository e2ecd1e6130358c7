"""Predict a canopy height map with Meta's CHMv2 over a real NEON scene and write a COG.

Goal: show the CHMv2 workflow end to end, offline: Meta's two files (the head and the
DINOv3 backbone) go to ``xchm.load_model``, the 8-bit RGB orthophoto of Bartlett (New
Hampshire) is averaged to CHMv2's 0.6 m, predicted lazily chunk by chunk with Dask
(windows blended: no seams at chunk or window edges), and written as ``chm.tif``.

Meta's files are gated (request access from Meta, DINOv3 License), so by default this
writes *random* stand-ins in Meta's exact file layouts for ``test-tiny-chmv2`` (CHMv2's
head and height bins on a tiny backbone): the heights are then not meaningful. With the
real files::

    python examples/predict_chmv2.py --preset chmv2 \
        --weights dinov3_vitl16_chmv2_dpt_head-3703d643.pth \
        --backbone-weights dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth

Run: ``python examples/predict_chmv2.py --out out/predict_chmv2``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import rioxarray
import torch
from rasterio.enums import Resampling

import xchm
from xchm.testing import export_meta_state_dict

NEON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"


def random_meta_files(folder: Path) -> tuple[Path, Path]:
    """Write random stand-ins for Meta's head and backbone files (test-tiny-chmv2 sized)."""
    model = xchm.load_model("test-tiny-chmv2")
    with torch.no_grad():  # spread the head's logits so the random heights vary
        for p in model.decoder.parameters():
            p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    head = folder / "dinov3_vitl16_chmv2_dpt_head-random.pth"
    backbone = folder / "dinov3_tiny_pretrain-random.pth"
    torch.save(model.decoder.state_dict(), head)  # Meta's head file names, 68 tensors
    torch.save(export_meta_state_dict(model.backbone), backbone)
    return head, backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/predict_chmv2"))
    parser.add_argument("--preset", default="test-tiny-chmv2", help="chmv2 for Meta's files")
    parser.add_argument("--weights", type=Path, help="Meta's CHMv2 head file or HF snapshot")
    parser.add_argument("--backbone-weights", type=Path, help="Meta's SAT-493M ViT-L file")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        weights, backbone = args.weights, args.backbone_weights
        if weights is None:
            weights, backbone = random_meta_files(Path(tmp))
        model = xchm.load_model(args.preset, weights=weights, backbone_weights=backbone)
    card = model.card
    print(f"model {card.preset}: bands {card.bands}, window {card.window} px, {card.pixel_size} m")

    rgb = rioxarray.open_rasterio(NEON / "BART_crop2019_rgb.tif")  # uint8 RGB, 0.1 m
    image = rgb.rio.reproject(
        rgb.rio.crs, resolution=card.pixel_size, resampling=Resampling.average
    )
    image = image.assign_coords(band=["red", "green", "blue"]).chunk({"y": 96, "x": 96})

    start = time.perf_counter()
    lazy = image.chm.predict(model, overlap=card.window // 4)  # nothing computed yet
    chm = lazy.compute()
    path = xchm.write_cog(chm, args.out / "chm.tif", overwrite=True)
    took = time.perf_counter() - start
    print(f"{chm.shape[0]}x{chm.shape[1]} px predicted in {took:.1f} s -> {path}")
    print(f"heights {float(chm.min()):.2f} .. {float(chm.max()):.2f} m")


if __name__ == "__main__":
    main()
