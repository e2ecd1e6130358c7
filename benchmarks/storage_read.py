"""Reading a whole COG from local disk, from S3 (/vsis3/, moto) and over HTTP (/vsicurl/, nginx).

The servers are the test servers of ``tests/servers.py`` (moto's S3 server and nginx on
127.0.0.1, both subprocesses), so this measures GDAL's request pattern and the cost of
going through HTTP on loopback, not a real network. For each source the script reads
the whole raster with ``rioxarray.open_rasterio(...).load()`` inside
``xchm.storage.gdal_env`` and reports the median wall time over ``--repeats`` cold reads
(GDAL's HTTP cache is switched off for these paths with ``CPL_VSIL_CURL_NON_CACHED``;
the local file is in the OS page cache after the first read), the number of requests
the server answered per read, and for nginx the bytes it sent. Every read is checked
to equal the local one.

Run it from the repository root (needs the ``dev`` extra and nginx, see
scripts/install_storage_test_deps.sh)::

    .venv/bin/python benchmarks/storage_read.py
    .venv/bin/python benchmarks/storage_read.py --size 1024 --repeats 1 --json out.json
    .venv/bin/python benchmarks/storage_read.py --gdal GDAL_HTTP_MERGE_CONSECUTIVE_RANGES=YES
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import servers  # noqa: E402  (the test servers, reused)
from xchm.storage import gdal_env, location  # noqa: E402


def write_cog(path: Path, size: int, bands: int, tile: int, seed: int = 0) -> Path:
    """Write a uint8 COG with imagery-like values (smooth fields plus noise), DEFLATE."""
    import rioxarray  # noqa: F401
    import xarray as xr

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    layers = []
    for b in range(bands):
        field = 100 + 60 * np.sin(6.3 * (b + 1) * xx) * np.cos(4.1 * (b + 2) * yy)
        layers.append(field + rng.normal(0, 12, (size, size)))
    data = np.clip(np.stack(layers), 0, 255).astype(np.uint8)
    image = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={
            "band": np.arange(1, bands + 1),
            "y": 7_000_000.0 - 0.6 * np.arange(size) - 0.3,
            "x": 500_000.0 + 0.6 * np.arange(size) + 0.3,
        },
    ).rio.write_crs(32606)
    image.rio.to_raster(path, driver="COG", blocksize=tile, compress="DEFLATE")
    return path


def read(name: str) -> np.ndarray:
    import rioxarray

    with rioxarray.open_rasterio(name) as image:
        return np.asarray(image.load().values)


def measure(
    label: str,
    name: str,
    loc: Any,
    reference: np.ndarray,
    repeats: int,
    count: Any,
    extra: dict[str, str],
) -> dict[str, Any]:
    times, requests, sent = [], [], []
    for _ in range(repeats):
        before = count()
        t0 = time.perf_counter()
        with gdal_env(loc, **extra):
            values = read(name)
        times.append(time.perf_counter() - t0)
        after = count()
        requests.append(after[0] - before[0])
        sent.append(after[1] - before[1])
        if values.tobytes() != reference.tobytes():
            raise SystemExit(f"{label}: the values differ from the local read")
    return {
        "source": label,
        "gdal_name": name,
        "seconds_median": statistics.median(times),
        "seconds": times,
        "requests_per_read": requests[-1],
        "bytes_sent_per_read": sent[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="raster width = height (px)")
    parser.add_argument("--bands", type=int, default=4)
    parser.add_argument("--tile", type=int, default=512, help="COG block size (px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gdal", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.gdal)

    work = Path(tempfile.mkdtemp(prefix="xchm-bench-storage-"))
    moto = nginx = None
    try:
        served = work / "served"
        served.mkdir()
        cog = write_cog(served / "scene.tif", args.size, args.bands, args.tile)
        size = cog.stat().st_size
        moto = servers.start_moto()
        nginx = servers.start_nginx(served)
        os.environ.update(moto.env())
        moto.create_bucket("bench")
        s3 = location("s3://bench/imagery/scene.tif")
        with open(cog, "rb") as src, s3.open("wb") as out:
            shutil.copyfileobj(src, out, 16 * 2**20)
        http = location(f"{nginx.url}/scene.tif")
        extra = {
            "CPL_VSIL_CURL_NON_CACHED": f"{s3.gdal_path()}:{http.gdal_path()}",
            **extra,
        }

        def moto_count() -> tuple[int, int]:
            assert moto is not None
            return len(moto.requests()), 0

        def nginx_count() -> tuple[int, int]:
            assert nginx is not None
            found = nginx.requests()
            return len(found), sum(r.bytes for r in found)

        reference = read(str(cog))
        results = [
            measure(
                "local disk",
                str(cog),
                location(cog),
                reference,
                args.repeats,
                lambda: (0, 0),
                extra,
            ),
            measure(
                "S3 (moto, /vsis3/)", s3.gdal_path(), s3, reference, args.repeats, moto_count, extra
            ),
            measure(
                "HTTP (nginx, /vsicurl/)",
                http.gdal_path(),
                http,
                reference,
                args.repeats,
                nginx_count,
                extra,
            ),
        ]
        local = results[0]["seconds_median"]
        for r in results:
            r["ratio_to_local"] = r["seconds_median"] / local
        report = {
            "size": args.size,
            "bands": args.bands,
            "tile": args.tile,
            "file_bytes": size,
            "tiles_per_band_level0": (args.size // args.tile) ** 2,
            "repeats": args.repeats,
            "gdal_options": extra,
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "results": results,
        }
    finally:
        if nginx is not None:
            nginx.stop()
        if moto is not None:
            servers.close_s3_clients()
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"{args.size} x {args.size} x {args.bands} uint8 COG, {args.tile} px tiles, "
        f"{size / 2**20:.1f} MiB, {args.repeats} cold reads each"
    )
    print(f"{'source':26} {'median s':>9} {'x local':>8} {'requests':>9} {'MiB sent':>9}")
    for r in results:
        sent = f"{r['bytes_sent_per_read'] / 2**20:9.1f}" if r["bytes_sent_per_read"] else " " * 9
        print(
            f"{r['source']:26} {r['seconds_median']:9.3f} {r['ratio_to_local']:8.2f} "
            f"{r['requests_per_read']:9d} {sent}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
