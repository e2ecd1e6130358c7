"""Pretraining speed: chips per second of ``xchm.pretrain`` per preset on this device.

An unlabeled cube of a synthetic landscape (``xchm.datasets.synthetic_landscape``,
nir/red/green) is pretrained for ``--epochs`` epochs of ``--steps`` steps each with the
default multi-crop (2 global + 4 local crops), iBOT and a ``--out-dim`` head; the
first epoch is a warm-up, and the chips/s of the others (from the run's own
per-epoch timings, which include reading, augmentation and both networks) are
reported as median (min-max). bf16 autocast on CUDA. Random weights: speed does not
depend on them.

Run it from the repository root::

    .venv/bin/python benchmarks/pretrain_speed.py --presets test-tiny dinov3-vits16
    .venv/bin/python benchmarks/pretrain_speed.py --presets dinov3-vitl16-sat --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chip_cube import available_cores, cpu_model, load_average, versions  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["test-tiny", "dinov3-vits16"])
    p.add_argument("--batch-size", type=int, default=32, help="chips per step (32)")
    p.add_argument("--steps", type=int, default=4, help="steps per epoch (4)")
    p.add_argument("--epochs", type=int, default=4, help="epochs, the first a warm-up (4)")
    p.add_argument("--out-dim", type=int, default=4096, help="DINO prototypes (4096)")
    p.add_argument("--device", help="torch device (default: CUDA if present, else CPU)")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    return p.parse_args(argv)


def measure(preset: str, cube: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Pretrain ``preset`` briefly; return chips/s per timed epoch and the median."""
    import xchm
    from xchm.errors import RandomWeightsWarning
    from xchm.pretraining import PretrainConfig

    cfg = PretrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        out_dim=args.out_dim,
        max_steps_per_epoch=args.steps,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        run = xchm.pretrain(
            cube, model=preset, config=cfg, output=work / preset, device=args.device, progress=False
        )
    rates = [r["steps"] * args.batch_size / r["seconds"] for r in run.history[1:]]
    return {
        "preset": preset,
        "chips_per_s": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "views_per_chip": 2 + cfg.local_crops,
        "epochs_timed": len(rates),
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    import xchm.chips
    from xchm.datasets import synthetic_landscape

    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        side = 64 * max(8, int((args.batch_size * args.steps) ** 0.5) + 1)
        scene = synthetic_landscape(side, seed=0, nodata_edge=False)
        cube = xchm.chips.build(
            [scene["image"]],
            work / "u.zarr",
            bands=("nir", "red", "green"),
            fractions={"train": 1.0},
            progress=False,
        )
        rows = [measure(p, cube, args, work) for p in args.presets]
    res = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else cpu_model(),
        "cores": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
        "versions": {**versions(), "torch": torch.__version__},
        "options": vars(args),
        "chips": len(cube),
        "results": rows,
    }
    print(f"{res['device']} ({device}), load {res['load_average']}, {len(cube)} chips")
    print("| preset | chips/s (median, min-max) | views/chip |")
    print("|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['chips_per_s']:.1f} ({r['min']:.1f}-{r['max']:.1f}) | "
            f"{r['views_per_chip']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
