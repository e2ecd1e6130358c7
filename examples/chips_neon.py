"""Build a chip cube from the real NEON plots, inspect it and preview it.

Goal: show ``xchm.chips.build`` on real airborne imagery and lidar heights, offline:
every NEON plot (0.1 m RGB averaged to 0.5 m, the 0.5 m lidar CHM) is cut into
64 x 64 chips every 16 px, split by scene (no plot on both sides), and the cube's
band statistics are turned into a model card ready for training.

Run: ``python examples/chips_neon.py --out out/chips_neon``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import xchm.chips

NEON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/chips_neon"), help="output folder")
    args = parser.parse_args()

    pairs = [
        xchm.chips.ScenePair(rgb, rgb.with_name(rgb.name.replace("_rgb", "_chm_0.5m")))
        for rgb in sorted(NEON.glob("*_rgb.tif"))
        if rgb.with_name(rgb.name.replace("_rgb", "_chm_0.5m")).exists()
    ]
    cube = xchm.chips.build(
        pairs,
        args.out / "neon.zarr",
        bands=("red", "green", "blue"),
        resolution=0.5,
        stride=16,
        nodata=None,  # these RGB files declare 255 as nodata, but it is saturated white
        split_by="scene",
        fractions={"train": 0.75, "val": 0.25},
        overwrite=True,
    )
    print(cube.summary())
    png = cube.preview(args.out / "preview.png", n=12, overwrite=True)
    card = cube.model_card("dinov3-vitl16-sat")
    print(f"preview: {png}")
    print(f"model card for training: bands {card.bands}, pixel size {card.pixel_size} m")


if __name__ == "__main__":
    main()
