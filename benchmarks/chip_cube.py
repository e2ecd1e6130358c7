"""Build cost, size on disk and read throughput of xchm chip cubes (Zarr v3).

On one synthetic scene written to ``--tmp`` (a temporary directory) with
rioxarray as two tiled, uncompressed GeoTIFFs, EPSG:32617, 2 m pixels, square,
``ceil(sqrt(--chips)) * 64`` pixels on a side (default 20,000 chips: 9088 x 9088 px,
20,164 chips of 64 x 64):

* image: uint16 DN, bands nir/red/green (band descriptions), nodata 0; each band a
  linear function of the CHM (vegetation brighter in nir, darker in red/green) plus
  Gaussian noise (sd 120/80/80 DN), clipped to 1-10000, so that it compresses like
  noisy sensor DN, not like a constant;
* CHM: float32 metres, full float precision (not rounded), one tree crown per 8 x 8
  px cell (80 % of the cells; random centre, radius 2.5-5.5 px, domed profile)
  scaled by a smooth stand height (bilinear interpolation of 8-35 m values on a
  256 px grid), plus 0.15 m noise on crowns; ground 0 or small positive noise.
  Every chip has heights > 0 and no missing value, so every chip is kept.

it measures, with the median (min-max) of ``--repeats`` repeats:

1. **build**: ``xchm.chips.build([(image.tif, chm.tif)], store, progress=False)``
   with its defaults (block split, zstd 3, 256-chip chunks in 2560-chip shards),
   each repeat in a fresh Python subprocess into a new store (the previous one is
   deleted first, untimed). Its wall time (the ``build`` call only, imports
   excluded) gives chips/s written. Memory: the subprocess samples its own RSS
   (``/proc/self/statm``) every 50 ms in a thread and reports, besides
   ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end (the kernel's
   high-water mark, which the sampler cannot miss), the RSS after the imports
   (baseline) and the sampled peak while cutting chips (reading strips, filtering,
   staging buckets) and during ``ChipWriter.finish`` (loading each bucket,
   shuffling it, writing the final shards; the phase boundary is recorded by
   wrapping ``ChipWriter.finish`` in the subprocess). The peak is compared with the
   raw size of the chips (n x raw bytes per chip).
2. **size on disk** of the last build: allocated bytes (``st_blocks`` x 512, as
   ``du``) and apparent bytes (``st_size``) of every file in the store, per chip,
   against the raw bytes per chip (``bands x 2 + 4`` bytes x 64 x 64 = 40,960 for
   3 uint16 bands plus float32 height): the compression ratio (raw / allocated);
   the number of files; the same for the ``image`` and ``height`` arrays alone.
3. **read throughput** of the last build with ``xchm.chips.open(store)``, reading
   ``cube.image`` and ``cube.height`` (zarr arrays, numpy out), one untimed warm-up
   chunk first, the three modes interleaved repeat by repeat:

   a. chunk-sequential: ``image[i:i + 256]``, ``height[i:i + 256]`` for each 256-chip
      chunk in order (the whole cube);
   b. chunk-shuffled: the same chunks in a random order (a new order per repeat),
      as a streaming loader reads them (this excludes the loader's own in-buffer
      shuffle and collation);
   c. random single chips: ``image[i]``, ``height[i]`` for ``--random-reads``
      (default 500) random chips (with replacement, a new draw per repeat); each
      decodes a whole 256-chip chunk of each array.

   chips/s = chips read / median time. The store was just written, so it is in
   the page cache: these are warm-cache, decode-bound numbers (no disk I/O).

zarr runs its codecs in its own thread pool (``zarr.config`` ``threading`` and
``async.concurrency``, recorded); the machine's cores are all available. On a
shared machine, compare only numbers from the same run. With the defaults the whole
run takes about 2.5 minutes on a 2-core CPU and needs about 1.5 GB of temporary disk
space.

Run it from the repository root::

    .venv/bin/python benchmarks/chip_cube.py
    .venv/bin/python benchmarks/chip_cube.py --chips 5000 --repeats 5 --json cube.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

WINDOW = 64
BANDS = ("nir", "red", "green")
PIXEL_SIZE = 2.0
CRS = "EPSG:32617"
STRIP_ROWS = 512  # rows generated per dask block when writing the GeoTIFFs
CELL = 8  # px per crown cell (16 m)
COARSE = 256  # px between the stand-height grid points
CHIPS_PER_CHUNK = 256  # xchm.chips.layout.CHIPS_PER_CHUNK (checked against the store)


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--chips",
        type=int,
        default=20_000,
        help="about this many 64x64 chips: the scene is ceil(sqrt(chips)) chips on a side "
        "(default 20000: 9088 x 9088 px, 20164 chips)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of each part (default 3)")
    p.add_argument(
        "--random-reads",
        type=int,
        default=500,
        help="random single-chip reads per repeat in (c) (default 500)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the scene and the read orders")
    p.add_argument(
        "--tmp",
        metavar="DIR",
        default=None,
        help="parent of the temporary directory (default: the system's)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    # internal: the build subprocess
    p.add_argument(
        "--child-build", nargs=3, metavar=("IMAGE", "CHM", "STORE"), help=argparse.SUPPRESS
    )
    return p.parse_args(argv)


def load_average() -> list[float] | None:
    """Return the 1, 5 and 15-minute load averages (other processes disturb timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo (``platform.processor()`` is often empty)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max of a list of numbers."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# -- the synthetic scene -------------------------------------------------------------------


def scene_side(chips: int) -> int:
    """Scene side in pixels: a square of ceil(sqrt(chips)) chips."""
    return math.ceil(math.sqrt(max(1, chips))) * WINDOW


def coarse_grid(side: int, seed: int) -> np.ndarray:
    """Stand heights (m) on a grid of COARSE px, with a margin for interpolation."""
    n = side // COARSE + 3
    return np.random.default_rng([seed, 0]).uniform(8.0, 35.0, (n, n))


def _interp_weights(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid indices and weights for linear interpolation at pixel-centre positions."""
    u = (pos + 0.5) / COARSE
    i0 = np.floor(u).astype(np.int64)
    return i0, i0 + 1, u - i0


def chm_strip(y0: int, rows: int, width: int, coarse: np.ndarray, seed: int) -> np.ndarray:
    """CHM rows ``y0 : y0 + rows`` (float32 m); deterministic per strip (y0 % CELL == 0)."""
    rng = np.random.default_rng([seed, 1, y0])
    # smooth stand height: bilinear interpolation of the coarse grid
    i0, i1, wy = _interp_weights(np.arange(y0, y0 + rows, dtype=np.float64))
    j0, j1, wx = _interp_weights(np.arange(width, dtype=np.float64))
    along_x = coarse[:, j0] * (1 - wx) + coarse[:, j1] * wx  # (coarse rows, width)
    stand = along_x[i0] * (1 - wy)[:, None] + along_x[i1] * wy[:, None]
    # one crown per CELL x CELL cell: centre, radius, relative height, presence
    ncy, ncx = math.ceil(rows / CELL), math.ceil(width / CELL)
    cy = rng.uniform(1.5, CELL - 1.5, (ncy, ncx))
    cx = rng.uniform(1.5, CELL - 1.5, (ncy, ncx))
    radius = rng.uniform(2.5, 5.5, (ncy, ncx))
    rel = rng.uniform(0.6, 1.1, (ncy, ncx)) * (rng.random((ncy, ncx)) < 0.8)
    py, px = np.arange(rows), np.arange(width)
    iy, ix = (py // CELL)[:, None], (px // CELL)[None, :]
    dy = (py % CELL)[:, None] + 0.5 - cy[iy, ix]
    dx = (px % CELL)[None, :] + 0.5 - cx[iy, ix]
    dome = np.sqrt(np.clip(1.0 - (dy * dy + dx * dx) / radius[iy, ix] ** 2, 0.0, None))
    crown = rel[iy, ix] * dome
    noise = rng.normal(0.0, 0.15, (rows, width))
    ground = np.clip(rng.normal(0.0, 0.1, (rows, width)), 0.0, None)
    chm = np.where(crown > 0, np.clip(stand * crown + noise, 0.0, None), ground)
    return chm.astype(np.float32)


def image_strip(y0: int, rows: int, width: int, coarse: np.ndarray, seed: int) -> np.ndarray:
    """Image rows ``y0 : y0 + rows``: (band, rows, width) uint16 DN from the CHM plus noise."""
    chm = chm_strip(y0, rows, width, coarse, seed).astype(np.float64)
    rng = np.random.default_rng([seed, 2, y0])
    bands = []
    for base, slope, sd in ((1800.0, 45.0, 120.0), (900.0, -12.0, 80.0), (1100.0, -8.0, 80.0)):
        dn = base + slope * chm + rng.normal(0.0, sd, chm.shape)
        bands.append(np.clip(np.rint(dn), 1, 10_000).astype(np.uint16))
    return np.stack(bands)


def write_scene(directory: Path, side: int, seed: int) -> tuple[Path, Path]:
    """Write the image and CHM GeoTIFFs with rioxarray (dask blocks of STRIP_ROWS rows)."""
    import dask.array as da
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    coarse = coarse_grid(side, seed)
    rows = tuple(min(STRIP_ROWS, side - y) for y in range(0, side, STRIP_ROWS))
    starts = np.cumsum((0, *rows[:-1]))

    def chm_block(block_id: tuple[int, ...] | None = None) -> np.ndarray:
        i = block_id[0]
        return chm_strip(int(starts[i]), rows[i], side, coarse, seed)

    def image_block(block_id: tuple[int, ...] | None = None) -> np.ndarray:
        i = block_id[1]
        return image_strip(int(starts[i]), rows[i], side, coarse, seed)

    coords = {
        "y": 7_000_000 - PIXEL_SIZE * (np.arange(side) + 0.5),
        "x": 400_000 + PIXEL_SIZE * (np.arange(side) + 0.5),
    }
    chm = xr.DataArray(
        da.map_blocks(chm_block, chunks=(rows, (side,)), dtype=np.float32),
        dims=("y", "x"),
        coords=coords,
    )
    chm = chm.rio.write_crs(CRS).rio.write_nodata(np.nan)
    image = xr.DataArray(
        da.map_blocks(image_block, chunks=((len(BANDS),), rows, (side,)), dtype=np.uint16),
        dims=("band", "y", "x"),
        coords={"band": np.arange(1, len(BANDS) + 1), **coords},
        attrs={"long_name": BANDS},
    )
    image = image.rio.write_crs(CRS).rio.write_nodata(0)
    paths = directory / "image.tif", directory / "chm.tif"
    for array, path in zip((image, chm), paths, strict=True):
        array.rio.to_raster(path, tiled=True, blockxsize=512, blockysize=512, lock=threading.Lock())
    return paths


# -- (1) build, in a subprocess ------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_build(image: str, chm: str, store: str) -> None:
    """Run one build in this (fresh) process; print its time and memory as JSON."""
    import xchm.chips
    from xchm.chips.writer import ChipWriter

    baseline = _rss_bytes()
    samples: list[tuple[float, int]] = []
    phases: dict[str, float] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), _rss_bytes()))
            stop.wait(0.05)

    finish = ChipWriter.finish

    def timed_finish(self: Any) -> dict[str, Any]:
        phases["finish_start"] = time.perf_counter()
        return finish(self)

    ChipWriter.finish = timed_finish  # type: ignore[method-assign]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    cube = xchm.chips.build([(image, chm)], store, progress=False)
    end = time.perf_counter()
    stop.set()
    sampler.join()
    split = phases.get("finish_start", end)
    cut = [r for t, r in samples if t < split] or [baseline]
    fin = [r for t, r in samples if t >= split] or [baseline]
    print(
        json.dumps(
            {
                "seconds": end - start,
                "cut_seconds": split - start,
                "finish_seconds": end - split,
                "chips": len(cube),
                "candidates": cube.filters["candidates"],
                "baseline_rss_bytes": baseline,
                "peak_rss_cut_bytes": max(cut),
                "peak_rss_finish_bytes": max(fin),
                "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "rss_samples": len(samples),
            }
        )
    )


def run_build(image: Path, chm: Path, store: Path) -> dict[str, Any]:
    """One build in a fresh subprocess (the store deleted first)."""
    if store.exists():
        shutil.rmtree(store)
    cmd = [sys.executable, os.path.abspath(__file__), "--child-build", str(image), str(chm)]
    done = subprocess.run([*cmd, str(store)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- (2) size on disk ----------------------------------------------------------------------


def disk_usage(path: Path) -> dict[str, int]:
    """Files, allocated bytes (st_blocks x 512, as du) and apparent bytes under ``path``."""
    files = allocated = apparent = 0
    for root, _, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(root, name))
            files += 1
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return {"files": files, "allocated_bytes": allocated, "apparent_bytes": apparent}


def storage(store: Path, cube: Any) -> dict[str, Any]:
    """Bytes per chip on disk against the raw bytes per chip."""
    n = len(cube)
    image_raw = int(np.prod(cube.image.shape[1:])) * cube.image.dtype.itemsize
    height_raw = int(np.prod(cube.height.shape[1:])) * cube.height.dtype.itemsize
    raw = image_raw + height_raw
    total = disk_usage(store)
    parts = {name: disk_usage(store / name) for name in ("image", "height")}
    return {
        "chips": n,
        "files": total["files"],
        "allocated_bytes": total["allocated_bytes"],
        "apparent_bytes": total["apparent_bytes"],
        "bytes_per_chip": total["allocated_bytes"] / n,
        "apparent_bytes_per_chip": total["apparent_bytes"] / n,
        "raw_bytes_per_chip": raw,
        "compression_ratio": raw * n / total["allocated_bytes"],
        "image": {
            **parts["image"],
            "bytes_per_chip": parts["image"]["allocated_bytes"] / n,
            "raw_bytes_per_chip": image_raw,
            "compression_ratio": image_raw * n / parts["image"]["allocated_bytes"],
        },
        "height": {
            **parts["height"],
            "bytes_per_chip": parts["height"]["allocated_bytes"] / n,
            "raw_bytes_per_chip": height_raw,
            "compression_ratio": height_raw * n / parts["height"]["allocated_bytes"],
        },
        "chunks": list(cube.image.chunks),
        "shards": list(cube.image.shards) if cube.image.shards else None,
    }


# -- (3) reads -----------------------------------------------------------------------------


def read_chunks(cube: Any, starts: list[int]) -> int:
    """Read image and height chunk by chunk at ``starts``; return chips read."""
    image, height = cube.image, cube.height
    n = image.shape[0]
    chips = 0
    for i in starts:
        img = image[i : i + CHIPS_PER_CHUNK]
        hgt = height[i : i + CHIPS_PER_CHUNK]
        assert len(img) == len(hgt) == min(CHIPS_PER_CHUNK, n - i)
        chips += len(img)
    return chips


def read_single(cube: Any, positions: list[int]) -> int:
    """Read image and height one chip at a time; return chips read."""
    image, height = cube.image, cube.height
    for i in positions:
        image[i]
        height[i]
    return len(positions)


def measure_reads(cube: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Chips/s of chunk-sequential, chunk-shuffled and random single-chip reads."""
    n = len(cube)
    chunk = cube.image.chunks[0]
    if chunk != CHIPS_PER_CHUNK or cube.height.chunks[0] != CHIPS_PER_CHUNK:
        raise SystemExit(f"the cube's chunks {cube.image.chunks} are not {CHIPS_PER_CHUNK} chips")
    starts = list(range(0, n, CHIPS_PER_CHUNK))
    rng = random.Random(args.seed)
    read_chunks(cube, starts[:1])  # warm-up: metadata, codecs, thread pool
    modes = ("chunk_sequential", "chunk_shuffled", "random_single")
    times: dict[str, list[float]] = {m: [] for m in modes}
    counts: dict[str, list[int]] = {m: [] for m in modes}
    for r in range(args.repeats):
        shuffled = starts[:]
        rng.shuffle(shuffled)
        singles = [rng.randrange(n) for _ in range(args.random_reads)]
        for mode, run in (
            ("chunk_sequential", lambda: read_chunks(cube, starts)),
            ("chunk_shuffled", lambda s=shuffled: read_chunks(cube, s)),
            ("random_single", lambda s=singles: read_single(cube, s)),
        ):
            t0 = time.perf_counter()
            chips = run()
            times[mode].append(time.perf_counter() - t0)
            counts[mode].append(chips)
        print(
            f"   reads repeat {r + 1}: "
            + ", ".join(f"{m} {counts[m][-1] / times[m][-1]:.0f} chips/s" for m in modes),
            flush=True,
        )
    raw = storage_raw_bytes(cube)
    out = {}
    for mode in modes:
        med = statistics.median(times[mode])
        chips = counts[mode][0]
        out[mode] = {
            "chips": chips,
            "reads": len(starts) if mode != "random_single" else chips,
            "time_s": summary(times[mode]),
            "chips_per_s": chips / med,
            "chips_per_s_min_max": [chips / max(times[mode]), chips / min(times[mode])],
            "raw_mb_per_s": chips * raw / med / 1e6,
        }
    return out


def storage_raw_bytes(cube: Any) -> int:
    """Return the decoded bytes of one chip (image + height)."""
    return sum(int(np.prod(a.shape[1:])) * a.dtype.itemsize for a in (cube.image, cube.height))


# -- tables --------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    """Markdown table of the medians (min-max)."""
    b, s, r = result["build"], result["storage"], result["read"]
    mib = 2**20

    def mm(d: dict[str, float], scale: float = 1.0, fmt: str = ".1f") -> str:
        return f"{d['median'] / scale:{fmt}} ({d['min'] / scale:{fmt}}-{d['max'] / scale:{fmt}})"

    rows = [
        ("chips in the cube (candidates)", f"{s['chips']} ({b['candidates']})"),
        ("build time, s", mm(b["time_s"])),
        (
            "build chips/s",
            f"{b['chips_per_s']:.0f} ({b['chips_per_s_min_max'][0]:.0f}-"
            f"{b['chips_per_s_min_max'][1]:.0f})",
        ),
        (
            "  cutting + staging, s / finish (shuffle, write), s",
            f"{b['cut_s']['median']:.1f} / {b['finish_s']['median']:.1f}",
        ),
        ("build peak RSS, MiB (ru_maxrss)", mm(b["ru_maxrss_bytes"], mib, ".0f")),
        (
            "  RSS after imports / peak cutting / peak finish, MiB",
            f"{b['baseline_rss_bytes']['median'] / mib:.0f} / "
            f"{b['peak_rss_cut_bytes']['median'] / mib:.0f} / "
            f"{b['peak_rss_finish_bytes']['median'] / mib:.0f}",
        ),
        (
            "raw chip data, MiB (peak RSS / raw)",
            f"{b['raw_chip_bytes'] / mib:.0f} ({b['peak_over_raw']:.2f})",
        ),
        (
            "bytes per chip on disk (image / height)",
            f"{s['bytes_per_chip']:.0f} ({s['image']['bytes_per_chip']:.0f} / "
            f"{s['height']['bytes_per_chip']:.0f})",
        ),
        (
            "raw bytes per chip (image / height)",
            f"{s['raw_bytes_per_chip']} ({s['image']['raw_bytes_per_chip']} / "
            f"{s['height']['raw_bytes_per_chip']})",
        ),
        (
            "compression ratio (image / height)",
            f"{s['compression_ratio']:.2f} ({s['image']['compression_ratio']:.2f} / "
            f"{s['height']['compression_ratio']:.2f})",
        ),
        ("store size, MiB; files", f"{s['allocated_bytes'] / mib:.0f}; {s['files']}"),
    ]
    labels = {
        "chunk_sequential": "(a) chunk-sequential reads, chips/s",
        "chunk_shuffled": "(b) chunk-shuffled reads, chips/s",
        "random_single": "(c) random single-chip reads, chips/s",
    }
    for mode, label in labels.items():
        m = r[mode]
        lo, hi = m["chips_per_s_min_max"]
        rows.append(
            (
                f"{label} ({m['chips']} chips, {m['reads']} reads)",
                f"{m['chips_per_s']:.0f} ({lo:.0f}-{hi:.0f}); {m['raw_mb_per_s']:.0f} MB/s decoded",
            )
        )
    lines = ["| measure | median (min-max) |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """Versions of what the measurements depend on."""
    import numcodecs
    import rasterio
    import zarr

    import xchm

    return {
        "python": platform.python_version(),
        "xchm": xchm.__version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "numpy": np.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_build:
        child_build(*args.child_build)
        return 0
    if args.chips < 1 or args.repeats < 1:
        raise SystemExit("--chips and --repeats must be positive")
    import zarr

    import xchm.chips

    env = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "cpu": cpu_model(),
        "cores": available_cores(),
        "loadavg_start": load_average(),
        **versions(),
        "zarr_threading": dict(zarr.config.get("threading")),
        "zarr_async": dict(zarr.config.get("async")),
    }
    print(
        f"{env['date']}: {env['cpu']}, {env['cores']} cores; zarr {env['zarr']}, xchm "
        f"{env['xchm']}; load average {env['loadavg_start']}",
        flush=True,
    )
    side = scene_side(args.chips)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xchm-chip-cube-", dir=args.tmp) as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        image, chm = write_scene(tmp_path, side, args.seed)
        tiff_bytes = image.stat().st_size + chm.stat().st_size
        scene = {
            "side_px": side,
            "candidates": (side // WINDOW) ** 2,
            "tiff_bytes": tiff_bytes,
            "write_s": time.perf_counter() - t0,
        }
        print(
            f"scene {side} x {side} px ({scene['candidates']} chip positions), GeoTIFFs "
            f"{tiff_bytes / 2**20:.0f} MiB written in {scene['write_s']:.1f} s",
            flush=True,
        )
        store = tmp_path / "chips.zarr"
        builds = []
        for r in range(args.repeats):
            builds.append(run_build(image, chm, store))
            b = builds[-1]
            print(
                f"   build repeat {r + 1}: {b['seconds']:.1f} s ({b['chips'] / b['seconds']:.0f} "
                f"chips/s; cut {b['cut_seconds']:.1f} s, finish {b['finish_seconds']:.1f} s), "
                f"peak RSS {b['ru_maxrss_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )
        cube = xchm.chips.open(store)
        n = len(cube)
        times = [b["seconds"] for b in builds]
        raw_total = n * storage_raw_bytes(cube)
        build = {
            "runs": builds,
            "chips": n,
            "candidates": builds[0]["candidates"],
            "time_s": summary(times),
            "cut_s": summary([b["cut_seconds"] for b in builds]),
            "finish_s": summary([b["finish_seconds"] for b in builds]),
            "chips_per_s": n / statistics.median(times),
            "chips_per_s_min_max": [n / max(times), n / min(times)],
            **{
                key: summary([b[key] for b in builds])
                for key in (
                    "ru_maxrss_bytes",
                    "baseline_rss_bytes",
                    "peak_rss_cut_bytes",
                    "peak_rss_finish_bytes",
                )
            },
            "raw_chip_bytes": raw_total,
            "peak_over_raw": statistics.median(b["ru_maxrss_bytes"] for b in builds) / raw_total,
        }
        disk = storage(store, cube)
        reads = measure_reads(cube, args)
    env["loadavg_end"] = load_average()
    env["seconds"] = round(time.perf_counter() - start, 1)
    result = {"environment": env, "scene": scene, "build": build, "storage": disk, "read": reads}
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
