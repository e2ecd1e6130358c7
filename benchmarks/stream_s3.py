"""Chips/s streamed by ChipStream from a cube on local disk vs the same cube on S3 (moto).

The cube is built as in ``benchmarks/chip_cube.py`` (its scene helpers are imported):
one synthetic scene of ``ceil(sqrt(--chips))`` chips on a side, 3 uint16 bands plus
float32 heights, built with ``xchm.chips.build`` and its defaults (256-chip chunks in
2560-chip shards, zstd 3) on local disk, then the cube's files are copied object by
object into a bucket of moto's S3 server (``tests/servers.py``: a subprocess on
127.0.0.1, every byte over HTTP through s3fs and zarr's ``FsspecStore``).

For each repeat, and in it for each source (local disk, S3), each ``--prefetch`` value
(chunks read ahead per process in background threads; 0 = read each chunk when the
first batch needs it, the behaviour before prefetch existed) and each ``--workers``
value (DataLoader worker processes), it streams one epoch of the train split::

    stream = ChipStream(cube_or_url, split="train", batch_size=256, prefetch=P)
    stream.set_epoch(repeat)
    for image, height in make_loader(stream, num_workers=W, pin_memory=False): ...

timed from ``iter(loader)`` to the last batch (workers' start included; the loop only
counts chips). Reported: chips/s = chips / median time (min-max over the repeats) and
S3 requests per epoch (from the server's log). Every epoch's chips are checked against
the local stream's with the same settings.

moto is a Python server on the same machine: it shares the CPU with the stream
(on a 2-core VM it competes with the DataLoader workers) and its latency is loopback
latency (~1 ms), far below a real object store's (~10-50 ms to first byte). To see
what reading ahead buys at a realistic latency, ``--latency-ms`` adds that delay to
every read zarr makes from the S3 store (an ``asyncio.sleep`` in
``FsspecStore.get``/``get_partial_values``, so it overlaps as real network waits do);
the default runs both 0 and 20 ms.

Run it from the repository root (needs the ``dev`` extra: moto[server])::

    .venv/bin/python benchmarks/stream_s3.py
    .venv/bin/python benchmarks/stream_s3.py --chips 2000 --repeats 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from chip_cube import available_cores, cpu_model, load_average, scene_side, write_scene  # noqa: E402

from tests import servers  # noqa: E402  (the test servers, reused)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chips", type=int, default=5000, help="about this many 64x64 chips")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per setting (median)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--prefetch", type=int, nargs="+", default=[0, 4])
    p.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--tmp", metavar="DIR", default=None)
    p.add_argument("--json", metavar="PATH")
    return p.parse_args(argv)


def add_latency(seconds: float) -> None:
    """Delay every read of zarr's FsspecStore by ``seconds`` (asyncio: waits overlap)."""
    import asyncio

    from zarr.storage import FsspecStore

    original = getattr(FsspecStore, "_xchm_bench_original", None)
    if original is None:
        original = (FsspecStore.get, FsspecStore.get_partial_values)
        FsspecStore._xchm_bench_original = original  # type: ignore[attr-defined]
    get, partial = original
    if seconds <= 0:
        FsspecStore.get, FsspecStore.get_partial_values = get, partial  # type: ignore[method-assign]
        return

    async def slow_get(self: Any, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(seconds)
        return await get(self, *args, **kwargs)

    async def slow_partial(self: Any, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(seconds)
        return await partial(self, *args, **kwargs)

    FsspecStore.get, FsspecStore.get_partial_values = slow_get, slow_partial  # type: ignore[method-assign]


def upload(folder: Path, moto: Any, bucket: str, prefix: str) -> int:
    client = moto.client()
    total = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder)}", Body=data)
            total += len(data)
    return total


def epoch(
    source: Any, prefetch: int, workers: int, batch: int, number: int
) -> tuple[float, int, list[int]]:
    """Stream one epoch; return its seconds, chips and a key of each batch (to compare)."""
    from xchm.training.data import ChipStream, make_loader

    stream = ChipStream(source, split="train", batch_size=batch, prefetch=prefetch)
    stream.set_epoch(number)
    chips, keys = 0, []
    t0 = time.perf_counter()
    for image, _height in make_loader(stream, num_workers=workers, pin_memory=False):
        chips += len(image)
        keys.append(int(image[0, 0, 0, 0]) * 100_003 + int(image[-1, 1, -1, -1]))
    return time.perf_counter() - t0, chips, keys


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import xchm.chips

    work = Path(tempfile.mkdtemp(prefix="xchm-bench-stream-s3-", dir=args.tmp))
    side = scene_side(args.chips)
    image, chm = write_scene(work, side, seed=0)
    t0 = time.perf_counter()
    cube = xchm.chips.build(
        [(image, chm)], work / "cube.zarr", bands=("nir", "red", "green"), progress=False
    )
    build_s = time.perf_counter() - t0
    moto = servers.start_moto()
    results: list[dict[str, Any]] = []
    try:
        os.environ.update(moto.env())
        moto.create_bucket("bench")
        stored = upload(work / "cube.zarr", moto, "bench", "chips/cube.zarr")
        url = "s3://bench/chips/cube.zarr"
        reference: dict[tuple[int, int], Any] = {}
        for repeat in range(args.repeats):
            for latency in args.latency_ms:
                for workers in args.workers:
                    for source, prefetches in (("local", args.prefetch), ("s3", args.prefetch)):
                        if source == "local" and latency:
                            continue  # the delay is the store's: disk reads are not delayed
                        for prefetch in prefetches:
                            add_latency(latency / 1000 if source == "s3" else 0)
                            where = work / "cube.zarr" if source == "local" else url
                            before = len(moto.requests())
                            seconds, chips, keys = epoch(
                                where, prefetch, workers, args.batch_size, repeat
                            )
                            requests = len(moto.requests()) - before
                            known = reference.setdefault((repeat, workers), keys)
                            if keys != known:
                                raise SystemExit(f"{source} prefetch {prefetch}: other chips")
                            results.append(
                                {
                                    "source": source,
                                    "latency_ms": latency if source == "s3" else 0.0,
                                    "workers": workers,
                                    "prefetch": prefetch,
                                    "repeat": repeat,
                                    "seconds": seconds,
                                    "chips": chips,
                                    "requests": requests,
                                }
                            )
                            servers.close_s3_clients()
        add_latency(0)
    finally:
        servers.close_s3_clients()
        moto.stop()

    rows: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in results:
        rows.setdefault((r["source"], r["latency_ms"], r["workers"], r["prefetch"]), []).append(r)
    table = []
    for (source, latency, workers, prefetch), runs in rows.items():
        times = [r["seconds"] for r in runs]
        chips = runs[0]["chips"]
        table.append(
            {
                "source": source,
                "latency_ms": latency,
                "workers": workers,
                "prefetch": prefetch,
                "chips": chips,
                "chips_per_s_median": chips / statistics.median(times),
                "chips_per_s_min": chips / max(times),
                "chips_per_s_max": chips / min(times),
                "requests_per_epoch": runs[-1]["requests"],
            }
        )
    report = {
        "cube": {
            "chips": len(cube),
            "train_chips": cube.splits.get("train"),
            "chunks": -(-len(cube) // int(cube.image.chunks[0])),
            "bytes": stored,
            "build_s": build_s,
        },
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "cores": available_cores(),
        "cpu": cpu_model(),
        "load_average": load_average(),
        "rows": table,
    }
    print(
        f"cube: {len(cube)} chips ({report['cube']['train_chips']} train) in "
        f"{report['cube']['chunks']} chunks, {stored / 2**20:.0f} MiB; "
        f"{args.repeats} epochs per row; {available_cores()} cores ({cpu_model()})"
    )
    print(
        f"{'source':6} {'+latency':>8} {'workers':>7} {'prefetch':>8} "
        f"{'chips/s':>9} {'(min-max)':>15} {'requests':>9}"
    )
    for row in table:
        print(
            f"{row['source']:6} {row['latency_ms']:6.0f}ms {row['workers']:7d} "
            f"{row['prefetch']:8d} {row['chips_per_s_median']:9.0f} "
            f"({row['chips_per_s_min']:6.0f}-{row['chips_per_s_max']:6.0f}) "
            f"{row['requests_per_epoch']:9d}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
