"""One ``xchm.predict`` configuration timed: precision, decoder and ``torch.compile`` mode.

The rows of issue 20's GPU check that ``benchmarks/throughput.py`` cannot express
(its precision is one per run, and it has no decoder or compile option). One
configuration per run, so that ``benchmarks/gpu_check.sh`` can give each its own
``timeout`` (a compile that fails or hangs does not stop the rows after it).

Input: the synthetic scene of :func:`xchm.inference.benchmark.make_scene` (``--size``
px square, default 4096 on CUDA and 128 on the CPU; uint16, 4 bands, ``--pixel-size``
m), in ``--chunk`` px Dask chunks, in memory or (``--source cog``) read from a COG
(DEFLATE) written to a temporary folder. The model: ``xchm.load_model(--preset,
window=64, pixel_size=..., decoder=--decoder)`` with random weights, on the device
(CUDA if present). A light-decoder row where ``load_model`` has no ``decoder=``, or a
compiled row where ``predict`` has no ``compile=``, is written as skipped (exit 0).

Measured: the first call (untimed as a rate: it includes compilation), then
``--repeats`` timed runs of ``xchm.predict(image, model, overlap=O, precision=P,
compile=C).compute()``, each inside :func:`xchm.inference.telemetry.collect` (the
kernel's windows run and seconds per stage; CUDA stages end with a synchronisation).
Reported: median seconds (min-max); windows/s = lattice windows of the scene
(``window_span`` per axis, what the scene needs) / seconds; windows run/s (the
kernel's count, with the windows near chunk borders run once per chunk); model-stage
windows/s (windows run / model seconds); TFLOP/s = lattice windows/s x GFLOP per
window (backbone + decoder, ``torch.utils.flop_counter`` on one window); MFU =
TFLOP/s / the device's dense bf16 peak (:data:`xchm.inference.benchmark.PEAK_TFLOPS`
or ``--peak-tflops``; none on the CPU), also for fp32/fp16 rows (same peak, so that
rows compare); for compiled rows (and with ``--compare-eager``), the largest height
difference from an eager run at the same precision.

Run it from the repository root::

    .venv/bin/python benchmarks/gpu_predict_options.py --compile reduce-overhead  # ViT-L
    .venv/bin/python benchmarks/gpu_predict_options.py --preset dinov3-vits16 --precision fp16
    .venv/bin/python benchmarks/gpu_predict_options.py --preset test-tiny --size 128
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chip_cube import load_average, versions  # noqa: E402

WINDOW = 64


def compile_option(text: str) -> bool | str:
    """``false``/``true`` as booleans, any other text as a ``torch.compile`` mode."""
    return {"false": False, "true": True}.get(text.lower(), text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="dinov3-vitl16-sat", help="model preset (random weights)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="predict's precision= (default auto: bf16 on CUDA)",
    )
    p.add_argument(
        "--decoder", default="reference", choices=("reference", "light"), help="decoder kind"
    )
    p.add_argument(
        "--compile",
        type=compile_option,
        default=False,
        help="predict's compile=: false (default), true, or a torch.compile mode such as "
        "reduce-overhead",
    )
    p.add_argument(
        "--size", type=int, help="scene side in px (default 4096 on CUDA, 128 on the CPU)"
    )
    p.add_argument("--chunk", type=int, default=2048, help="Dask chunk side in px (default 2048)")
    p.add_argument(
        "--overlap", type=int, default=16, help="window overlap in px (default 16, predict's)"
    )
    p.add_argument(
        "--source", default="memory", choices=("memory", "cog"), help="input (default memory)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs (default 3)")
    p.add_argument("--batch-size", type=int, help="windows per model call (default: predict's)")
    p.add_argument("--pixel-size", type=float, default=0.5, help="pixel size in m (default 0.5)")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: a table)")
    p.add_argument(
        "--compare-eager",
        action="store_true",
        help="also run eager and report the largest height difference (always for compiled rows)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the row to this JSON file")
    return p.parse_args(argv)


def skip_reason(decoder: str, compile: bool | str) -> str | None:
    """Why this xchm cannot run the row (None: it can)."""
    import xchm
    from xchm.models.api import load_model

    if decoder != "reference" and "decoder" not in inspect.signature(load_model).parameters:
        return "xchm.load_model has no decoder= option"
    if compile is not False and "compile" not in inspect.signature(xchm.predict).parameters:
        return "xchm.predict has no compile= option"
    return None


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Time one configuration; return its row."""
    import rioxarray
    import torch

    import xchm
    from xchm.inference.benchmark import gflop_per_window, lattice_windows, make_scene, peak_tflops
    from xchm.inference.runtime import autocast_dtype, choose_device
    from xchm.inference.telemetry import STAGES, collect

    device = choose_device(None)
    cuda = device.type == "cuda"
    size = args.size or (4096 if cuda else 128)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    peak = args.peak_tflops or (peak_tflops(name) if cuda else None)
    dtype = autocast_dtype(args.precision, device) or torch.float32
    row: dict[str, Any] = {
        "preset": args.preset,
        "precision": args.precision,
        "dtype": str(dtype).removeprefix("torch."),
        "decoder": args.decoder,
        "compile": args.compile,
        "source": args.source,
        "size": size,
        "chunk": args.chunk,
        "overlap": args.overlap,
        "device": name,
        "peak_tflops": peak,
    }
    options = {} if args.decoder == "reference" else {"decoder": args.decoder}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xchm.RandomWeightsWarning)  # speed only
        model = xchm.load_model(args.preset, pixel_size=args.pixel_size, window=WINDOW, **options)
    model = model.to(device).eval()
    gflop = gflop_per_window(model, device)
    row["build_s"] = time.perf_counter() - start
    row["gflop_per_window"] = gflop
    scene = make_scene(size, args.pixel_size)
    chunks = {"band": -1, "y": args.chunk, "x": args.chunk}
    kwargs: dict[str, Any] = {"overlap": args.overlap, "precision": args.precision}
    kwargs["batch_size"] = args.batch_size
    if args.compile is not False:
        kwargs["compile"] = args.compile

    with tempfile.TemporaryDirectory(prefix="xchm-options-") as tmp:
        image: Any
        if args.source == "cog":
            cog = Path(tmp) / "scene.tif"
            scene.rio.to_raster(cog, driver="COG", compress="DEFLATE", num_threads="all_cpus")
            image = rioxarray.open_rasterio(cog, chunks=chunks, lock=False)
        else:
            image = scene.chunk(chunks)

        def once(**extra: Any) -> tuple[float, Any, dict[str, float]]:
            with collect() as tally:
                t0 = time.perf_counter()
                chm = xchm.predict(image, model, **{**kwargs, **extra}).compute()
                seconds = time.perf_counter() - t0
            return seconds, chm, dict(tally)

        row["first_call_s"], chm, _ = once()  # compiles, if compiling
        runs = [once() for _ in range(args.repeats)]
        if args.compile is not False or args.compare_eager:
            eager = once(compile=False) if args.compile is not False else runs[-1]
            diff = abs(runs[-1][1] - eager[1]).max()
            row["max_abs_diff_vs_eager_m"] = float(diff)
    seconds = [r[0] for r in runs]
    med = statistics.median(seconds)
    windows = lattice_windows(size, size, WINDOW - args.overlap)
    run = statistics.median(r[2].get("windows", 0.0) for r in runs)
    model_s = statistics.median(r[2].get("model", 0.0) for r in runs)
    tflops = gflop["total"] * windows / med / 1e3
    row.update(
        {
            "repeats": args.repeats,
            "seconds": summary(seconds),
            "windows": windows,
            "windows_run": int(run),
            "windows_per_s": summary([windows / s for s in seconds]),
            "windows_run_per_s": run / med,
            "model_windows_per_s": run / model_s if model_s else None,
            "stage_seconds": {s: statistics.median(r[2].get(s, 0.0) for r in runs) for s in STAGES},
            "tflops": tflops,
            "mfu": tflops / peak if peak else None,
            "mfu_backbone": gflop["backbone"] * windows / med / 1e3 / peak if peak else None,
            "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        }
    )
    return row


def line(row: dict[str, Any]) -> str:
    """One line per row, for the log."""
    what = (
        f"{row['preset']} precision {row['precision']} decoder {row['decoder']} compile "
        f"{row['compile']} {row.get('source', '')}"
    )
    if "skipped" in row:
        return f"{what}: skipped ({row['skipped']})"
    mfu = f", MFU {row['mfu']:.1%}" if row["mfu"] is not None else ""
    diff = row.get("max_abs_diff_vs_eager_m")
    return (
        f"{what} (ran in {row['dtype']}), {row['size']} px: "
        f"{row['windows_per_s']['median']:.1f} windows/s ({row['windows']} lattice windows in "
        f"{row['seconds']['median']:.3f} s; {row['windows_run']} run), "
        f"{row['tflops']:.2f} TFLOP/s{mfu}; first call {row['first_call_s']:.1f} s"
        + ("" if diff is None else f"; max |height - eager| {diff:.2e} m")
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = skip_reason(args.decoder, args.compile)
    env = {**versions(), "loadavg_start": load_average()}
    if why:
        row: dict[str, Any] = {
            "preset": args.preset,
            "precision": args.precision,
            "decoder": args.decoder,
            "compile": args.compile,
            "skipped": why,
        }
    else:
        row = measure(args)
    env["loadavg_end"] = load_average()
    print(line(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "command": sys.argv, "row": row}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
