"""Forward-pass throughput and FLOPs of xchm's canopy height models.

For each model preset this script builds the model once (random weights are fine
for speed), then measures on batches of normalised 64x64 chips:

* chips/s of the full model (``model(x)``: DINOv3 backbone + CHM decoder) and of
  the backbone alone (``model.features(x)``), as the median (and min/max) over
  timed repeats, after warm-up runs; the two are interleaved repeat by repeat so
  that background load on a shared machine hits both alike;
* GFLOP per chip of the backbone, analytic (from the ViT's shape) and counted
  with ``torch.utils.flop_counter.FlopCounterMode`` on one chip, plus the counted
  GFLOP of the decoder and of the whole model. FlopCounterMode reports FLOPs
  (one multiply-add = 2 FLOPs), only for matmuls, convolutions and attention;
  the printed numbers are what it gives, in GFLOP (1e9 FLOPs);
* achieved GFLOP/s (counted GFLOP per chip x chips/s) and, on CUDA, the model
  FLOPs utilisation (MFU) against ``--peak-tflops``.

Timing budget: ``--max-seconds`` (default 60) bounds the timed part of each
preset. After the warm-ups, the number of timed repeats is cut so that
``repeats x (time of one full + one backbone batch)`` stays within it (at least
one repeat). The batch size is the same for all presets, so that chips/s compare
with the reference anchors at batch 64. With the defaults the whole run takes
about two minutes on a 2-core CPU.

Run it from the repository root::

    .venv/bin/python benchmarks/model_forward.py
    .venv/bin/python benchmarks/model_forward.py --json results.json
    .venv/bin/python benchmarks/model_forward.py --presets dinov3-vitl16-sat --bf16  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import xchm
from xchm.models.network import CanopyHeightModel

DEFAULT_PRESETS = ("test-tiny", "dinov3-vits16", "dinov3-vitl16-sat")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--presets", nargs="+", default=list(DEFAULT_PRESETS), help="model presets to measure"
    )
    p.add_argument("--batch-size", type=int, default=64, help="chips per forward (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (default 2)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="budget for the timed repeats of one preset; fewer repeats if exceeded (default 60)",
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available, else cpu)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=available_cores(),
        help="torch.set_num_threads (default: all cores available to this process)",
    )
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (meant for CUDA)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="peak TFLOP/s for MFU on CUDA (default 989: H100 SXM dense bf16)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    return p.parse_args(argv)


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """Return the 1, 5 and 15-minute load averages (other processes disturb timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def device_name(device: torch.device) -> str:
    """Human-readable name of the device (GPU model or CPU model)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU ({name or 'unknown'})"


def build_model(name: str, device: torch.device) -> CanopyHeightModel:
    """Build the preset in eval mode on ``device``, random weights, no input validation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xchm.RandomWeightsWarning)
        model = xchm.load_model(name)
    model.validate_inputs = False  # skip the per-call NaN check: not part of the model's cost
    return model.eval().to(device)


# -- FLOPs ---------------------------------------------------------------------------------


def analytic_backbone_gflop(model: nn.Module) -> float:
    """GFLOP per chip of the ViT backbone, from its shape (2 FLOPs per multiply-add).

    With N tokens (1 cls + registers + patches), width D and per block:
    qkv 3*2*N*D^2, output projection 2*N*D^2, attention scores and weighted sum
    2*2*N^2*D, MLP 2*N*sum(in*out of its linear layers) (= 2*2*N*D*H for a GELU
    MLP of hidden width H, 3*2*N*D*H for the 7B's SwiGLU); plus the patch
    embedding 2*patches*(C*p*p)*D. Norms, activations, RoPE and layer scale are
    left out (a fraction of a percent). Only the blocks the model runs count.
    """
    vit = model.backbone
    window = model.card.window
    conv = vit.patch_embed.proj
    p = conv.kernel_size[0]
    patches = (window // p) ** 2
    n = vit.num_prefix_tokens + patches
    d = vit.embed_dim
    depth = max(model.feature_indices) + 1  # forward_intermediates stops after the last index
    linears = [m for m in vit.blocks[0].mlp.modules() if isinstance(m, nn.Linear)]
    mlp_macs = sum(m.in_features * m.out_features for m in linears)
    per_block = 3 * 2 * n * d * d + 2 * n * d * d + 2 * 2 * n * n * d + 2 * n * mlp_macs
    patch_embed = 2 * patches * conv.in_channels * p * p * d
    return (depth * per_block + patch_embed) / 1e9


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of scaled dot-product attention: Q @ K^T and P @ V (as torch counts them)."""
    *batch, s_q, d_qk = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    b = 1
    for size in batch:
        b *= size
    return 2 * b * s_q * s_k * d_qk + 2 * b * s_q * s_k * d_v


# torch (2.14) counts the CUDA attention kernels but has no formula for the CPU
# kernel, so on CPU attention would silently count as 0; add the same formula.
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flop}


def counted_gflop(model: nn.Module, device: torch.device) -> tuple[float, float]:
    """GFLOP per chip (backbone, decoder) counted by FlopCounterMode on one chip."""
    x = torch.randn(1, model.card.num_bands, model.card.window, model.card.window, device=device)
    with torch.inference_mode():
        with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as fc:
            features = model.features(x)
        backbone = fc.get_total_flops()
        with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as fc:
            model.decoder(features)
        decoder = fc.get_total_flops()
    return backbone / 1e9, decoder / 1e9


# -- timing --------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of one call of ``fn``, synchronising CUDA before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure_throughput(
    model: nn.Module, device: torch.device, args: argparse.Namespace
) -> dict[str, Any]:
    """Chips/s (median, min, max) of the full model and of the backbone alone."""
    card = model.card
    x = torch.randn(args.batch_size, card.num_bands, card.window, card.window, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    runs = {"full": lambda: model(x), "backbone": lambda: model.features(x)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode(), autocast:
        warm = dict.fromkeys(runs, 0.0)
        for _ in range(max(args.warmup, 1)):
            for k, fn in runs.items():
                warm[k] = timed(fn, device)  # keep the last warm-up as the cost estimate
        per_repeat = sum(warm.values())
        repeats = max(1, min(args.repeats, int(args.max_seconds // max(per_repeat, 1e-9))))
        for _ in range(repeats):
            for k, fn in runs.items():
                times[k].append(timed(fn, device))
    out: dict[str, Any] = {"repeats": repeats}
    for k, ts in times.items():
        rates = [args.batch_size / t for t in ts]
        out[k] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
    return out


# -- driver --------------------------------------------------------------------------------


def run_preset(name: str, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    """Build one preset, count its FLOPs and time it; prints a short summary."""
    print(f"\n== {name}", flush=True)
    t0 = time.perf_counter()
    model = build_model(name, device)
    print(f"   built in {time.perf_counter() - t0:.1f} s", flush=True)
    analytic = analytic_backbone_gflop(model)
    backbone_gf, decoder_gf = counted_gflop(model, device)
    total_gf = backbone_gf + decoder_gf
    print(
        f"   GFLOP/chip: backbone analytic {analytic:.3f}, counted {backbone_gf:.3f} "
        f"({backbone_gf / analytic - 1:+.2%}); decoder counted {decoder_gf:.3f}; "
        f"total counted {total_gf:.3f} (decoder {decoder_gf / total_gf:.0%})",
        flush=True,
    )
    speed = measure_throughput(model, device, args)
    result: dict[str, Any] = {
        "preset": name,
        "backbone_params_m": model.num_parameters("backbone") / 1e6,
        "decoder_params_m": model.num_parameters("decoder") / 1e6,
        "gflop_backbone_analytic": analytic,
        "gflop_backbone_counted": backbone_gf,
        "gflop_decoder_counted": decoder_gf,
        "gflop_total_counted": total_gf,
        "repeats": speed["repeats"],
        "chips_per_s_full": speed["full"],
        "chips_per_s_backbone": speed["backbone"],
        "gflops_full": total_gf * speed["full"]["median"],
        "gflops_backbone": backbone_gf * speed["backbone"]["median"],
    }
    for part in ("full", "backbone"):
        achieved = result[f"gflops_{part}"]
        mfu = achieved / (args.peak_tflops * 1e3) if device.type == "cuda" else None
        result[f"mfu_{part}"] = mfu
        s = speed[part]
        print(
            f"   {part:8s}: {s['median']:9.1f} chips/s (min {s['min']:.1f}, max {s['max']:.1f}, "
            f"{speed['repeats']} repeats) = {achieved:9.1f} GFLOP/s"
            + (f", MFU {mfu:.1%}" if mfu is not None else ""),
            flush=True,
        )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def format_table(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    """Markdown table of the medians."""
    header = (
        "| preset | backbone params (M) | decoder params (M) | GFLOP/chip backbone analytic "
        "| GFLOP/chip backbone counted | GFLOP/chip total counted | chips/s full (median) "
        "| chips/s backbone (median) | device | threads | batch |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for r in results:
        lines.append(
            f"| {r['preset']} | {r['backbone_params_m']:.2f} | {r['decoder_params_m']:.2f} "
            f"| {r['gflop_backbone_analytic']:.3f} | {r['gflop_backbone_counted']:.3f} "
            f"| {r['gflop_total_counted']:.3f} | {r['chips_per_s_full']['median']:.1f} "
            f"| {r['chips_per_s_backbone']['median']:.1f} | {env['device_type']} "
            f"| {env['threads']} | {env['batch_size']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    env = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "xchm": xchm.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "bf16": args.bf16,
        "peak_tflops": args.peak_tflops if device.type == "cuda" else None,
        "loadavg_start": load_average(),
    }
    print(
        f"device {env['device']}, torch {env['torch']}, {env['threads']} threads, "
        f"batch {args.batch_size}, {'bf16 autocast' if args.bf16 else 'fp32'}"
    )
    results = [run_preset(name, device, args) for name in args.presets]
    env["loadavg_end"] = load_average()
    print(
        f"\nload average (1, 5, 15 min): {env['loadavg_start']} at start, "
        f"{env['loadavg_end']} at end"
    )
    print("\n" + format_table(results, env))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
