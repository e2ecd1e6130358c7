"""A canopy height mosaic that never touches the local disk: imagery, model and map on S3.

Goal: show the object-storage path end to end. The NEON Bartlett orthophoto (averaged
to 0.625 m, written as a COG) and a model are put into a bucket; then everything reads
and writes by URL: ``open_image("s3://...")`` opens the COG lazily through GDAL,
``predict_to_zarr`` writes the map region by region into ``s3://.../chm.zarr``
(resumable: run the script twice and the second run skips every region), a plain
``xr.open_zarr`` reads it back with its CRS, and ``write_cog`` writes a COG next to it.

Credentials and the endpoint come from the standard environment, as for any S3 client:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` and, for a store that
is not AWS (MinIO, Ceph, a local test server), ``AWS_ENDPOINT_URL``. The model is
``test-tiny`` with random weights, so the heights are not meaningful (pass
``--model s3://.../checkpoint/`` for a trained one).

Run: ``python examples/object_storage.py s3://my-bucket/xchm-example``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import rioxarray
import xarray as xr
from rasterio.enums import Resampling

import xchm
from xchm.inference.rasters import open_image
from xchm.models import band_statistics
from xchm.storage import location

NEON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"
BANDS = ["red", "green", "blue"]


def upload_scene(prefix: str) -> tuple[str, object]:
    """Write the NEON scene as a COG into the bucket (once); return its URL and statistics."""
    rgb = rioxarray.open_rasterio(NEON / "BART_crop2019_rgb.tif")
    image = rgb.rio.reproject(rgb.rio.crs, resolution=0.625, resampling=Resampling.average)
    url = f"{prefix}/imagery/bart.tif"
    if location(url).exists():  # a new upload is another input: the map would not resume
        return url, band_statistics(image.values)
    with tempfile.TemporaryDirectory() as tmp:  # GDAL writes COGs to files; then one upload
        staged = Path(tmp) / "bart.tif"
        image.rio.to_raster(staged, driver="COG", blocksize=256)
        location(url).write_bytes(staged.read_bytes())
    return url, band_statistics(image.values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="where to work, e.g. s3://my-bucket/xchm-example")
    parser.add_argument("--model", help="a trained checkpoint URL (default: test-tiny)")
    args = parser.parse_args()
    prefix = args.prefix.rstrip("/")

    scene, statistics = upload_scene(prefix)
    print(f"imagery: {scene}")
    model = args.model
    if model is None:
        model = f"{prefix}/models/tiny"
        tiny = xchm.load_model("test-tiny", bands=BANDS, statistics=statistics, pixel_size=0.625)
        if not xchm.models.api.is_checkpoint(model):
            tiny.save(model)  # workers of a cluster fetch it from here, once per machine
    print(f"model:   {model}")

    image = open_image(scene, chunks=256)
    store = f"{prefix}/maps/chm.zarr"
    ds = xchm.predict_to_zarr(image, model, store, bands=BANDS, region_size=512, progress=False)
    print(ds.attrs["xchm_run"])

    chm = xr.open_zarr(store, decode_coords="all")["chm"]  # a plain reader: only the env
    print(f"read back {store}: {chm.shape} px, CRS {chm.rio.crs}, mean {float(chm.mean()):.2f} m")
    cog = f"{prefix}/maps/chm.tif"
    xchm.write_cog(chm, cog, overwrite=True)
    print(f"wrote {cog}")


if __name__ == "__main__":
    main()
