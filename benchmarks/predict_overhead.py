"""Cost of ``xchm.predict`` around the model, against a naive loop, and seams vs overlap.

Three measurements in one run (``--parts``):

* **overhead**: for each preset (``--presets``; random weights, built with
  ``xchm.testing.responsive_model`` so that the output varies: same architecture
  and cost as ``load_model``), each decoder (``--decoders``: reference and light;
  light rows are skipped with a note where ``load_model`` has no ``decoder=``) and
  each precision (``--precisions``; default ``auto``, plus ``fp32`` where auto is
  not fp32; every row names the precision asked and the dtype the model ran in), on
  an in-memory synthetic scene of ``--size`` x ``--size`` pixels (default 1024;
  uint16 DN, bands nir/red/green, EPSG:32617, 2 m pixels), the median wall-clock
  time (``--repeats`` timed repeats, default 3, after ``--warmup`` untimed runs on a
  256 px corner of the scene; all variants interleaved repeat by repeat so that
  background load hits all alike; fewer repeats, but at least 3, if the first
  repeat says they would exceed ``--max-seconds``) of

  (a) ``xchm.predict(scene, model, overlap=O, precision=P).values``: the whole
      pipeline (getting the model on the worker and its inference copy, dask graph,
      halo, normalisation, window gathering, model, Hann blending with ``F.fold``,
      xarray wrapping), with predict's default batch size (16 on CPU); the
      telemetry tally (:func:`xchm.inference.telemetry.collect`) gives the windows
      it ran and skipped;
  (b) the bare batched forward over exactly the lattice windows touching the scene
      (``window_span(0, size, 64, stride)`` per axis), from normalised, contiguous
      batches prepared outside the timed region, same batch size, precision P
      (autocast as predict's kernel), ``torch.inference_mode``, with the model
      object predict's kernel runs (``xchm.inference.runtime.get_model``: BatchNorm
      folded, channels-last decoder);
  (c) a naive reference-style loop, always fp32 with the reference decoder and
      batch ``--naive-batch-size`` (64), for each stride in ``--naive-strides``
      (default: the stride of (a), and 32, the reference's): whole scene in memory,
      ``card.normalize``, ``np.pad`` reflect by ``64 - stride``, windows at that
      stride (plus one flush with the far border), batches tiled in Python and
      converted to torch, triangular (tent) weights accumulated with numpy slicing.

  and (a0) ``xchm.predict`` with a "null model" (the model's card and parameters, but
  a forward that returns zeros at once): the pipeline without the model, a less
  noisy measure of its own cost than (a) - (b).

  It prints, per row, the "pipeline overhead" (a)/(b) (ratio of the medians, and the
  median of the per-repeat ratios), 1 + (a0)/(b), (a)/(c), windows/s and km2/h (at
  ``--pixel-size`` m pixels), and a targets table with issue 20's CPU ratios (set
  for dinov3-vits16 at 1024 px): windows/s of (a) over those of (c) at the same
  stride, both counting the naive loop's windows (the same scene coverage, so that
  predict's extra border windows count against it; this is (c) time / (a) time),
  target >= 1.5; (c) at stride 32 / (a) in wall time, target >= 3; (a)/(b), target
  <= 1.10. As a check (untimed, on the 256 px corner), the numpy loop run on
  predict's lattice with its Hann weights must reproduce (a) to float rounding.

* **seams**: with ``xchm.testing.fitted_model()`` (test-tiny fitted for a few
  seconds to a smooth target, so that window edges show when windows do not
  overlap), for each overlap in ``--seam-overlaps`` on smooth synthetic scenes of
  ``--seam-shape`` pixels (the tests' ``make_image``: 2500 + 1500 sin(y/9) cos(x/13)
  + noise; one scene per seed in ``--seam-seeds``, the first exactly the tests'
  image, the others with the pattern shifted by a random phase), medians over the
  scenes of

  - the seam ratio of the tests (mean |step between adjacent columns| where a window
    edge lies / the same elsewhere; ~1 means no seams), along x and along y;
  - a "jump ratio": the same for the step minus the mean of its two neighbours,
    which cancels the scene's own gradient (the plain ratio also depends on where
    the edges fall in the sin/cos pattern, which makes it noisy);
  - both for the naive tent-weighted loop (c) at the same stride (along x);
  - the cost: (64/stride)^2, the windows predict runs on the scene and on one
    interior 1024 px chunk (border windows make these exceed (64/stride)^2), and the
    measured time of predict (median of ``--seam-repeats``), all relative to the
    first overlap (0).

* **border**: per square scene size (``--border-sizes``, 256 to 8192 px) and stride
  (``--border-strides``, 48 and 32), the windows predict's kernel runs with
  ``--border-chunk`` px chunks (:func:`xchm.inference.benchmark.windows_run`: each
  chunk runs every lattice window touching it), the lattice windows touching the
  scene, the naive loop's windows and the ideal (size / stride)^2, and their ratios
  (counting only: no model). For ``--border-timed-sizes`` (256, 512, 1024) it also
  times predict with ``--border-preset`` (test-tiny; median of ``--border-repeats``)
  and reads the windows the kernel ran (and skipped) from the telemetry tally.

torch uses all cores available to the process (``torch.set_num_threads``). On a
shared machine, compare only ratios measured in the same run. The default run costs
3 repeats of about 2,600 reference-decoder ViT-S windows (a, b and the two naive
loops at 1024 px) plus the light rows: on a 2-core AVX2 CPU at load average ~3.7 one
repeat took 117 s at 512 px, i.e. ~7.5 min per repeat at 1024 px and ~25 min in all;
``--naive-repeats 1`` (the naive loops, 60 % of a repeat, timed once) makes it ~16 min.

Run it from the repository root::

    .venv/bin/python benchmarks/predict_overhead.py
    .venv/bin/python benchmarks/predict_overhead.py --presets test-tiny --size 512
    .venv/bin/python benchmarks/predict_overhead.py --parts border --border-timed-sizes
    .venv/bin/python benchmarks/predict_overhead.py --parts seams --json seams.json
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import torch
import xarray as xr

import xchm
from xchm.inference.predict import DEFAULT_CHUNK, DEFAULT_OVERLAP
from xchm.inference.windows import blend_weights, window_span

WINDOW = 64
DEFAULT_PRESETS = ("test-tiny", "dinov3-vits16")
PARTS = ("overhead", "seams", "border")
#: Side of the scene corner used for warm-ups and the numpy check (px).
CHECK_SIZE = 256
REFERENCE_STRIDE = 32


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to measure (default: all)",
    )
    p.add_argument(
        "--presets", nargs="+", default=list(DEFAULT_PRESETS), help="model presets (overhead)"
    )
    p.add_argument(
        "--size", type=int, default=1024, help="overhead scene side in pixels (default 1024)"
    )
    p.add_argument(
        "--precisions",
        nargs="+",
        choices=("auto", "fp32", "bf16", "fp16"),
        default=None,
        help="predict's precision= for (a), (b) and (a0) (default: auto, plus fp32 where auto "
        "is not fp32); the naive loop (c) is always fp32",
    )
    p.add_argument(
        "--decoders",
        nargs="+",
        choices=("reference", "light"),
        default=["reference", "light"],
        help="decoders for (a), (b) and (a0) (default: both; light rows are skipped with a "
        "note where load_model has no decoder= option); (c) uses the reference decoder",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=DEFAULT_OVERLAP,
        help=f"overlap of (a) and (b) (default {DEFAULT_OVERLAP}, predict's default)",
    )
    p.add_argument(
        "--naive-strides",
        type=int,
        nargs="+",
        default=None,
        help=f"strides of the naive loop (c) (default: the stride of (a), and {REFERENCE_STRIDE})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="windows per model call for (a), (a0) and (b) (default: predict's, 16 on CPU, "
        "512 on CUDA)",
    )
    p.add_argument(
        "--naive-batch-size",
        type=int,
        default=64,
        help="windows per model call of the naive loop (c) (default 64, the reference's)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    p.add_argument(
        "--naive-repeats",
        type=int,
        default=None,
        help="time the naive loops (c) in the first N repeats only (default: all); 1 cuts "
        "a default ViT-S run by about 40 %%",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help=f"untimed warm-up runs, on a {CHECK_SIZE} px corner of the scene (default 1)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="budget for the timed repeats of one preset; fewer repeats (but at least 3) if "
        "exceeded (default 600)",
    )
    p.add_argument(
        "--pixel-size", type=float, default=2.0, help="pixel size in metres for km2/h (default 2)"
    )
    p.add_argument(
        "--seam-shape",
        type=int,
        nargs=2,
        default=[256, 640],
        metavar=("HEIGHT", "WIDTH"),
        help="seam scene size in pixels (default 256 640)",
    )
    p.add_argument(
        "--seam-overlaps",
        type=int,
        nargs="+",
        default=[0, 8, 16, 24, 32],
        help="overlaps for the seam table (default 0 8 16 24 32)",
    )
    p.add_argument(
        "--seam-seeds",
        type=int,
        nargs="+",
        default=[5, 6, 7, 8],
        help="one seam scene per seed; the first is the tests' image, the others shift its "
        "pattern (default 5 6 7 8)",
    )
    p.add_argument(
        "--seam-repeats", type=int, default=5, help="timed predict repeats per overlap (default 5)"
    )
    p.add_argument(
        "--border-sizes",
        type=int,
        nargs="+",
        default=[256, 512, 1024, 2048, 4096, 8192],
        help="square scene sides for the border-window counts (default 256 ... 8192)",
    )
    p.add_argument(
        "--border-strides",
        type=int,
        nargs="+",
        default=[WINDOW - DEFAULT_OVERLAP, REFERENCE_STRIDE],
        help=f"strides of the border-window counts (default {WINDOW - DEFAULT_OVERLAP} "
        f"{REFERENCE_STRIDE})",
    )
    p.add_argument(
        "--border-chunk",
        type=int,
        default=DEFAULT_CHUNK,
        help=f"Dask chunk side of the border part (default {DEFAULT_CHUNK}, predict's)",
    )
    p.add_argument(
        "--border-timed-sizes",
        type=int,
        nargs="*",
        default=[256, 512, 1024],
        help="sizes at which predict is timed in the border part (default 256 512 1024)",
    )
    p.add_argument(
        "--border-preset",
        default="test-tiny",
        help="preset timed in the border part (default test-tiny)",
    )
    p.add_argument(
        "--border-repeats", type=int, default=3, help="timed predict repeats per size (default 3)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=available_cores(),
        help="torch.set_num_threads (default: all cores available to this process)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    return p.parse_args(argv)


def load_average() -> list[float] | None:
    """Return the 1, 5 and 15-minute load averages (other processes disturb timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# -- inputs and models ---------------------------------------------------------------------


def make_scene(
    height: int,
    width: int,
    *,
    seed: int = 0,
    res: float = 2.0,
    shift: tuple[int, int] = (0, 0),
) -> xr.DataArray:
    """Build a georeferenced (band, y, x) uint16 scene with smooth structure (tests' image).

    ``shift`` (rows, columns) moves the sin/cos pattern against the pixel grid.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 2500 + 1500 * np.sin((yy + shift[0]) / 9.0) * np.cos((xx + shift[1]) / 13.0)
    data = np.stack([base + rng.normal(0, 300, base.shape) * k for k in (1.0, 0.5, 0.4)])
    image = xr.DataArray(
        np.clip(data, 0, 9000).astype("uint16"),
        dims=("band", "y", "x"),
        coords={
            "band": ["nir", "red", "green"],
            "y": 7_000_000 - res * (np.arange(height) + 0.5),
            "x": 400_000 + res * (np.arange(width) + 0.5),
        },
    )
    return image.rio.write_crs("EPSG:32617")


def decoder_supported(decoder: str) -> str | None:
    """None if ``load_model`` builds ``decoder``, else why not (a note for the report)."""
    if decoder == "reference":
        return None
    from xchm.models.api import load_model

    if "decoder" not in inspect.signature(load_model).parameters:
        return f"xchm.load_model has no decoder= option yet: {decoder} decoder rows skipped"
    return None


def build_model(name: str, decoder: str = "reference") -> Any:
    """Build the preset with random weights, in eval mode on the CPU.

    ``xchm.testing.responsive_model`` (BatchNorm statistics calibrated on random
    chips): same architecture and cost as ``load_model``, but its output varies with
    the input, so that comparing the heights of (a) and (c) means something. The
    reference decoder is built without ``decoder=`` (the default of ``load_model``).
    """
    from xchm.testing import responsive_model

    options: dict[str, Any] = {} if decoder == "reference" else {"decoder": decoder}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xchm.RandomWeightsWarning)
        model = responsive_model(name, **options)
    return model.eval()


def kernel_model(model: Any, device: torch.device) -> Any:
    """Return the model object predict's kernel runs for ``model`` on ``device`` (for (b)).

    ``xchm.inference.runtime.get_model``, so that (b) runs whatever predict prepares
    for inference (e.g. BatchNorm folded into convolutions), not the caller's object.
    """
    from xchm.inference.runtime import get_model, spec_for

    spec, _ = spec_for(model)
    return get_model(spec, device)


def windows_skipped(tally: dict[str, float]) -> int | None:
    """All-nodata windows the kernel skipped, from a telemetry tally; None if not reported.

    The kernel reports ``windows_skipped`` only when some were skipped; an xchm whose
    ``count_windows`` has no ``skipped`` option does not count them at all.
    """
    from xchm.inference.telemetry import count_windows

    if "skipped" not in inspect.signature(count_windows).parameters:
        return None
    return int(tally.get("windows_skipped", 0))


def dtype_name(dtype: torch.dtype | None) -> str:
    """Name the dtype the model runs in: ``float32`` (no autocast), ``bfloat16``..."""
    return str(dtype or torch.float32).removeprefix("torch.")


def default_precisions(device: torch.device) -> list[str]:
    """``auto``, plus ``fp32`` where auto is not fp32 (bf16 on CUDA or native-bf16 CPUs)."""
    from xchm.inference.runtime import autocast_dtype

    return ["auto"] if autocast_dtype("auto", device) is None else ["auto", "fp32"]


def lattice_windows(height: int, width: int, stride: int) -> tuple[list[int], list[int]]:
    """Origins (global rows, columns) of the windows predict runs on a scene in one chunk.

    The lattice windows touching the scene, less the border windows predict leaves out
    (``window_span(..., size=)``, where this xchm has the border cut).
    """
    cut = "size" in inspect.signature(window_span).parameters
    sy, sx = (
        window_span(0, n, WINDOW, stride, **({"size": n} if cut else {})) for n in (height, width)
    )
    ys = [sy.first + k * stride for k in range(sy.count)]
    xs = [sx.first + k * stride for k in range(sx.count)]
    return ys, xs


def forward_batches(
    scene: xr.DataArray, model: Any, stride: int, batch_size: int, device: torch.device
) -> list[torch.Tensor]:
    """Normalised, contiguous batches of exactly the windows predict runs (for (b)).

    The scene is mirrored by one window at each border, as predict's halo is (dask's
    ``"reflect"`` is numpy's ``"symmetric"``).
    """
    _, h, w = scene.shape
    z = model.card.normalize(scene.values, axis=0)
    zp = np.pad(z, ((0, 0), (WINDOW, WINDOW), (WINDOW, WINDOW)), mode="symmetric")
    ys, xs = lattice_windows(h, w, stride)
    tiles = np.stack(
        [zp[:, y + WINDOW : y + 2 * WINDOW, x + WINDOW : x + 2 * WINDOW] for y in ys for x in xs]
    )
    return [
        torch.from_numpy(np.ascontiguousarray(tiles[i : i + batch_size])).to(device)
        for i in range(0, len(tiles), batch_size)
    ]


def autocast_to(dtype: torch.dtype | None, device: torch.device) -> Any:
    """Autocast to ``dtype`` on ``device`` as predict's kernel does (None: plain fp32)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def bare_forward(
    model: Any, batches: list[torch.Tensor], device: torch.device, dtype: torch.dtype | None
) -> None:
    """(b): the model alone over prepared batches, at predict's precision."""
    with torch.inference_mode(), autocast_to(dtype, device):
        for x in batches:
            model(x, validate=False)


class NullForward(torch.nn.Module):
    """The model's card and parameters with a forward that returns zeros at once.

    ``xchm.predict`` with it times everything but the model itself (predict still
    prepares its inference copy: the decoder, shared here, is copied and folded): the
    pipeline's own cost, with far less noise than (a) - (b).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.inner = model
        self.card = model.card
        self.decoder = model.decoder  # what predict's inference copy folds

    def features(self, x: torch.Tensor, *, validate: bool | None = None) -> Any:
        """Not used by predict (its presence marks a model object)."""
        return self.inner.features(x, validate=validate)

    def forward(self, x: torch.Tensor, *, validate: bool | None = None) -> torch.Tensor:
        """Zero heights, (B, 1, H, W)."""
        return x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])


# -- the naive reference-style loop --------------------------------------------------------


def tent_weights(window: int) -> np.ndarray:
    """Separable triangular weights, 1/window at the border to ~1 at the centre."""
    i = np.arange(window, dtype=np.float64) + 0.5
    t = 1.0 - np.abs(i - window / 2) / (window / 2)
    return np.outer(t, t).astype(np.float32)


def naive_origins(size: int, stride: int) -> list[int]:
    """Window origins of the naive loop in scene coordinates (padded by 64 - stride)."""
    pad = WINDOW - stride
    padded = size + 2 * pad
    origins = list(range(0, padded - WINDOW + 1, stride))
    if origins[-1] != padded - WINDOW:
        origins.append(padded - WINDOW)  # one window flush with the far border
    return [o - pad for o in origins]


def blend_numpy(
    raw: np.ndarray,
    model: Any,
    ys: list[int],
    xs: list[int],
    *,
    weights: np.ndarray,
    pad: int,
    mode: str,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Whole scene in memory, np.pad, Python tiling, weighted blending with numpy.

    ``ys``/``xs`` are window origins in scene coordinates (>= -pad); ``dtype``: autocast
    (None: fp32).
    """
    _, h, w = raw.shape
    z = model.card.normalize(raw, axis=0)
    zp = np.pad(z, ((0, 0), (pad, pad), (pad, pad)), mode=mode)
    num = np.zeros(zp.shape[1:], dtype=np.float32)
    den = np.zeros(zp.shape[1:], dtype=np.float32)
    origins = [(y + pad, x + pad) for y in ys for x in xs]
    with torch.inference_mode(), autocast_to(dtype, device):
        for start in range(0, len(origins), batch_size):
            part = origins[start : start + batch_size]
            tiles = np.stack([zp[:, y : y + WINDOW, x : x + WINDOW] for y, x in part])
            x_batch = torch.from_numpy(tiles).to(device)
            preds = model(x_batch, validate=False)[:, 0].float().cpu().numpy()
            for (y, x), p in zip(part, preds, strict=True):
                num[y : y + WINDOW, x : x + WINDOW] += p * weights
                den[y : y + WINDOW, x : x + WINDOW] += weights
    crop = (slice(pad, pad + h), slice(pad, pad + w))
    return num[crop] / den[crop]


def naive_predict(
    raw: np.ndarray, model: Any, stride: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """(c): the reference-style loop: reflect padding by 64 - stride, tent weights, fp32."""
    _, h, w = raw.shape
    return blend_numpy(
        raw,
        model,
        naive_origins(h, stride),
        naive_origins(w, stride),
        weights=tent_weights(WINDOW),
        pad=WINDOW - stride,
        mode="reflect",
        batch_size=batch_size,
        device=device,
    )


def lattice_predict(
    raw: np.ndarray,
    model: Any,
    stride: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Check (untimed): run the numpy loop on predict's lattice with its Hann weights.

    dask's ``boundary="reflect"`` repeats the edge pixel (numpy's ``"symmetric"``).
    This should reproduce ``xchm.predict`` to float rounding.
    """
    _, h, w = raw.shape
    ys, xs = lattice_windows(h, w, stride)
    return blend_numpy(
        raw,
        model,
        ys,
        xs,
        weights=blend_weights(WINDOW),
        pad=WINDOW,
        mode="symmetric",
        batch_size=batch_size,
        device=device,
        dtype=dtype,
    )


# -- timing --------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall-clock seconds of one call of ``fn`` (CUDA synchronised) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def summary(ts: list[float]) -> dict[str, float]:
    """Median, min and max of a list of times (seconds)."""
    return {"median": statistics.median(ts), "min": min(ts), "max": max(ts)}


#: Issue 20's CPU targets: (key, definition, comparison, target).
TARGETS = (
    (
        "windows_per_s_vs_naive",
        "windows/s of predict / windows/s of the naive loop (c) at predict's stride; both "
        "count the naive loop's windows (same scene coverage), i.e. (c) time / (a) time",
        ">=",
        1.5,
    ),
    (
        "speedup_vs_reference",
        f"(c) time at the reference's stride {REFERENCE_STRIDE} / (a) time (wall clock)",
        ">=",
        3.0,
    ),
    ("pipeline_overhead", "(a) time / (b) time (same precision, windows, batch)", "<=", 1.10),
)


def targets_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 20's ratios of one row, computed from its median times; None if not measured."""
    t = {k: v["median"] for k, v in row["times_s"].items()}
    a = t["a_predict"]
    values = {
        "windows_per_s_vs_naive": t.get(f"c_naive_s{row['stride']}", float("nan")) / a,
        "speedup_vs_reference": t.get(f"c_naive_s{REFERENCE_STRIDE}", float("nan")) / a,
        "pipeline_overhead": a / t["b_forward"],
    }
    out = []
    for key, definition, op, target in TARGETS:
        value = values[key]
        met = None if np.isnan(value) else bool(value >= target if op == ">=" else value <= target)
        out.append(
            {
                "key": key,
                "definition": definition,
                "value": None if np.isnan(value) else value,
                "target": f"{op} {target:g}",
                "met": met,
            }
        )
    return out


def measure_overhead(
    name: str, device: torch.device, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[str]]:
    """Time (a), (a0), (b) per precision and decoder, and (c), for one preset on one scene.

    Every variant runs once untimed (the naive loops excepted), then all are timed
    interleaved repeat by repeat. Returns one row per precision and decoder (each
    with the shared naive times) and notes on rows left out; prints a summary.
    """
    from xchm.inference.runtime import autocast_dtype
    from xchm.inference.telemetry import collect

    load_start = load_average()
    print(f"\n== overhead: {name}, {args.size}x{args.size} px, overlap {args.overlap}", flush=True)
    notes: list[str] = []
    decoders = []
    for decoder in dict.fromkeys(args.decoders):
        why = decoder_supported(decoder)
        if why:
            print(f"   note: {why}", flush=True)
            notes.append(f"{name}: {why}")
        else:
            decoders.append(decoder)
    precisions = list(dict.fromkeys(args.precisions or default_precisions(device)))
    models = {d: build_model(name, d).to(device) for d in decoders}
    # the naive loop is the reference's: fp32, reference decoder
    reference = models["reference"] if "reference" in models else build_model(name).to(device)
    batch = args.batch_size or (512 if device.type == "cuda" else 16)  # predict's default
    naive_batch = args.naive_batch_size
    stride = WINDOW - args.overlap
    scene = make_scene(args.size, args.size, seed=1, res=args.pixel_size)
    raw = scene.values
    ys, xs = lattice_windows(args.size, args.size, stride)
    n_windows = len(ys) * len(xs)
    naive_strides = list(dict.fromkeys(args.naive_strides or [stride, REFERENCE_STRIDE]))
    naive_counts = {s: len(naive_origins(args.size, s)) ** 2 for s in naive_strides}

    # warm-ups and the check run on a corner of the scene (cheap with a real backbone)
    corner = scene[:, : min(args.size, CHECK_SIZE), : min(args.size, CHECK_SIZE)]

    def predicted(
        image: xr.DataArray, model: Any, precision: str, log: list[dict[str, float]] | None
    ) -> np.ndarray:
        with collect() as tally:
            chm = xchm.predict(
                image, model, overlap=args.overlap, batch_size=args.batch_size, precision=precision
            )
        if log is not None:
            log.append(dict(tally))
        return np.asarray(chm)

    rows: list[dict[str, Any]] = []
    runs: dict[str, Callable[[], Any]] = {}
    warmups: dict[str, Callable[[], Any]] = {}
    tallies: dict[str, list[dict[str, float]]] = {}
    for decoder, model in models.items():
        # (b) runs the object predict's kernel runs (prepared for inference like it)
        ran = kernel_model(model, device)
        batches = forward_batches(scene, model, stride, batch, device)
        assert sum(len(b) for b in batches) == n_windows
        null = NullForward(model)
        for precision in precisions:
            dtype = autocast_dtype(precision, device)
            key = f"{decoder}/{precision}"
            tallies[key] = []
            p = functools.partial
            runs[f"{key}:a_predict"] = p(predicted, scene, model, precision, tallies[key])
            warmups[f"{key}:a_predict"] = p(predicted, corner, model, precision, None)
            runs[f"{key}:b_forward"] = p(bare_forward, ran, batches, device, dtype)
            warmups[f"{key}:b_forward"] = p(bare_forward, ran, batches[:2], device, dtype)
            runs[f"{key}:a0_null_model"] = p(predicted, scene, null, precision, None)
            warmups[f"{key}:a0_null_model"] = p(predicted, corner, null, precision, None)
            rows.append(
                {
                    "key": key,
                    "preset": name,
                    "decoder": decoder,
                    "precision": precision,
                    "dtype": dtype_name(dtype),
                    "model": model,
                }
            )
    for s in naive_strides:
        runs[f"c_naive_s{s}"] = functools.partial(
            naive_predict, raw, reference, s, naive_batch, device
        )

    # Warm-up on the corner: predict (both models) and two batches of the forward; the
    # naive loops use the same models. Then timed repeats, interleaved; the first
    # repeat's duration sets how many fit in --max-seconds (at least 3).
    start = time.perf_counter()
    for _ in range(args.warmup):
        for fn in warmups.values():
            timed(fn, device)
    print(f"   warm-up {time.perf_counter() - start:.1f} s", flush=True)
    times: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, Any] = {}
    repeats = args.repeats
    done = 0
    while done < repeats:
        for k, fn in runs.items():
            if k.startswith("c_") and args.naive_repeats and done >= args.naive_repeats:
                continue  # the naive loops are timed in the first --naive-repeats only
            t, outputs[k] = timed(fn, device)
            times[k].append(t)
        done += 1
        if done == 1:
            per_repeat = sum(ts[0] for ts in times.values())
            budget = int(args.max_seconds // max(per_repeat, 1e-9))
            repeats = min(args.repeats, max(budget, 3))  # at least 3 (unless --repeats < 3)
            print(f"   {repeats} repeats of {per_repeat:.0f} s", flush=True)

    stats = {k: summary(ts) for k, ts in times.items()}
    area_km2 = args.size * args.size * args.pixel_size**2 / 1e6
    naive_stats = {k: v for k, v in stats.items() if k.startswith("c_")}
    load_end = load_average()
    for i, row in enumerate(rows):
        key, model = row.pop("key"), row.pop("model")
        own = {k.split(":", 1)[1]: times[k] for k in times if k.startswith(key + ":")}
        row_stats = {**{k: summary(v) for k, v in own.items()}, **naive_stats}
        a = row_stats["a_predict"]["median"]
        b = row_stats["b_forward"]["median"]
        last = tallies[key][-1]
        row.update(
            {
                "size": args.size,
                "overlap": args.overlap,
                "stride": stride,
                "batch_size": batch,
                "naive_batch_size": naive_batch,
                "naive_precision": "fp32",
                "naive_decoder": "reference",
                "repeats": repeats,
                "naive_repeats": len(times[f"c_naive_s{naive_strides[0]}"]),
                "windows": n_windows,
                "windows_per_axis": [len(ys), len(xs)],
                "windows_run": int(last.get("windows", 0)),
                "windows_skipped": windows_skipped(last),
                "windows_area_equivalent": (args.size / stride) ** 2,
                "naive_windows": {str(s): c for s, c in naive_counts.items()},
                "times_s": row_stats,
                "ratio_a_over_b": a / b,
                "ratio_a_over_b_paired": summary(
                    [ta / tb for ta, tb in zip(own["a_predict"], own["b_forward"], strict=True)]
                ),
                "pipeline_own_over_b": row_stats["a0_null_model"]["median"] / b,
                "ratio_a_over_c": {
                    str(s): a / naive_stats[f"c_naive_s{s}"]["median"] for s in naive_strides
                },
                "windows_per_s_a": n_windows / a,
                "windows_per_s_a_run": int(last.get("windows", 0)) / a,
                "windows_per_s_a_naive_coverage": {
                    str(s): naive_counts[s] / a for s in naive_strides
                },
                "windows_per_s_b": n_windows / b,
                "windows_per_s_c": {
                    str(s): naive_counts[s] / naive_stats[f"c_naive_s{s}"]["median"]
                    for s in naive_strides
                },
                "km2_per_h_a": area_km2 / a * 3600,
                "loadavg": [load_start, load_end],
            }
        )
        row["targets"] = targets_of(row)
        chm = outputs[f"{key}:a_predict"]
        row["std_height_a_m"] = float(chm.std())
        if i == 0:  # check (untimed, once per preset, on the corner): predict = numpy loop
            dtype = autocast_dtype(row["precision"], device)
            mine = predicted(corner, model, row["precision"], None)
            check = lattice_predict(corner.values, model, stride, batch, device, dtype)
            row["max_abs_diff_a_lattice_numpy_m"] = float(np.abs(mine - check).max())
            row["check_size"] = corner.shape[1]
        same = f"c_naive_s{stride}"
        if same in outputs:
            row["mean_abs_diff_a_c_same_stride_m"] = float(np.abs(chm - outputs[same]).mean())
        print_row(row)
    return rows, notes


def print_row(row: dict[str, Any]) -> None:
    """One row's summary (the tables come at the end of the run)."""
    print(
        f"   -- {row['preset']}, decoder {row['decoder']}, precision {row['precision']} "
        f"(ran in {row['dtype']}): windows: predict lattice {row['windows']} "
        f"({row['windows_per_axis'][0]}x{row['windows_per_axis'][1]}; run "
        f"{row['windows_run']}, skipped {row['windows_skipped']}; area-equivalent "
        f"{row['windows_area_equivalent']:.0f}), naive "
        + ", ".join(f"stride {s}: {c}" for s, c in row["naive_windows"].items())
        + f"; batch {row['batch_size']} (naive {row['naive_batch_size']}); {row['repeats']} "
        f"repeats; load average {row['loadavg'][0]} at start, {row['loadavg'][1]} at end",
        flush=True,
    )
    for k, s in row["times_s"].items():
        print(
            f"   {k:14s} median {s['median']:8.3f} s (min {s['min']:.3f}, max {s['max']:.3f})",
            flush=True,
        )
    paired = row["ratio_a_over_b_paired"]
    print(
        f"   (a)/(b) pipeline overhead {row['ratio_a_over_b']:.3f} (per repeat: median "
        f"{paired['median']:.3f}, {paired['min']:.3f}-{paired['max']:.3f}); pipeline without "
        f"the model (null model) / (b): {row['pipeline_own_over_b']:.3f}; (a)/(c) "
        + ", ".join(f"stride {s}: {r:.3f}" for s, r in row["ratio_a_over_c"].items())
        + f"; windows/s (a) {row['windows_per_s_a']:.1f}, (b) {row['windows_per_s_b']:.1f}"
        + "".join(f", (c) stride {s} {v:.1f}" for s, v in row["windows_per_s_c"].items())
        + f"; (a) {row['km2_per_h_a']:.2f} km2/h",
        flush=True,
    )
    if "max_abs_diff_a_lattice_numpy_m" in row:
        print(
            f"   check: max |(a) - numpy loop on predict's lattice and Hann weights| = "
            f"{row['max_abs_diff_a_lattice_numpy_m']:.2e} m (heights of (a): sd "
            f"{row['std_height_a_m']:.3f} m)",
            flush=True,
        )
    if "mean_abs_diff_a_c_same_stride_m" in row:
        print(
            f"   mean |(a) - (c) at stride {row['stride']}| = "
            f"{row['mean_abs_diff_a_c_same_stride_m']:.3f} m (other windows and weights: "
            "an untrained model's windows disagree)",
            flush=True,
        )


# -- seams ---------------------------------------------------------------------------------


def _edge_positions(origins: list[int], n_steps: int) -> np.ndarray:
    """Boolean mask over steps: step j (between j and j + 1) lies at a window edge."""
    right = np.arange(n_steps) + 1  # the index right of (below) each step
    return np.isin(right, sorted(set(origins) | {o + WINDOW for o in origins}))


def seam_ratio(chm: np.ndarray, origins: list[int], axis: int) -> float:
    """Mean |step| across window edges / mean |step| elsewhere, along ``axis`` (1: columns).

    A step between indices j and j + 1 is at a window edge when j + 1 is the first
    index of a window or one past its last: the tests' ``_seam_ratio`` for a lattice
    with origins k * stride. On the smooth test scene it also depends on where the
    edges fall in the sin/cos pattern (the scene's own steps), hence the shifted scenes.
    """
    steps = np.moveaxis(np.abs(np.diff(chm, axis=axis)), axis, 1)
    edge = _edge_positions(origins, steps.shape[1])
    return float(steps[:, edge].mean() / steps[:, ~edge].mean())


def jump_ratios(chm: np.ndarray, origins: list[int], axis: int, patch: int) -> tuple[float, float]:
    """Jump ratio at window edges, and the same at the ViT's patch boundaries (a control).

    The jump at step j is |d_j - (d_{j-1} + d_{j+1}) / 2|, d being the signed steps
    along ``axis``: a jump against the local gradient, ~0 for a smooth surface even
    where its gradient is large, so the scene's own structure cancels and the ratio
    is less noisy than :func:`seam_ratio`. Returns the mean jump at window edges and
    at patch boundaries inside windows that are no window edge (origin + k * patch),
    each divided by the mean jump at the other steps (steps next to either, which
    see half of a jump, are left out). The control is the floor a 16-px grid gives
    with this model whatever the blending (NaN when every patch boundary is an edge).
    """
    d = np.moveaxis(np.diff(chm, axis=axis), axis, 1)
    r = np.abs(d[:, 1:-1] - 0.5 * (d[:, :-2] + d[:, 2:]))
    right = np.arange(r.shape[1]) + 2  # the index right of (below) each step of r
    edges = set(origins) | {o + WINDOW for o in origins}
    patches = {o + k * patch for o in origins for k in range(1, WINDOW // patch)} - edges
    marked = sorted(edges | patches)
    near = np.isin(right - 1, marked) | np.isin(right + 1, marked)
    plain = r[:, ~np.isin(right, marked) & ~near].mean()
    at_edges = r[:, np.isin(right, sorted(edges))].mean() / plain
    at_patches = np.isin(right, sorted(patches))
    control = r[:, at_patches].mean() / plain if at_patches.any() else float("nan")
    return float(at_edges), float(control)


def seam_scenes(height: int, width: int, seeds: list[int], res: float) -> list[xr.DataArray]:
    """One scene per seed: the first is the tests' image, the others shift its pattern."""
    scenes = []
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(1000 + seed)
        shift = (0, 0) if i == 0 else (int(rng.integers(0, 57)), int(rng.integers(0, 82)))
        scenes.append(make_scene(height, width, seed=seed, res=res, shift=shift))
    return scenes


def chunk_windows(stride: int, chunk: int = DEFAULT_CHUNK) -> int:
    """Windows predict runs for one interior ``chunk`` x ``chunk`` block (halo included)."""
    span = window_span(chunk, 2 * chunk, WINDOW, stride)
    return span.count**2


def measure_seams(device: torch.device, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Seam ratios, compute and time of predict per overlap with the fitted test-tiny."""
    from xchm.testing import fitted_model

    height, width = args.seam_shape
    print(f"\n== seams: fitted test-tiny, {height}x{width} px, seeds {args.seam_seeds}", flush=True)
    t0 = time.perf_counter()
    model = fitted_model()
    print(f"   fitted in {time.perf_counter() - t0:.1f} s", flush=True)
    batch = args.batch_size or (512 if device.type == "cuda" else 64)
    scenes = seam_scenes(height, width, args.seam_seeds, args.pixel_size)
    patch = model.backbone.patch_embed.proj.kernel_size[0]
    rows = []
    for overlap in args.seam_overlaps:
        stride = WINDOW - overlap
        ys, xs = lattice_windows(height, width, stride)
        naive_xs = naive_origins(width, stride)
        keys = ("seam_x", "seam_y", "jump_x", "jump_y", "control_x", "control_y")
        m: dict[str, list[float]] = {k: [] for k in (*keys, "naive_seam_x", "naive_jump_x")}
        for scene in scenes:
            chm = xchm.predict(scene, model, overlap=overlap, batch_size=args.batch_size).values
            m["seam_x"].append(seam_ratio(chm, xs, axis=1))
            m["seam_y"].append(seam_ratio(chm, ys, axis=0))
            for axis, origins, name in ((1, xs, "x"), (0, ys, "y")):
                jump, control = jump_ratios(chm, origins, axis, patch)
                m[f"jump_{name}"].append(jump)
                m[f"control_{name}"].append(control)
            naive = naive_predict(scene.values, model, stride, batch, device)
            m["naive_seam_x"].append(seam_ratio(naive, naive_xs, axis=1))
            m["naive_jump_x"].append(jump_ratios(naive, naive_xs, 1, patch)[0])
        rows.append(
            {
                "overlap": overlap,
                "stride": stride,
                "compute_relative": (WINDOW / stride) ** 2,
                "windows": len(ys) * len(xs),
                "windows_per_chunk": chunk_windows(stride),
                **{k: summary(v) for k, v in m.items()},
            }
        )
    # time predict per overlap, interleaved over repeats (the first scene)
    scene = scenes[0]
    times: dict[int, list[float]] = {o: [] for o in args.seam_overlaps}
    for r in range(args.seam_repeats + 1):  # the first round is a warm-up
        for o in args.seam_overlaps:
            t, _ = timed(
                lambda o=o: (
                    xchm.predict(scene, model, overlap=o, batch_size=args.batch_size).values
                ),
                device,
            )
            if r:
                times[o].append(t)
    base = rows[0]
    base_time = statistics.median(times[base["overlap"]])
    for row in rows:
        ts = times[row["overlap"]]
        row["time_s"] = summary(ts)
        row["time_relative"] = statistics.median(ts) / base_time
        row["windows_relative"] = row["windows"] / base["windows"]
        row["windows_per_chunk_relative"] = row["windows_per_chunk"] / base["windows_per_chunk"]
    for row in rows:
        print(
            f"   overlap {row['overlap']:2d} stride {row['stride']:2d}: seam ratio x "
            f"{row['seam_x']['median']:.2f} y {row['seam_y']['median']:.2f}; jump ratio x "
            f"{row['jump_x']['median']:.2f} y {row['jump_y']['median']:.2f} (patch control x "
            f"{row['control_x']['median']:.2f} y {row['control_y']['median']:.2f}); naive tent "
            f"seam x {row['naive_seam_x']['median']:.2f}, jump x "
            f"{row['naive_jump_x']['median']:.2f}; compute {row['compute_relative']:.2f}x, "
            f"{row['windows']} windows ({row['windows_relative']:.2f}x; per {DEFAULT_CHUNK} px "
            f"chunk {row['windows_per_chunk_relative']:.2f}x), time "
            f"{row['time_s']['median']:.3f} s ({row['time_relative']:.2f}x)",
            flush=True,
        )
    return rows


# -- border windows ------------------------------------------------------------------------


def border_counts(size: int, stride: int, chunk: int) -> dict[str, Any]:
    """Windows of a ``size`` px square scene at ``stride``, against the ideal (size/stride)^2.

    ``windows_run``: what predict's kernel runs with ``chunk`` px chunks (each chunk runs
    every window of the scene touching it: :func:`xchm.inference.benchmark.windows_run`);
    ``one_chunk``: what it runs in one chunk (the lattice less the border windows predict
    cuts); ``lattice``: every lattice window touching the scene; ``naive``: the naive
    loop's (padding by 64 - stride, one window flush with the far border).
    """
    from xchm.inference.benchmark import lattice_windows as lattice_count
    from xchm.inference.benchmark import windows_run

    ideal = (size / stride) ** 2
    run = windows_run(size, size, chunk, stride)
    lattice = lattice_count(size, size, stride)
    ys, xs = lattice_windows(size, size, stride)
    naive = len(naive_origins(size, stride)) ** 2
    return {
        "size": size,
        "stride": stride,
        "overlap": WINDOW - stride,
        "chunk": chunk,
        "ideal": ideal,
        "windows_run": run,
        "one_chunk": len(ys) * len(xs),
        "lattice": lattice,
        "naive": naive,
        "run_over_ideal": run / ideal,
        "one_chunk_over_ideal": len(ys) * len(xs) / ideal,
        "lattice_over_ideal": lattice / ideal,
        "naive_over_ideal": naive / ideal,
        "run_over_lattice": run / lattice,
        "run_over_naive": run / naive,
    }


def measure_border(device: torch.device, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Border-window counts per scene size and stride; predict timed for the smaller sizes.

    Counting needs no model. For each size in ``--border-timed-sizes`` predict runs
    with ``--border-preset`` on a scene in ``--border-chunk`` px Dask chunks (one
    warm-up, then the median of ``--border-repeats``), with
    :func:`xchm.inference.telemetry.collect` around it for the windows the kernel ran
    (and skipped, where it reports them).
    """
    from xchm.inference.telemetry import collect

    chunk = args.border_chunk
    print(
        f"\n== border windows: sizes {args.border_sizes} px, strides {args.border_strides}, "
        f"chunk {chunk} px; predict timed with {args.border_preset} for "
        f"{args.border_timed_sizes} px",
        flush=True,
    )
    rows = [
        border_counts(size, stride, chunk)
        for size in args.border_sizes
        for stride in args.border_strides
    ]
    timed_sizes = set(args.border_timed_sizes)
    model = build_model(args.border_preset).to(device) if timed_sizes else None
    for row in rows:
        if row["size"] not in timed_sizes:
            continue
        size = row["size"]
        scene = make_scene(size, size, seed=1, res=args.pixel_size)
        image = scene.chunk({"band": -1, "y": chunk, "x": chunk})

        def once(image: xr.DataArray = image, overlap: int = row["overlap"]) -> dict[str, float]:
            with collect() as tally:
                xchm.predict(image, model, overlap=overlap, batch_size=args.batch_size).compute()
            return dict(tally)

        timed(once, device)  # warm-up
        ts, tallies = [], []
        for _ in range(args.border_repeats):
            t, tally = timed(once, device)
            ts.append(t)
            tallies.append(tally)
        t_med = statistics.median(ts)
        row.update(
            {
                "preset": args.border_preset,
                "time_s": summary(ts),
                "tally_windows": int(tallies[-1].get("windows", 0)),
                "tally_windows_skipped": windows_skipped(tallies[-1]),
                "ms_per_ideal_window": 1e3 * t_med / row["ideal"],
                "ms_per_window_run": 1e3 * t_med / max(int(tallies[-1].get("windows", 0)), 1),
            }
        )
    for row in rows:
        line = (
            f"   {row['size']:5d} px stride {row['stride']}: run {row['windows_run']} "
            f"(x ideal {row['run_over_ideal']:.2f}), one chunk {row['one_chunk']} "
            f"({row['one_chunk_over_ideal']:.2f}), lattice {row['lattice']} "
            f"({row['lattice_over_ideal']:.2f}), naive {row['naive']} "
            f"({row['naive_over_ideal']:.2f}), ideal {row['ideal']:.0f}"
        )
        if "time_s" in row:
            line += (
                f"; predict {row['time_s']['median']:.3f} s, tally windows "
                f"{row['tally_windows']}, skipped {row['tally_windows_skipped']}"
            )
        print(line, flush=True)
    return rows


# -- tables --------------------------------------------------------------------------------


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _head(cells: list[str]) -> list[str]:
    return [_line(cells), "|" + "---|" * len(cells)]


def _row_name(r: dict[str, Any]) -> list[str]:
    return [r["preset"], f"{r['precision']} ({r['dtype']})", r["decoder"]]


def overhead_table(results: list[dict[str, Any]]) -> tuple[str, str]:
    """Markdown tables of the overhead medians (min-max) and of the throughput."""

    def mm(t: dict[str, float]) -> str:
        return f"{t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f})"

    strides = list(results[0]["ratio_a_over_c"])
    head = ["preset", "precision (ran in)", "decoder", "scene px", "overlap (stride)"]
    head += ["windows (a) lattice / run / skipped"]
    head += [f"windows (c) s{s}" for s in strides]
    head += ["(a) predict s", "(b) forward s", "(a0) null model s"]
    head += [f"(c) naive s{s} s" for s in strides]
    head += ["(a)/(b) (per-repeat min-max)", "1 + (a0)/(b)"] + [f"(a)/(c) s{s}" for s in strides]
    times = _head(head)
    head2 = ["preset", "precision (ran in)", "decoder", "repeats (naive)", "batch (naive)"]
    head2 += ["(a) lattice windows/s", "(a) windows run/s"]
    head2 += [f"(a) s{s}-coverage windows/s" for s in strides]
    head2 += ["(b) windows/s"] + [f"(c) s{s} windows/s" for s in strides] + ["(a) km2/h"]
    rates = _head(head2)
    for r in results:
        t = r["times_s"]
        skipped = "-" if r["windows_skipped"] is None else str(r["windows_skipped"])
        cells = _row_name(r) + [f"{r['size']}x{r['size']}", f"{r['overlap']} ({r['stride']})"]
        cells += [f"{r['windows']} / {r['windows_run']} / {skipped}"]
        cells += [str(r["naive_windows"].get(s, "")) for s in strides]
        cells += [mm(t["a_predict"]), mm(t["b_forward"]), mm(t["a0_null_model"])]
        cells += [mm(t[f"c_naive_s{s}"]) for s in strides]
        paired = r["ratio_a_over_b_paired"]
        cells += [f"{r['ratio_a_over_b']:.3f} ({paired['min']:.3f}-{paired['max']:.3f})"]
        cells += [f"{1 + r['pipeline_own_over_b']:.3f}"]
        cells += [f"{r['ratio_a_over_c'][s]:.2f}" for s in strides]
        times.append(_line(cells))
        cells = _row_name(r) + [f"{r['repeats']} ({r['naive_repeats']})"]
        cells += [f"{r['batch_size']} ({r['naive_batch_size']})"]
        cells += [f"{r['windows_per_s_a']:.1f}", f"{r['windows_per_s_a_run']:.1f}"]
        cells += [f"{r['windows_per_s_a_naive_coverage'][s]:.1f}" for s in strides]
        cells += [f"{r['windows_per_s_b']:.1f}"]
        cells += [f"{r['windows_per_s_c'][s]:.1f}" for s in strides]
        cells += [f"{r['km2_per_h_a']:.1f}"]
        rates.append(_line(cells))
    return "\n".join(times), "\n".join(rates)


def targets_table(results: list[dict[str, Any]]) -> str:
    """Markdown table of issue 20's CPU ratios per row: value, target, met."""
    head = ["preset", "precision (ran in)", "decoder", "scene px", "ratio", "value", "target"]
    lines = _head([*head, "met"])
    for r in results:
        for t in r["targets"]:
            value = "n/a" if t["value"] is None else f"{t['value']:.2f}"
            met = {None: "n/a", True: "yes", False: "no"}[t["met"]]
            cells = _row_name(r) + [str(r["size"]), t["key"], value, t["target"], met]
            lines.append(_line(cells))
    definitions = [f"- {key}: {definition}" for key, definition, _, _ in TARGETS]
    return "\n".join(lines + ["", *definitions])


def border_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the border-window counts (and times where measured)."""
    head = ["scene px", "stride", "ideal (size/stride)^2", "windows run (x ideal)"]
    head += ["one chunk, border cut (x ideal)", "lattice (x ideal)", "naive (x ideal)"]
    head += ["run / lattice", "run / naive"]
    head += ["predict s (min-max)", "tally windows / skipped", "ms per ideal window"]
    lines = _head(head)
    for r in rows:
        cells = [str(r["size"]), str(r["stride"]), f"{r['ideal']:.0f}"]
        cells += [f"{r['windows_run']} ({r['run_over_ideal']:.2f})"]
        cells += [f"{r['one_chunk']} ({r['one_chunk_over_ideal']:.2f})"]
        cells += [f"{r['lattice']} ({r['lattice_over_ideal']:.2f})"]
        cells += [f"{r['naive']} ({r['naive_over_ideal']:.2f})"]
        cells += [f"{r['run_over_lattice']:.2f}", f"{r['run_over_naive']:.2f}"]
        if "time_s" in r:
            t = r["time_s"]
            skipped = "-" if r["tally_windows_skipped"] is None else r["tally_windows_skipped"]
            cells += [f"{t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f})"]
            cells += [f"{r['tally_windows']} / {skipped}", f"{r['ms_per_ideal_window']:.2f}"]
        else:
            cells += ["", "", ""]
        lines.append(_line(cells))
    return "\n".join(lines)


def seams_table(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """Markdown tables of the seam results (medians over the scenes; min-max) and costs."""
    header = (
        "| overlap | stride | seam ratio x (min-max) | seam ratio y (min-max) "
        "| jump ratio x (min-max) | jump ratio y (min-max) | patch control x / y "
        "| naive tent seam / jump x |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]

    def mm(s: dict[str, float]) -> str:
        return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"

    for r in rows:
        lines.append(
            f"| {r['overlap']} | {r['stride']} | {mm(r['seam_x'])} | {mm(r['seam_y'])} "
            f"| {mm(r['jump_x'])} | {mm(r['jump_y'])} "
            f"| {r['control_x']['median']:.2f} / {r['control_y']['median']:.2f} "
            f"| {r['naive_seam_x']['median']:.2f} / {r['naive_jump_x']['median']:.2f} |"
        )
    header = (
        "| overlap | stride | (64/stride)^2 | windows on the scene (x overlap 0) "
        f"| windows per {DEFAULT_CHUNK} px chunk (x overlap 0) | predict time s (min-max) "
        "| time x overlap 0 |"
    )
    cost = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        t = r["time_s"]
        cost.append(
            f"| {r['overlap']} | {r['stride']} | {r['compute_relative']:.2f} "
            f"| {r['windows']} ({r['windows_relative']:.2f}) "
            f"| {r['windows_per_chunk']} ({r['windows_per_chunk_relative']:.2f}) "
            f"| {t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f}) | {r['time_relative']:.2f} |"
        )
    return "\n".join(lines), "\n".join(cost)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as predict picks
    env = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "device": device.type,
        "torch": torch.__version__,
        "xchm": xchm.__version__,
        "threads": torch.get_num_threads(),
        "cores": available_cores(),
        "loadavg_start": load_average(),
    }
    print(
        f"{env['date']}: device {device.type}, torch {env['torch']}, xchm {env['xchm']}, "
        f"torch threads {env['threads']} ({env['cores']} cores); load average "
        f"{env['loadavg_start']}",
        flush=True,
    )
    start = time.perf_counter()
    overhead: list[dict[str, Any]] = []
    notes: list[str] = []
    if "overhead" in args.parts:
        for name in args.presets:
            rows, why = measure_overhead(name, device, args)
            overhead += rows
            notes += why
    seams = measure_seams(device, args) if "seams" in args.parts else []
    border = measure_border(device, args) if "border" in args.parts else []
    env["loadavg_end"] = load_average()
    env["seconds"] = round(time.perf_counter() - start, 1)
    print(
        f"\nload average (1, 5, 15 min): {env['loadavg_start']} at start, "
        f"{env['loadavg_end']} at end; {env['seconds']} s\ncommand: {env['command']}"
    )
    for note in notes:
        print(f"note: {note}")
    if overhead:
        times, rates = overhead_table(overhead)
        print("\n" + times + "\n\n" + rates)
        print(
            "\nTargets (issue 20, CPU; for dinov3-vits16 at 1024 px):\n\n" + targets_table(overhead)
        )
    if seams:
        quality, cost = seams_table(seams)
        print("\n" + quality + "\n\n" + cost)
    if border:
        print("\nBorder windows:\n\n" + border_table(border))
    if args.json:
        report = {"environment": env, "notes": notes, "overhead": overhead, "seams": seams}
        with open(args.json, "w") as f:
            json.dump({**report, "border": border}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
