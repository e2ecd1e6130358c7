"""Heights at bf16 and fp16 against fp32, and chunk invariance per precision (issue 20).

For each *part* (a fitted model and a scene) the script predicts the scene with
``xchm.predict(image, model, precision=p)`` for p in fp32, bf16 and fp16 (autocast,
chosen on the worker: see ``xchm.inference.runtime.autocast_dtype``), and reports per
reduced precision the height differences ``dh = h_p - h_fp32`` over every pixel:

* ``max |dh|``, ``mean |dh|`` and ``p99 |dh|`` in metres, and the same relative to
  the mean fp32 height of the scene (``mean |dh| / mean h``);
* whether issue 20's goals hold: mean |dh| < 0.05 m and max |dh| < 0.5 m;
* chunk invariance: the same precision predicted eagerly (one NumPy block) and
  lazily in Dask chunks of ``--chunk`` px, max |dh| between the two (0 means
  bit-identical);
* seconds of each eager prediction (one run each, on a shared CPU: a rough ratio only).

Parts (``--parts``, all by default):

* ``fitted``: ``xchm.testing.fitted_model()`` (test-tiny fitted for ~10 s to a smooth
  function of NIR) on the tests' smooth synthetic scene (``--size`` px, 2 m pixels;
  heights ~5-13 m);
* ``neon``: test-tiny trained ``--epochs`` epochs on chips of the NEON plots in
  ``--data`` (read in place, never copied; the chip build and training settings of
  ``benchmarks/train_neon.py``), predicting NEON's BART scene (a site no chip comes
  from) averaged from 0.1 m to 0.5 m, as ``xchm demo`` does;
* ``vits``: ``dinov3-vits16`` with random weights made responsive
  (``xchm.testing.responsive_model``: BatchNorm calibrated, output layer widened;
  heights meaningless, so read its relative columns) on a small smooth scene
  (``--vits-size``, default 64 x 128 px: 3 windows; emulated bf16 is ~100x slower
  than fp32 for ViT-S on CPUs without AVX512_BF16/AMX).

Run it from the repository root (a few minutes on a quiet 2-core CPU)::

    .venv/bin/python benchmarks/precision_accuracy.py --out out/precision --json out/precision.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chip_cube import available_cores, cpu_model, load_average, versions  # noqa: E402

NEON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"
PARTS = ("fitted", "neon", "vits")
REDUCED = ("bf16", "fp16")
#: Issue 20's goals for heights at reduced precision against fp32, metres.
GOAL_MEAN_M, GOAL_MAX_M = 0.05, 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="(all)")
    p.add_argument("--out", type=Path, required=True, help="work folder (NEON cube and run)")
    p.add_argument("--data", type=Path, default=NEON, help="NEON folder (../shared/data/neon)")
    p.add_argument("--size", type=int, default=256, help="fitted part: scene side, px (256)")
    p.add_argument("--chunk", type=int, default=64, help="chunk side of the lazy runs, px (64)")
    p.add_argument("--epochs", type=int, default=10, help="neon part: training epochs (10)")
    p.add_argument(
        "--vits-size",
        type=int,
        nargs=2,
        default=[64, 128],
        metavar=("H", "W"),
        help="vits part: scene height and width, px (64 128)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    return p.parse_args(argv)


def smooth_scene(height: int, width: int, seed: int = 0) -> Any:
    """Build the tests' smooth scene (tests/inference/conftest.make_image): nir/red/green, 2 m."""
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 2500 + 1500 * np.sin(yy / 9.0) * np.cos(xx / 13.0)
    data = np.stack([base + rng.normal(0, 300, base.shape) * k for k in (1.0, 0.5, 0.4)])
    image = xr.DataArray(
        np.clip(data, 0, 9000).astype("uint16"),
        dims=("band", "y", "x"),
        coords={
            "band": ["nir", "red", "green"],
            "y": 7_000_000 - 2.0 * (np.arange(height) + 0.5),
            "x": 400_000 + 2.0 * (np.arange(width) + 0.5),
        },
    )
    return image.rio.write_crs("EPSG:32617")


def neon_model(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """Train test-tiny on the NEON chips (train_neon's settings); return it, BART, notes."""
    import shutil

    import rioxarray
    from rasterio.enums import Resampling
    from train_neon import build_cube, config
    from train_neon import parse_args as neon_args

    import xchm

    work = args.out / "neon"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    opts = neon_args(["--out", str(work), "--epochs", str(args.epochs), "--data", str(args.data)])
    start = time.perf_counter()
    cube = build_cube(opts, work / "neon.zarr")
    result = xchm.train(
        cube, model="test-tiny", config=config(opts), output=work / "run", progress=False
    )
    model = xchm.load_model(result.best_checkpoint)
    trained = time.perf_counter() - start
    rgb: Any = rioxarray.open_rasterio(args.data / "BART_crop2019_rgb.tif")
    image = rgb.rio.reproject(
        rgb.rio.crs, resolution=opts.resolution, resampling=Resampling.average
    )
    image = image.assign_coords(band=["red", "green", "blue"])
    val = result.history[result.best_epoch].get("val_mae", math.nan)
    notes = {
        "chips": len(cube),
        "epochs": args.epochs,
        "best_epoch": result.best_epoch,
        "val_mae_m": float(val),
        "build_and_train_s": round(trained, 1),
    }
    return model, image, notes


def differences(h: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Max, mean and p99 of |h - ref| over pixels finite in both, absolute and relative."""
    both = np.isfinite(h) & np.isfinite(ref)
    dh = np.abs(h[both].astype(np.float64) - ref[both])
    mean_h = float(np.mean(ref[both]))
    stats = {"max": float(dh.max()), "mean": float(dh.mean()), "p99": float(np.quantile(dh, 0.99))}
    return {
        **{f"{k}_m": v for k, v in stats.items()},
        **{f"{k}_rel": v / abs(mean_h) for k, v in stats.items()},
        "mean_height_m": mean_h,
        "pixels": int(both.sum()),
        "goal_mean": stats["mean"] < GOAL_MEAN_M,
        "goal_max": stats["max"] < GOAL_MAX_M,
    }


def measure(name: str, model: Any, image: Any, args: argparse.Namespace, **kw: Any) -> dict:
    """Predict ``image`` at each precision, eagerly and in chunks; compare with fp32."""
    import xchm

    eager: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    invariance: dict[str, float] = {}
    chunks = {"y": args.chunk, "x": args.chunk}
    for precision in ("fp32", *REDUCED):
        start = time.perf_counter()
        eager[precision] = xchm.predict(image, model, precision=precision, **kw).values
        seconds[precision] = time.perf_counter() - start
        lazy = xchm.predict(image.chunk(chunks), model, precision=precision, **kw).values
        diff = np.abs(lazy.astype(np.float64) - eager[precision])
        invariance[precision] = float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0
        print(
            f"   {name} {precision}: {seconds[precision]:.1f} s; eager vs {args.chunk} px "
            f"chunks: max |dh| {invariance[precision]:.3g} m",
            flush=True,
        )
    rows = {p: differences(eager[p], eager["fp32"]) for p in REDUCED}
    return {
        "part": name,
        "shape": list(eager["fp32"].shape),
        "seconds": seconds,
        "chunk_invariance_max_m": invariance,
        "vs_fp32": rows,
    }


def _m(value: float) -> str:
    return f"{value:.2g}" if value < 0.01 else f"{value:.3f}"


def tables(results: list[dict[str, Any]]) -> str:
    """Markdown: differences from fp32, then chunk invariance and seconds."""
    head = "| part | precision | max \\|dh\\| m | mean \\|dh\\| m | p99 \\|dh\\| m "
    head += "| mean h m | mean \\|dh\\| / mean h | max \\|dh\\| / mean h | goals met |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for p, r in res["vs_fp32"].items():
            met = "yes" if r["goal_mean"] and r["goal_max"] else "NO"
            lines.append(
                f"| {res['part']} | {p} | {_m(r['max_m'])} | {_m(r['mean_m'])} | "
                f"{_m(r['p99_m'])} | {r['mean_height_m']:.2f} | {r['mean_rel']:.2%} | "
                f"{r['max_rel']:.2%} | {met} |"
            )
    lines += [
        "",
        "| part | scene px | precision | eager vs chunked: max \\|dh\\| m | eager predict s |",
        "|---|---|---|---|---|",
    ]
    for res in results:
        shape = "x".join(map(str, res["shape"]))
        for p, inv in res["chunk_invariance_max_m"].items():
            lines.append(f"| {res['part']} | {shape} | {p} | {inv:.3g} | {res['seconds'][p]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    import xchm
    from xchm.errors import RandomWeightsWarning
    from xchm.inference.runtime import native_bf16_cpu
    from xchm.testing import fitted_model, responsive_model

    args.out.mkdir(parents=True, exist_ok=True)
    load_start = load_average()
    results: list[dict[str, Any]] = []
    notes: dict[str, Any] = {}
    start = time.perf_counter()
    if "fitted" in args.parts:
        print("== fitted: xchm.testing.fitted_model() on the smooth scene", flush=True)
        results.append(measure("fitted", fitted_model(), smooth_scene(args.size, args.size), args))
    if "neon" in args.parts:
        print(f"== neon: test-tiny trained {args.epochs} epochs; BART at 0.5 m", flush=True)
        model, image, notes["neon"] = neon_model(args)
        # 255 is real saturated white here, not nodata (as for the chips)
        results.append(measure("neon", model, image, args, nodata=math.nan))
    if "vits" in args.parts:
        print("== vits: dinov3-vits16, responsive random weights", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            model = responsive_model("dinov3-vits16")
        results.append(measure("vits", model, smooth_scene(*args.vits_size, seed=1), args))
    res = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "device": {
            "cpu": cpu_model(),
            "cores": available_cores(),
            "torch_threads": torch.get_num_threads(),
            "native_bf16": native_bf16_cpu(),
            "load_average_start": load_start,
            "load_average_end": load_average(),
        },
        "versions": {**versions(), "torch": torch.__version__, "xchm": xchm.__version__},
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "notes": notes,
        "seconds": round(time.perf_counter() - start, 1),
        "results": results,
    }
    print(tables(results))
    print(f"notes: {json.dumps(notes)}; {res['seconds']} s; load {load_start} -> {load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
