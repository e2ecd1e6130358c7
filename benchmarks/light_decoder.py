r"""The light decoder against the reference decoder: accuracy over seeds, and speed.

Accuracy: the same recipe and seeds train each decoder on each data set (the cubes of
``benchmarks/train_recipes.py``):

- ``synthetic``: ``xchm.datasets.synthetic_landscape(512, seed=0)``, 64 px chips at
  stride 32, ``split_by="block"``, 75/25 %;
- ``neon``: the NEON lidar plots of ``../shared/data/neon`` (read there, never copied),
  cut as ``benchmarks/train_neon.py`` does (RGB to 0.5 m, 1 m lidar CHM, stride 8,
  whole plots to train or val);

with ``xchm.train(model=--model, decoder=..., config=TrainConfig.recipe(--recipe,
epochs=--epochs, num_workers=0, seed=S))`` for each seed S. Printed per data set: the
best model's val MAE per seed, its mean and spread (min-max) per decoder, and whether
the light decoder's mean lies within the reference's seed spread.

The decoders' widths (``--widths``):

- ``quarter`` (default): both decoders at a quarter of the ViT presets' widths
  (reference 128-64-32-16, head 32-16-8; light 64-32-16, but 16 channels, not 8, in its
  last stage and head: 8 channels at full resolution learned much worse), so the light
  one costs about a seventh of the reference (a twelfth at full width) while a 10-epoch
  run takes seconds on a CPU (the full-width reference decoder is 7 GFLOP per chip:
  about 8 s per training step of 16 chips on one core);
- ``preset``: the model preset's own (``test-tiny``'s are tiny);
- ``full``: the ViT presets' (slow on a CPU).

Speed: windows/s of the full model forward (``--speed-preset``, default
``dinov3-vits16``, random weights, batch ``--speed-batch`` 16, fp32, eval,
``torch.inference_mode``, input validation off) for both decoders, interleaved repeat
by repeat in one process, with the decoders' GFLOP per window counted by
``torch.utils.flop_counter.FlopCounterMode``.

Run it from the repository root::

    .venv/bin/python benchmarks/light_decoder.py --out /tmp/light --json /tmp/light.json
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chip_cube import available_cores, cpu_model, load_average, versions  # noqa: E402
from train_neon import NEON  # noqa: E402
from train_recipes import DATASETS, build  # noqa: E402

DECODERS = ("reference", "light")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    from xchm.training.recipes import RECIPES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="scratch folder (cubes, runs)")
    p.add_argument("--data", type=Path, default=NEON, help="NEON folder (../shared/data/neon)")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--model", default="test-tiny", help="preset trained (test-tiny)")
    p.add_argument(
        "--widths", choices=("quarter", "preset", "full"), default="quarter", help="(quarter)"
    )
    p.add_argument("--recipe", choices=list(RECIPES), default="from-scratch")
    p.add_argument("--epochs", type=int, default=10, help="epochs of every run (10)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="(0 1 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training (1)")
    p.add_argument("--speed-preset", default="dinov3-vits16", help="(dinov3-vits16)")
    p.add_argument("--speed-batch", type=int, default=16, help="(16)")
    p.add_argument("--speed-repeats", type=int, default=5, help="timed repeats (5)")
    p.add_argument(
        "--speed-threads", type=int, default=0, help="torch threads for speed, 0 = all cores"
    )
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    return p.parse_args(argv)


def decoder_specs(widths: str) -> dict[str, Any]:
    """Return the two decoders compared: kinds (``preset``) or DecoderSpecs."""
    from xchm.models.presets import LIGHT_DECODER, DecoderSpec

    if widths == "preset":
        return {"reference": "reference", "light": "light"}
    if widths == "full":
        return {"reference": DecoderSpec(), "light": LIGHT_DECODER}
    return {
        "reference": DecoderSpec(widths=(128, 64, 32, 16), head_widths=(32, 16, 8), se_reduction=4),
        # 16, not a quarter of 32, at full resolution: 8 channels there learned much
        # worse (synthetic, seeds 0-1: 10.3 and 9.7 m against 6.3 m with 16).
        "light": DecoderSpec(
            kind="light", widths=(64, 32, 16, 16), head_widths=(16,), attention_stages=()
        ),
    }


def decoder_gflop(model: Any) -> float:
    """GFLOP per window of ``model.decoder``, counted on meta tensors (no memory, no time)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    c, levels = model.backbone.embed_dim, len(model.feature_indices)
    grid = model.card.window // 16
    decoder = copy.deepcopy(model.decoder).to("meta")
    features = [torch.empty(1, c, grid, grid, device="meta") for _ in range(levels)]
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        decoder(features)
    return fc.get_total_flops() / 1e9


def accuracy(args: argparse.Namespace, specs: dict[str, Any]) -> dict[str, Any]:
    """Train every decoder x seed on every data set; return the rows and summaries."""
    import torch

    import xchm
    from xchm.training import TrainConfig

    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {}
    for dataset in args.datasets:
        cube = build(dataset, args.out, args.data)
        part: dict[str, Any] = {"splits": cube.splits, "rows": []}
        out[dataset] = part
        for seed in args.seeds:
            for kind in DECODERS:  # interleaved: load drifts hit both alike
                cfg = TrainConfig.recipe(args.recipe, epochs=args.epochs, num_workers=0, seed=seed)
                run = args.out / f"{dataset}-{kind}-{seed}"
                if run.exists():
                    shutil.rmtree(run)
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = xchm.train(
                        cube,
                        model=args.model,
                        decoder=specs[kind],
                        config=cfg,
                        output=run,
                        progress=False,
                    )
                row = {
                    "decoder": kind,
                    "seed": seed,
                    "best_val_mae": result.best_val_mae,
                    "baseline_mae": result.baseline_mae,
                    "best_epoch": result.best_epoch,
                    "seconds": time.perf_counter() - t0,
                }
                part["rows"].append(row)
                print(f"{dataset} {json.dumps(row)}", flush=True)
        part["summary"] = summarise(part["rows"])
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and min-max val MAE per decoder; is the light mean within the reference spread."""
    summary: dict[str, Any] = {}
    for kind in DECODERS:
        maes = [r["best_val_mae"] for r in rows if r["decoder"] == kind]
        secs = [r["seconds"] for r in rows if r["decoder"] == kind]
        summary[kind] = {
            "mean": statistics.fmean(maes),
            "min": min(maes),
            "max": max(maes),
            "median_seconds": statistics.median(secs),
        }
    ref, light = summary["reference"], summary["light"]
    summary["light_mean_within_reference_spread"] = ref["min"] <= light["mean"] <= ref["max"]
    summary["light_mean_minus_reference_mean"] = light["mean"] - ref["mean"]
    return summary


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """Windows/s of the full forward of ``--speed-preset`` with each decoder, interleaved."""
    import torch

    import xchm

    torch.set_num_threads(args.speed_threads or available_cores())
    models = {}
    for kind in DECODERS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", xchm.RandomWeightsWarning)
            model = xchm.load_model(args.speed_preset, decoder=kind, seed=0)
        model.validate_inputs = False
        models[kind] = model.eval()
    x = torch.randn(args.speed_batch, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {k: [] for k in DECODERS}
    with torch.inference_mode():
        for model in models.values():  # warm-up
            model(x)
        for _ in range(args.speed_repeats):
            for kind, model in models.items():
                t0 = time.perf_counter()
                model(x)
                times[kind].append(time.perf_counter() - t0)
    result: dict[str, Any] = {
        "preset": args.speed_preset,
        "batch": args.speed_batch,
        "threads": torch.get_num_threads(),
        "repeats": args.speed_repeats,
    }
    for kind, model in models.items():
        rates = [args.speed_batch / t for t in times[kind]]
        result[kind] = {
            "windows_per_s_median": statistics.median(rates),
            "min": min(rates),
            "max": max(rates),
            "decoder_params_m": model.num_parameters("decoder") / 1e6,
            "decoder_gflop": decoder_gflop(model),
        }
    result["speedup"] = (
        result["light"]["windows_per_s_median"] / result["reference"]["windows_per_s_median"]
    )
    return result


def tables(results: dict[str, Any]) -> str:
    """Markdown tables of the results."""
    lines: list[str] = []
    for dataset, part in results.get("accuracy", {}).items():
        s = part["summary"]
        seeds = sorted({r["seed"] for r in part["rows"]})
        base = part["rows"][0]["baseline_mae"]
        lines += [
            f"{dataset}: chips {part['splits']}; train-mean baseline val MAE {base:.3f} m",
            "",
            "| decoder | "
            + " | ".join(f"val MAE m, seed {k}" for k in seeds)
            + " | mean | min-max | median s per run |",
            "|---|" + "---|" * (len(seeds) + 3),
        ]
        for kind in DECODERS:
            maes = {r["seed"]: r["best_val_mae"] for r in part["rows"] if r["decoder"] == kind}
            k = s[kind]
            lines.append(
                f"| {kind} | "
                + " | ".join(f"{maes[seed]:.3f}" for seed in seeds)
                + f" | {k['mean']:.3f} | {k['min']:.3f}-{k['max']:.3f} "
                f"| {k['median_seconds']:.0f} |"
            )
        lines += [
            "",
            f"light mean - reference mean: {s['light_mean_minus_reference_mean']:+.3f} m; "
            f"light mean within the reference's seed spread: "
            f"{'yes' if s['light_mean_within_reference_spread'] else 'no'}",
            "",
        ]
    sp = results.get("speed")
    if sp:
        lines += [
            f"{sp['preset']}, batch {sp['batch']}, fp32, {sp['threads']} threads, "
            f"{sp['repeats']} interleaved repeats",
            "",
            "| decoder | decoder params M | decoder GFLOP/window | windows/s median | min-max |",
            "|---|---|---|---|---|",
        ]
        for kind in DECODERS:
            k = sp[kind]
            lines.append(
                f"| {kind} | {k['decoder_params_m']:.2f} | {k['decoder_gflop']:.3f} "
                f"| {k['windows_per_s_median']:.1f} | {k['min']:.1f}-{k['max']:.1f} |"
            )
        lines += ["", f"light / reference windows/s: {sp['speedup']:.2f}x"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    args.out.mkdir(parents=True, exist_ok=True)
    specs = decoder_specs(args.widths)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "device": {"cpu": cpu_model(), "cores": available_cores()},
        "load_average_start": load_average(),
        "versions": {**versions(), "torch": torch.__version__},
        "model": args.model,
        "widths": args.widths,
        "decoders": {k: v if isinstance(v, str) else v.to_dict() for k, v in specs.items()},
        "recipe": args.recipe,
        "epochs": args.epochs,
        "seeds": args.seeds,
    }
    if not args.skip_speed:
        results["speed"] = speed(args)
        print(tables({"speed": results["speed"]}), flush=True)
    if not args.skip_accuracy:
        results["accuracy"] = accuracy(args, specs)
    results["load_average_end"] = load_average()
    print("\n" + tables(results))
    print(
        f"\n{results['date']}  load {results['load_average_start']} -> "
        f"{results['load_average_end']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
