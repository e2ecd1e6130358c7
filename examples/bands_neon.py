"""Say which band is which for a GeoTIFF without band descriptions (most real files).

Goal: show ``--bands`` and ``bands=`` on a real NEON RGB orthophoto, whose three bands
have no names (``gdalinfo`` shows no ``Description``): without them predict refuses
to guess, and the command line and Python give the same map with the same band
choice, spelled as band numbers (from 1, as in gdalinfo and QGIS), as names of every
band, or as a layout. The model is ``test-tiny`` with random weights (RGB bands), so
the heights are not meaningful; a trained checkpoint works the same way.

Run: ``python examples/bands_neon.py --out out/bands_neon``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
import rioxarray

import xchm
from xchm.cli import main as xchm_command
from xchm.errors import BandError
from xchm.models import band_statistics

NEON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"
SCENE = NEON / "OSBS_003_rgb.tif"  # 400 x 400 px at 0.1 m, bands red, green, blue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/bands_neon"), help="output folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with rasterio.open(SCENE) as src:
        print(f"{SCENE.name}: {src.count} bands, descriptions {src.descriptions}")
    image = rioxarray.open_rasterio(SCENE)
    model = xchm.load_model(
        "test-tiny",
        bands=("red", "green", "blue"),
        statistics=band_statistics(image.values),
        pixel_size=0.1,
    )
    model.save(args.out / "model")

    # 1. Without names xchm does not guess an order: one error that says what to do.
    try:
        xchm.predict(image, model)
    except BandError as err:
        print(f"without bands: BandError: {str(err)[:110]}...")

    # 2. Python: band numbers (GDAL's, from 1), a list naming every band, a layout.
    by_number = xchm.predict(image, model, bands={"red": 1, "green": 2, "blue": 3}).values
    for bands in (("red", "green", "blue"), "rgb", "red=1,green=2,blue=3"):
        same = np.array_equal(
            xchm.predict(image, model, bands=bands).values, by_number, equal_nan=True
        )
        print(f"bands={bands!r}: same map as bands={{'red': 1, ...}}: {same}")

    # 3. The command line: the same syntax, the same map.
    out = args.out / "chm.tif"
    model_dir = str(args.out / "model")
    command = ["predict", str(SCENE), "-o", str(out), "--model", model_dir, "--overwrite"]
    status = xchm_command([*command, "--bands", "red=1,green=2,blue=3", "-q"])
    with rasterio.open(out) as cog:
        cli = cog.read(1)
    close = np.allclose(cli, by_number, rtol=1e-5, atol=1e-4, equal_nan=True)
    print(f"xchm predict --bands red=1,green=2,blue=3: exit {status}, same map: {close}")


if __name__ == "__main__":
    main()
