"""Cost of ``xchm.predict`` around the model, against a naive loop, and seams vs overlap.

Two measurements in one run (``--parts``):

* **overhead**: for each preset (``--presets``; random weights, built with
  ``xchm.testing.responsive_model`` so that the output varies: same architecture
  and cost as ``load_model``), on an in-memory synthetic scene of ``--size`` x
  ``--size`` pixels (uint16 DN, bands nir/red/green, EPSG:32617, 2 m pixels), the
  median wall-clock time (``--repeats`` timed repeats after ``--warmup`` untimed
  ones, the variants interleaved repeat by repeat so that background load hits all
  alike; fewer repeats, but at least 3, if they would exceed ``--max-seconds``) of

  (a) ``xchm.predict(scene, model, overlap=O).values``: the whole pipeline (getting
      the model on the worker, dask graph, halo, normalisation, window gathering,
      model, Hann blending with ``F.fold``, xarray wrapping), with predict's default
      batch size;
  (b) the bare batched model forward over exactly the windows predict runs (the
      lattice windows touching the scene: ``window_span(0, size, 64, stride)`` per
      axis), from normalised, contiguous batches prepared outside the timed region,
      same batch size, ``torch.inference_mode`` (bf16 autocast on CUDA, as predict);
  (c) a naive reference-style loop for each stride in ``--naive-strides`` (default:
      the stride of (a), and 32, the reference's stride): whole scene in memory,
      ``card.normalize``, ``np.pad`` reflect by ``64 - stride``, windows at that stride
      (plus one flush with the far border), batches tiled in Python and converted to
      torch, triangular (tent) weights accumulated with numpy slicing.

  and (a0) ``xchm.predict`` with a "null model" (the model's card and parameters, but
  a forward that returns zeros at once): the pipeline without the model, a less
  noisy measure of its own cost than (a) - (b). Only (a), (a0) and (b) are warmed up
  (the naive loops use the same model).

  It prints the "pipeline overhead" (a)/(b) (ratio of the medians, and the median of
  the per-repeat ratios), 1 + (a0)/(b), (a)/(c), windows/s of each, and km2/h (at
  ``--pixel-size`` m pixels) of (a). For test-tiny the model is so small
  that (a)/(b) shows the pipeline's own cost; for a real backbone (dinov3-vits16)
  the goal is (a)/(b) <= 1.10 on CPU. As a check, the numpy loop run on predict's
  lattice with its Hann weights must reproduce (a) to float rounding.

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

torch uses all cores available to the process (``torch.set_num_threads``). On a
shared machine, compare only ratios measured in the same run. With the defaults the
whole run takes about 3-4 minutes on a 2-core CPU.

Run it from the repository root::

    .venv/bin/python benchmarks/predict_overhead.py
    .venv/bin/python benchmarks/predict_overhead.py --presets test-tiny --size 1024
    .venv/bin/python benchmarks/predict_overhead.py --parts seams --json seams.json
"""

from __future__ import annotations

import argparse
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
        choices=("overhead", "seams"),
        default=["overhead", "seams"],
        help="what to measure (default: both)",
    )
    p.add_argument(
        "--presets", nargs="+", default=list(DEFAULT_PRESETS), help="model presets (overhead)"
    )
    p.add_argument("--size", type=int, default=512, help="scene side in pixels (default 512)")
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
        help="windows per model call for (a), (b), (c) (default: predict's, 64 on CPU)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs (default 1)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=180.0,
        help="budget for the timed repeats of one preset; fewer repeats (but at least 3) if "
        "exceeded (default 180)",
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


def build_model(name: str) -> Any:
    """Build the preset with random weights, in eval mode on the CPU.

    ``xchm.testing.responsive_model`` (BatchNorm statistics calibrated on random
    chips): same architecture and cost as ``load_model``, but its output varies with
    the input, so that comparing the heights of (a) and (c) means something.
    """
    from xchm.testing import responsive_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xchm.RandomWeightsWarning)
        model = responsive_model(name)
    return model.eval()


def lattice_windows(height: int, width: int, stride: int) -> tuple[list[int], list[int]]:
    """Origins (global rows, columns) of the lattice windows predict runs on a scene."""
    sy, sx = window_span(0, height, WINDOW, stride), window_span(0, width, WINDOW, stride)
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


def autocast_for(device: torch.device) -> Any:
    """bf16 autocast on CUDA, as predict uses; nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def bare_forward(model: Any, batches: list[torch.Tensor], device: torch.device) -> None:
    """(b): the model alone over prepared batches."""
    with torch.inference_mode(), autocast_for(device):
        for x in batches:
            model(x, validate=False)


class NullForward(torch.nn.Module):
    """The model's card and parameters with a forward that returns zeros at once.

    ``xchm.predict`` with it times everything but the model itself (the model object
    is still copied, as predict copies the caller's model): the pipeline's own cost,
    with far less noise than (a) - (b).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.inner = model
        self.card = model.card

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
) -> np.ndarray:
    """Whole scene in memory, np.pad, Python tiling, weighted blending with numpy.

    ``ys``/``xs`` are window origins in scene coordinates (>= -pad).
    """
    _, h, w = raw.shape
    z = model.card.normalize(raw, axis=0)
    zp = np.pad(z, ((0, 0), (pad, pad), (pad, pad)), mode=mode)
    num = np.zeros(zp.shape[1:], dtype=np.float32)
    den = np.zeros(zp.shape[1:], dtype=np.float32)
    origins = [(y + pad, x + pad) for y in ys for x in xs]
    with torch.inference_mode(), autocast_for(device):
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
    """(c): the reference-style loop: reflect padding by 64 - stride, tent weights."""
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
    raw: np.ndarray, model: Any, stride: int, batch_size: int, device: torch.device
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


def measure_overhead(name: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Time (a), (a0), (b) and (c) for one preset on one scene; prints a summary."""
    load_start = load_average()
    print(f"\n== overhead: {name}, {args.size}x{args.size} px, overlap {args.overlap}", flush=True)
    model = build_model(name).to(device)
    batch = args.batch_size or (512 if device.type == "cuda" else 64)
    stride = WINDOW - args.overlap
    scene = make_scene(args.size, args.size, seed=1, res=args.pixel_size)
    raw = scene.values
    ys, xs = lattice_windows(args.size, args.size, stride)
    n_windows = len(ys) * len(xs)
    batches = forward_batches(scene, model, stride, batch, device)
    assert sum(len(b) for b in batches) == n_windows
    naive_strides = list(dict.fromkeys(args.naive_strides or [stride, REFERENCE_STRIDE]))
    # windows per naive run
    naive_counts = {s: len(naive_origins(args.size, s)) ** 2 for s in naive_strides}

    null = NullForward(model)
    runs: dict[str, Callable[[], Any]] = {
        "a_predict": lambda: (
            xchm.predict(scene, model, overlap=args.overlap, batch_size=args.batch_size).values
        ),
        "b_forward": lambda: bare_forward(model, batches, device),
        "a0_null_model": lambda: (
            xchm.predict(scene, null, overlap=args.overlap, batch_size=args.batch_size).values
        ),
    }
    for s in naive_strides:
        runs[f"c_naive_s{s}"] = lambda s=s: naive_predict(raw, model, s, batch, device)

    # Warm-up: predict (both models) and the forward; the naive loops use the same model.
    warm = {k: 0.0 for k in runs if not k.startswith("c_")}
    for _ in range(max(args.warmup, 1)):
        for k in warm:
            warm[k], _ = timed(runs[k], device)
    naive_share = sum(naive_counts.values()) / n_windows
    per_repeat = sum(warm.values()) + warm["b_forward"] * naive_share
    budget = int(args.max_seconds // max(per_repeat, 1e-9))
    repeats = max(1, min(args.repeats, max(budget, 3)))  # at least 3 (unless --repeats < 3)
    times: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, Any] = {}
    for _ in range(repeats):
        for k, fn in runs.items():
            t, outputs[k] = timed(fn, device)
            times[k].append(t)

    stats = {k: summary(ts) for k, ts in times.items()}
    a = stats["a_predict"]["median"]
    b = stats["b_forward"]["median"]
    area_km2 = args.size * args.size * args.pixel_size**2 / 1e6
    result: dict[str, Any] = {
        "preset": name,
        "size": args.size,
        "overlap": args.overlap,
        "stride": stride,
        "batch_size": batch,
        "repeats": repeats,
        "windows": n_windows,
        "windows_per_axis": [len(ys), len(xs)],
        "windows_area_equivalent": (args.size / stride) ** 2,
        "naive_windows": {str(s): c for s, c in naive_counts.items()},
        "times_s": stats,
        "ratio_a_over_b": a / b,
        "ratio_a_over_b_paired": summary(
            [ta / tb for ta, tb in zip(times["a_predict"], times["b_forward"], strict=True)]
        ),
        "pipeline_own_over_b": stats["a0_null_model"]["median"] / b,
        "ratio_a_over_c": {str(s): a / stats[f"c_naive_s{s}"]["median"] for s in naive_strides},
        "windows_per_s_a": n_windows / a,
        "windows_per_s_b": n_windows / b,
        "windows_per_s_c": {
            str(s): naive_counts[s] / stats[f"c_naive_s{s}"]["median"] for s in naive_strides
        },
        "km2_per_h_a": area_km2 / a * 3600,
        "loadavg": [load_start, load_average()],
    }
    # checks: predict = the numpy loop on its lattice; the naive loop differs (other windows)
    chm = outputs["a_predict"]
    check = lattice_predict(raw, model, stride, batch, device)
    result["max_abs_diff_a_lattice_numpy_m"] = float(np.abs(chm - check).max())
    result["std_height_a_m"] = float(chm.std())
    same = f"c_naive_s{stride}"
    if same in outputs:
        result["mean_abs_diff_a_c_same_stride_m"] = float(np.abs(chm - outputs[same]).mean())

    print(
        f"   windows: predict {n_windows} ({len(ys)}x{len(xs)}; area-equivalent "
        f"{result['windows_area_equivalent']:.0f}), naive "
        + ", ".join(f"stride {s}: {c}" for s, c in naive_counts.items())
        + f"; batch {batch}; {repeats} repeats; load average {result['loadavg'][0]} at start, "
        f"{result['loadavg'][1]} at end",
        flush=True,
    )
    for k, s in stats.items():
        print(
            f"   {k:14s} median {s['median']:8.3f} s (min {s['min']:.3f}, max {s['max']:.3f})",
            flush=True,
        )
    print(
        f"   (a)/(b) pipeline overhead {result['ratio_a_over_b']:.3f} (per repeat: median "
        f"{result['ratio_a_over_b_paired']['median']:.3f}, "
        f"{result['ratio_a_over_b_paired']['min']:.3f}-{result['ratio_a_over_b_paired']['max']:.3f})"
        f"; pipeline without the model (null model) / (b): "
        f"{result['pipeline_own_over_b']:.3f}; (a)/(c) "
        + ", ".join(f"stride {s}: {r:.3f}" for s, r in result["ratio_a_over_c"].items())
        + f"; windows/s (a) {result['windows_per_s_a']:.1f}, (b) {result['windows_per_s_b']:.1f}"
        + "".join(f", (c) stride {s} {v:.1f}" for s, v in result["windows_per_s_c"].items())
        + f"; (a) {result['km2_per_h_a']:.2f} km2/h",
        flush=True,
    )
    print(
        f"   check: max |(a) - numpy loop on predict's lattice and Hann weights| = "
        f"{result['max_abs_diff_a_lattice_numpy_m']:.2e} m (heights of (a): sd "
        f"{result['std_height_a_m']:.3f} m)",
        flush=True,
    )
    if "mean_abs_diff_a_c_same_stride_m" in result:
        print(
            f"   mean |(a) - (c) at stride {stride}| = "
            f"{result['mean_abs_diff_a_c_same_stride_m']:.3f} m (other windows and weights: "
            "an untrained model's windows disagree)",
            flush=True,
        )
    return result


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


# -- tables --------------------------------------------------------------------------------


def overhead_table(results: list[dict[str, Any]]) -> tuple[str, str]:
    """Markdown tables of the overhead medians (min-max) and of the throughput."""

    def mm(t: dict[str, float]) -> str:
        return f"{t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f})"

    def row_line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    strides = list(results[0]["ratio_a_over_c"])
    head = ["preset", "scene px", "overlap (stride)", "windows (a), (b)"]
    head += [f"windows (c) s{s}" for s in strides]
    head += ["(a) predict s", "(b) forward s", "(a0) null model s"]
    head += [f"(c) naive s{s} s" for s in strides]
    head += ["(a)/(b) (per-repeat min-max)", "1 + (a0)/(b)"] + [f"(a)/(c) s{s}" for s in strides]
    times = [row_line(head), "|" + "---|" * len(head)]
    head2 = ["preset", "repeats", "(a) windows/s", "(b) windows/s"]
    head2 += [f"(c) s{s} windows/s" for s in strides] + ["(a) km2/h"]
    rates = [row_line(head2), "|" + "---|" * len(head2)]
    for r in results:
        t = r["times_s"]
        cells = [r["preset"], f"{r['size']}x{r['size']}", f"{r['overlap']} ({r['stride']})"]
        cells += [str(r["windows"])] + [str(r["naive_windows"].get(s, "")) for s in strides]
        cells += [mm(t["a_predict"]), mm(t["b_forward"]), mm(t["a0_null_model"])]
        cells += [mm(t[f"c_naive_s{s}"]) for s in strides]
        paired = r["ratio_a_over_b_paired"]
        cells += [f"{r['ratio_a_over_b']:.3f} ({paired['min']:.3f}-{paired['max']:.3f})"]
        cells += [f"{1 + r['pipeline_own_over_b']:.3f}"]
        cells += [f"{r['ratio_a_over_c'][s]:.2f}" for s in strides]
        times.append(row_line(cells))
        cells = [r["preset"], str(r["repeats"])]
        cells += [f"{r['windows_per_s_a']:.1f}", f"{r['windows_per_s_b']:.1f}"]
        cells += [f"{r['windows_per_s_c'][s]:.1f}" for s in strides]
        cells += [f"{r['km2_per_h_a']:.1f}"]
        rates.append(row_line(cells))
    return "\n".join(times), "\n".join(rates)


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
    overhead = (
        [measure_overhead(name, device, args) for name in args.presets]
        if "overhead" in args.parts
        else []
    )
    seams = measure_seams(device, args) if "seams" in args.parts else []
    env["loadavg_end"] = load_average()
    env["seconds"] = round(time.perf_counter() - start, 1)
    print(
        f"\nload average (1, 5, 15 min): {env['loadavg_start']} at start, "
        f"{env['loadavg_end']} at end; {env['seconds']} s"
    )
    if overhead:
        times, rates = overhead_table(overhead)
        print("\n" + times + "\n\n" + rates)
    if seams:
        quality, cost = seams_table(seams)
        print("\n" + quality + "\n\n" + cost)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "overhead": overhead, "seams": seams}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
