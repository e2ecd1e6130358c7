"""Chips/s streamed by ``make_loader(ChipStream(...))`` with 0, 1 and 2 DataLoader workers.

The cube is built as in ``benchmarks/chip_cube.py`` (its scene helpers are imported):
one synthetic scene of ``ceil(sqrt(--chips))`` chips on a side (default 20,000 chips:
9088 x 9088 px, 20,164 chips of 3 uint16 bands plus float32 heights), written to
``--tmp`` as two GeoTIFFs and built with ``xchm.chips.build`` with its defaults
(block split 80/20, zstd 3, 256-chip chunks in 2560-chip shards); or ``--cube`` names
an existing cube to read instead.

For each repeat, and in it for each ``--workers`` value, each ``--image-dtypes``
value (``default``: uint16 images yielded as int32; ``native``: as torch.uint16) and
with and without ``augment`` (interleaved, so that load from other processes spreads
over all of them), it streams one epoch of ``--split`` (default ``train``, what
training reads) through

    stream = ChipStream(cube, split=..., batch_size=256, augment=..., image_dtype=...)
    stream.set_epoch(repeat)
    for image, height in make_loader(stream, num_workers=W, pin_memory=False): ...

and times it from ``iter(loader)`` (so including the workers' start and the first
buffer fill) to the last batch; the loop only counts chips (no model, no pinning,
no copy to a device). Reported: chips/s = chips / median time (min-max over the
repeats), the time to the first batch, and CPU time per chip of this process plus
its (joined) worker processes (``getrusage``), which on a shared machine is steadier
than wall time. Reference row ``decode only``: the same epoch's chunks read with
``image[a:b]`` and ``height[a:b]`` in shuffled order in this process (zarr's own
threads), without selecting chips, shuffling, batching or handing batches over.

The cube is in the page cache after the build: warm-cache, decode-bound numbers.
On a shared machine, compare only numbers from one run. Defaults take about two
minutes on a 2-core CPU and about 1.5 GB of temporary disk space.

Run it from the repository root::

    .venv/bin/python benchmarks/chip_stream.py
    .venv/bin/python benchmarks/chip_stream.py --cube chips.zarr --repeats 5 --json s.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chip_cube import (  # noqa: E402  (the sibling benchmark's scene and environment helpers)
    BANDS,
    available_cores,
    cpu_model,
    load_average,
    scene_side,
    summary,
    versions,
    write_scene,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chips", type=int, default=20_000, help="about this many chips (20000)")
    p.add_argument("--cube", metavar="PATH", help="stream this existing cube instead")
    p.add_argument("--split", default="train", help="split to stream, or 'all' (train)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="(0 1 2)")
    p.add_argument(
        "--image-dtypes",
        nargs="+",
        default=["default", "native"],
        help="ChipStream image_dtype values to compare: 'default' (uint16 -> int32), "
        "'native' (uint16 kept) (both)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="chips per batch (256)")
    p.add_argument("--buffer-chunks", type=int, default=8, help="shuffle buffer, chunks (8)")
    p.add_argument("--repeats", type=int, default=3, help="epochs per setting (3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene and the stream")
    p.add_argument("--tmp", metavar="DIR", help="parent of the temporary directory")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    return p.parse_args(argv)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its joined children."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def stream_epoch(
    cube: Any, args: argparse.Namespace, workers: int, augment: bool, dtype: str, epoch: int
) -> tuple[int, int, float, float, float]:
    """Stream one epoch; return chips, batches, seconds, first-batch seconds, CPU seconds."""
    from xchm.training.data import ChipStream, make_loader

    split = None if args.split == "all" else args.split
    stream = ChipStream(
        cube,
        split=split,
        batch_size=args.batch_size,
        buffer_chunks=args.buffer_chunks,
        augment=augment,
        seed=args.seed,
        image_dtype=None if dtype == "default" else dtype,
    )
    stream.set_epoch(epoch)
    loader = make_loader(stream, num_workers=workers, pin_memory=False)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    first, chips, batches = 0.0, 0, 0
    for image, _height in loader:
        if batches == 0:
            first = time.perf_counter() - t0
        chips += image.shape[0]
        batches += 1
    seconds = time.perf_counter() - t0
    del loader  # joins the workers, so that their CPU time is counted
    if batches != len(stream):
        raise SystemExit(f"streamed {batches} batches, len(stream) is {len(stream)}")
    return chips, batches, seconds, first, cpu_seconds() - cpu0


def decode_only(cube: Any, args: argparse.Namespace, epoch: int) -> tuple[int, float]:
    """Read the chunks holding the split's chips, whole, in shuffled order.

    Returns the split's chips in them (what the stream yields from the same reads) and
    the seconds taken.
    """
    split = None if args.split == "all" else args.split
    sel = cube if split is None else cube.sel(split=split)
    chunk = cube.image.chunks[0]
    starts = np.unique(sel.index // chunk) * chunk
    np.random.default_rng([args.seed, epoch]).shuffle(starts)
    image, height = cube.image, cube.height
    t0 = time.perf_counter()
    for a in starts.tolist():
        image[a : a + chunk]
        height[a : a + chunk]
    return len(sel), time.perf_counter() - t0


def measure(cube: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Run all settings ``--repeats`` times, interleaved; summarise per setting."""
    settings = [(w, a, d) for w in args.workers for d in args.image_dtypes for a in (False, True)]
    runs: dict[tuple[int, bool, str], list[tuple[int, int, float, float, float]]] = {
        s: [] for s in settings
    }
    decode: list[tuple[int, float]] = []
    loads: list[list[float] | None] = []
    decode_only(cube, args, 10**6)  # warm-up: metadata, codecs, zarr's thread pool
    for r in range(args.repeats):
        decode.append(decode_only(cube, args, r))
        line = [f"decode only {decode[-1][0] / decode[-1][1]:.0f}"]
        for w, a, d in settings:
            runs[w, a, d].append(stream_epoch(cube, args, w, a, d, r))
            chips, _, sec, _, _ = runs[w, a, d][-1]
            line.append(f"W={w} {d}{' aug' if a else ''} {chips / sec:.0f}")
        loads.append(load_average())
        print(
            f"   repeat {r + 1} (chips/s): " + ", ".join(line) + f"; load average {loads[-1]}",
            flush=True,
        )
    out = []
    for (w, a, d), rs in runs.items():
        chips, batches = rs[0][0], rs[0][1]
        secs = [x[2] for x in rs]
        out.append(
            {
                "workers": w,
                "augment": a,
                "image_dtype": d,
                "chips": chips,
                "batches": batches,
                "time_s": summary(secs),
                "chips_per_s": chips / statistics.median(secs),
                "chips_per_s_min_max": [chips / max(secs), chips / min(secs)],
                "first_batch_s": summary([x[3] for x in rs]),
                "cpu_us_per_chip": statistics.median(x[4] for x in rs) / chips * 1e6,
            }
        )
    dsecs = [d[1] for d in decode]
    return {
        "loadavg_after_repeat": loads,
        "stream": out,
        "decode_only": {
            "chips": decode[0][0],
            "time_s": summary(dsecs),
            "chips_per_s": decode[0][0] / statistics.median(dsecs),
            "chips_per_s_min_max": [decode[0][0] / max(dsecs), decode[0][0] / min(dsecs)],
        },
    }


def table(result: dict[str, Any]) -> str:
    """Markdown table of the medians (min-max)."""
    lines = [
        "| DataLoader workers | image dtype | augment | chips/s, median (min-max) | "
        "first batch, s | CPU µs per chip |",
        "|---|---|---|---|---|---|",
    ]
    for m in result["stream"]:
        lo, hi = m["chips_per_s_min_max"]
        lines.append(
            f"| {m['workers']} | {m['image_dtype']} | {'yes' if m['augment'] else 'no'} | "
            f"{m['chips_per_s']:.0f} "
            f"({lo:.0f}-{hi:.0f}) | {m['first_batch_s']['median']:.2f} | "
            f"{m['cpu_us_per_chip']:.0f} |"
        )
    d = result["decode_only"]
    lo, hi = d["chips_per_s_min_max"]
    lines.append(
        f"| decode only (this process) | - | - | {d['chips_per_s']:.0f} ({lo:.0f}-{hi:.0f}) "
        "| - | - |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.chips < 1 or args.repeats < 1 or args.batch_size < 1:
        raise SystemExit("--chips, --repeats and --batch-size must be positive")
    import torch
    import zarr

    import xchm.chips

    env = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "cpu": cpu_model(),
        "cores": available_cores(),
        "loadavg_start": load_average(),
        **versions(),
        "torch": torch.__version__,
        "zarr_async": dict(zarr.config.get("async")),
    }
    print(
        f"{env['date']}: {env['cpu']}, {env['cores']} cores; torch {env['torch']}, zarr "
        f"{env['zarr']}; load average {env['loadavg_start']}",
        flush=True,
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xchm-chip-stream-", dir=args.tmp) as tmp:
        if args.cube:
            cube = xchm.chips.open(args.cube)
        else:
            side = scene_side(args.chips)
            t0 = time.perf_counter()
            image, chm = write_scene(Path(tmp), side, args.seed)
            cube = xchm.chips.build(
                [(image, chm)], Path(tmp) / "chips.zarr", bands=BANDS, progress=False
            )
            print(f"built {len(cube)} chips in {time.perf_counter() - t0:.1f} s", flush=True)
        info = {
            "path": None if not args.cube else str(cube.path),
            "chips": len(cube),
            "splits": cube.splits,
            "chunks": list(cube.image.chunks),
            "image_dtype": str(cube.image.dtype),
            "batch_size": args.batch_size,
            "buffer_chunks": args.buffer_chunks,
            "split": args.split,
        }
        result = {"environment": env, "cube": info, **measure(cube, args)}
    env["loadavg_end"] = load_average()
    env["seconds"] = round(time.perf_counter() - start, 1)
    print(
        f"\nload average (1, 5, 15 min): {env['loadavg_start']} at start, "
        f"{env['loadavg_end']} at end; {env['seconds']} s\n"
    )
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
