r"""Search a STAC API for scenes, load them lazily, predict canopy height, write a COG + Item.

    search (xchm.stac.search) -> load (xchm.stac.load) -> predict (xchm.predict)
    -> COG (chm.tif) -> STAC Item describing it (chm.json, xchm.stac.item_for)

Against any STAC API given with --catalog. The tests run it against their local STAC
API (tests/stac/test_predict.py), whose 4-band items are built like NAIP's:

    python examples/stac_predict.py --catalog http://127.0.0.1:PORT --collection xchm-test \\
        --bbox -72.297 42.525 -72.291 42.540 --years 2023 --out out/stac_predict

Planetary Computer NAIP (4-band red/green/blue/nir, 0.6 m, no eo:cloud_cover, URLs need
signing: ``pip install planetary-computer``), the closest public analogue of the
reference's WorldView imagery; resampled to the model's 2 m:

    python examples/stac_predict.py \\
        --catalog https://planetarycomputer.microsoft.com/api/stac/v1 --collection naip \\
        --bbox -72.20 42.52 -72.16 42.55 --years 2021 2022 --sign planetary-computer \\
        --missing-cloud keep --resolution 2 --model my-checkpoint/ --out out/stac_naip

``--model`` defaults to ``test-tiny`` (random weights: the heights are not meaningful);
pass a trained checkpoint directory for real maps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import xchm
import xchm.stac


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", required=True, help="STAC API root URL")
    parser.add_argument("--collection", required=True, action="append", help="collection id")
    parser.add_argument("--bbox", nargs=4, type=float, required=True, metavar=("W", "S", "E", "N"))
    when = parser.add_mutually_exclusive_group(required=True)
    when.add_argument("--years", nargs="+", type=int, help="years to search, e.g. 2021 2022")
    when.add_argument("--datetime", help="an interval, e.g. 2019/2024")
    parser.add_argument("--months", nargs="+", type=int, default=[7, 8], help="(default: 7 8)")
    parser.add_argument("--max-cloud", type=float, help="maximum eo:cloud_cover (percent)")
    parser.add_argument("--missing-cloud", choices=("keep", "drop"), help="items without it")
    parser.add_argument("--sign", choices=("none", "planetary-computer"), default="none")
    parser.add_argument("--model", default="test-tiny", help="checkpoint directory or preset")
    parser.add_argument("--resolution", type=float, help="output pixel size (default: native)")
    parser.add_argument("--crs", help="output CRS if the scenes are in several")
    parser.add_argument("--out", type=Path, default=Path("out/stac_predict"))
    args = parser.parse_args()

    modifier = None
    if args.sign == "planetary-computer":
        import planetary_computer  # pip install planetary-computer

        modifier = planetary_computer.sign_inplace

    # 1. Search: one request series per year of the month window, checked and retried.
    items = xchm.stac.search(
        args.bbox,
        collections=args.collection,
        catalog=args.catalog,
        years=args.years,
        datetime=args.datetime,
        months=args.months,
        max_cloud_cover=args.max_cloud,
        missing_cloud_cover=args.missing_cloud,
        modifier=modifier,
    )
    print(f"found {len(items)} items: {', '.join(i.id for i in list(items)[:6])}")

    # 2. Load: the model's bands, one lazy (band, y, x) image over the bbox.
    model = xchm.load_model(args.model)
    image = xchm.stac.load(
        items, bands=model.card.bands, resolution=args.resolution, crs=args.crs, bbox=args.bbox
    )
    print(f"image {dict(image.sizes)} in {image.rio.crs}, chunks {image.data.chunksize}")

    # 3. Predict (lazy) and write a COG: pixels are read and the model runs here.
    chm = xchm.predict(image, model)
    args.out.mkdir(parents=True, exist_ok=True)
    cog = args.out / "chm.tif"
    chm.rio.to_raster(cog, driver="COG", compress="DEFLATE")
    values = chm.values
    valid = np.isfinite(values)
    print(
        f"wrote {cog}: {values.shape[0]}x{values.shape[1]} px, {valid.mean():.0%} mapped, "
        f"heights {np.nanmin(values):.1f}-{np.nanmax(values):.1f} m"
    )

    # 4. Describe it as a STAC Item linked to its source items, ready to be catalogued.
    item = xchm.stac.item_for(chm, href=cog.resolve().as_uri(), items=items)
    item_path = args.out / "chm.json"
    item_path.write_text(json.dumps(item.to_dict(include_self_link=False), indent=2))
    print(
        f"wrote {item_path}: {item.properties['start_datetime']} to "
        f"{item.properties['end_datetime']}, {len(item.get_links('derived_from'))} sources"
    )


if __name__ == "__main__":
    main()
