"""One prediction from local disk, from S3 (moto) and over HTTP (nginx); Zarr output to S3.

The same COG is predicted by ``xchm.predict_to_zarr`` read three ways: the local file,
``s3://`` through the local S3 server (moto) and ``http://`` through nginx, all on
127.0.0.1 (``tests/servers.py``), so this measures xchm's and GDAL's request pattern and
the cost of HTTP on loopback, not a real network. A fourth run writes the store to S3
instead of the local disk. Each run is a fresh child process (cold GDAL cache, its own
peak RSS) and reports wall time, the ratio to the local run, requests and bytes the
server answered per window, and the bytes read against the file's size (1.0: every
byte fetched once). Every store is checked to equal the local one.

Run it from the repository root (needs the ``dev`` extra and nginx, see
scripts/install_storage_test_deps.sh)::

    .venv/bin/python benchmarks/predict_storage.py                       # test-tiny, 4096 px
    .venv/bin/python benchmarks/predict_storage.py --model dinov3-vits16 --size 1024
    .venv/bin/python benchmarks/predict_storage.py --size 512 --json out.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from storage_read import write_cog  # noqa: E402  (the same imagery-like COG)

from tests import servers  # noqa: E402  (the test servers, reused)

BANDS = {"nir": 4, "red": 1, "green": 2}


def child(image: str, output: str, model: str, chunk: int, region: int) -> None:
    """Predict ``image`` into ``output`` in this process; print one JSON line."""
    import warnings

    import xchm
    from xchm.inference.rasters import open_image

    warnings.simplefilter("ignore")  # random decoders and pixel-size notes are expected
    t0 = time.perf_counter()
    ds = xchm.predict_to_zarr(
        open_image(image, chunks=chunk),
        model,
        output,
        region_size=region,
        bands=BANDS,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    chm = ds["chm"]
    window = int(chm.attrs["xchm_window"])
    stride = window - int(chm.attrs["xchm_overlap"])
    windows = -(-chm.shape[0] // stride) * -(-chm.shape[1] // stride)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "windows": windows,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "checksum": float(np.nansum(chm.values, dtype=np.float64)),
            }
        )
    )


def run_child(image: str, output: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    command = [sys.executable, __file__, "--child", image, output, "--model", args.model]
    command += ["--chunk", str(args.chunk), "--region", str(args.region)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{image} -> {output} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="raster width = height (px)")
    parser.add_argument("--tile", type=int, default=512, help="COG block size (px)")
    parser.add_argument("--model", default="test-tiny", help="preset (seeded with 0)")
    parser.add_argument("--chunk", type=int, default=1024, help="Dask chunk side (px)")
    parser.add_argument("--region", type=int, default=2048, help="region_size (px)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", nargs=2, metavar=("IMAGE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.model, args.chunk, args.region)
        return

    preset = args.model
    work = Path(tempfile.mkdtemp(prefix="xchm-bench-predict-storage-"))
    moto = nginx = None
    try:
        served = work / "served"
        served.mkdir()
        cog = write_cog(served / "scene.tif", args.size, 4, args.tile)
        size = cog.stat().st_size
        moto = servers.start_moto()
        nginx = servers.start_nginx(served)
        env = {**os.environ, **moto.env(), "PYTHONWARNINGS": "ignore"}
        moto.create_bucket("bench")
        moto.client().put_object(Bucket="bench", Key="scene.tif", Body=cog.read_bytes())

        def moto_reads() -> tuple[int, int]:
            assert moto is not None
            gets = [r for r in moto.requests() if r.path.startswith("/bench/scene.tif")]
            return len(gets), 0

        def nginx_reads() -> tuple[int, int]:
            assert nginx is not None
            found = nginx.requests()
            return len(found), sum(r.bytes for r in found)

        import warnings

        import xchm

        with warnings.catch_warnings():  # a random backbone says so; here it is on purpose
            warnings.simplefilter("ignore")
            model = xchm.load_model(preset, seed=0, pixel_size=0.6)  # the COG's pixels
        model.save(work / "model")  # one model for every run (a preset's backbone is random)
        args.model = str(work / "model")
        runs: list[dict[str, Any]] = []
        cases = [
            ("local disk -> local", str(cog), str(work / "local.zarr"), lambda: (0, 0)),
            ("S3 (moto) -> local", "s3://bench/scene.tif", str(work / "s3.zarr"), moto_reads),
            (
                "HTTP (nginx) -> local",
                f"{nginx.url}/scene.tif",
                str(work / "http.zarr"),
                nginx_reads,
            ),
            ("local disk -> S3 (moto)", str(cog), "s3://bench/out/chm.zarr", lambda: (0, 0)),
        ]
        for label, image, output, count in cases:
            before = count()
            result = run_child(image, output, args, env)
            after = count()
            result.update(
                source=label,
                requests=after[0] - before[0],
                bytes_sent=after[1] - before[1],
            )
            runs.append(result)
        local = runs[0]
        for r in runs:
            r["ratio_to_local"] = r["seconds"] / local["seconds"]
            r["requests_per_window"] = r["requests"] / r["windows"]
            r["bytes_read_over_file"] = r["bytes_sent"] / size if r["bytes_sent"] else None
            if r["checksum"] != local["checksum"]:  # same bytes in, same model: same map
                raise SystemExit(f"{r['source']}: the map differs from the local one")
        report = {
            "size": args.size,
            "tile": args.tile,
            "model": preset,
            "chunk": args.chunk,
            "region": args.region,
            "file_bytes": size,
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "runs": runs,
        }
    finally:
        if nginx is not None:
            nginx.stop()
        if moto is not None:
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"{preset}, {args.size} x {args.size} px COG ({size / 2**20:.1f} MiB, "
        f"{args.tile} px tiles), chunks {args.chunk}, regions {args.region}"
    )
    print(
        f"{'source -> output':26} {'s':>7} {'x local':>8} {'req/win':>8} {'read/file':>9} "
        f"{'RSS MiB':>8}"
    )
    for r in runs:
        read = f"{r['bytes_read_over_file']:9.2f}" if r["bytes_read_over_file"] else " " * 9
        print(
            f"{r['source']:26} {r['seconds']:7.1f} {r['ratio_to_local']:8.2f} "
            f"{r['requests_per_window']:8.4f} {read} {r['peak_rss_mib']:8.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
