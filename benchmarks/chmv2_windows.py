"""CHMv2 window size: seams and CPU speed of 64, 256 and 512 px windows (random weights).

For each window a CHMv2 model (random backbone; the head's weights spread so heights
vary by metres) predicts one 8-bit RGB scene through ``xchm.predict`` with no overlap
and with 16 px (``xchm.predict``'s default) and a quarter-window overlap (blending):

* **seam ratio**: mean |height step| between neighbouring pixels across a window edge,
  divided by the mean step everywhere else (1.0: edges are invisible);
* **speed** of the full ``chmv2`` (ViT-L/16 + DPT head): median seconds of one model
  call on one window, per window and per megapixel, and GFLOP per window (torch's
  FlopCounterMode, counted on the meta device: no compute).

``--seam-preset test-tiny-chmv2`` measures the seams with CHMv2's head on the tiny
backbone (minutes instead of hours on a busy CPU). Random weights show the geometry of
the tiling, not CHMv2's trained behaviour.

Run: ``.venv/bin/python benchmarks/chmv2_windows.py [--seam-preset chmv2] [--scene 576]``
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import xchm


def scene(size: int) -> object:
    """Return a smooth 8-bit RGB scene at 0.6 m with texture (like aerial imagery)."""
    import rioxarray  # noqa: F401

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (3, size // 16 + 1, size // 16 + 1))
    data = coarse.repeat(16, 1).repeat(16, 2)[:, :size, :size]
    data = np.clip(data + rng.integers(-25, 25, data.shape), 0, 255).astype(np.uint8)
    import xarray as xr

    return xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={
            "band": ["red", "green", "blue"],
            "y": 5e6 - 0.6 * np.arange(size),
            "x": 4e5 + 0.6 * np.arange(size),
        },
    ).rio.write_crs("EPSG:32617")


def seam_ratio(chm: np.ndarray, window: int, stride: int) -> float:
    """Mean step across window edges / mean step elsewhere (both axes)."""
    n = chm.shape[0]
    edges = {e for k in range(-window, n) for e in (k * stride, k * stride + window)}
    edges = sorted(e for e in edges if 0 < e < n)
    ratios = []
    for steps in (np.abs(np.diff(chm, axis=1)), np.abs(np.diff(chm, axis=0)).T):
        at = np.zeros(n - 1, bool)
        at[[e - 1 for e in edges]] = True  # step between pixel e-1 and e
        ratios.append(steps[:, at].mean() / steps[:, ~at].mean())
    return float(np.mean(ratios))


def gflop(window: int) -> float:
    """GFLOP of one ``chmv2`` window, counted on the meta device (shapes only)."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = xchm.load_model("chmv2", window=window)
        x = torch.randn(1, 3, window, window)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x, validate=False)
    return counter.get_total_flops() / 1e9


def seconds_per_window(window: int, repeats: int) -> float:
    """Median seconds of ``chmv2`` on one window (random weights, CPU, fp32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = xchm.load_model("chmv2", window=window)
    x = torch.randn(1, 3, window, window)
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--seam-preset", default="chmv2")
    parser.add_argument("--no-speed", action="store_true", help="seams and GFLOP only")
    args = parser.parse_args()
    image = scene(args.scene)
    print(
        f"torch threads {torch.get_num_threads()}, scene {args.scene} px, seams: {args.seam_preset}"
    )
    print(
        "| window | s/window | s/megapixel | GFLOP/window | seam ratio, overlap 0 | "
        "overlap 16 (the default) | overlap window/4 |"
    )
    print("|---|---|---|---|---|---|---|")
    for window in args.windows:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = xchm.load_model(args.seam_preset, window=window)
        with torch.no_grad():
            for p in model.decoder.parameters():
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
        seams = []
        for overlap in (0, 16, window // 4):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chm = xchm.predict(image, model, overlap=overlap, device="cpu").values
            seams.append(seam_ratio(chm, window, window - overlap))
        per = float("nan") if args.no_speed else seconds_per_window(window, args.repeats)
        print(
            f"| {window} | {per:.3f} | {per / (window * window / 1e6):.1f} | "
            f"{gflop(window):.1f} | " + " | ".join(f"{r:.2f}" for r in seams) + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()
