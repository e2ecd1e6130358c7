"""Train ``test-tiny`` on chips of the real NEON plots and score it on held-out plots.

The real-data test of ``xchm.train``: every NEON lidar plot in ``--data`` (an
``*_rgb.tif`` with a matching ``*_chm_1m.tif``, or ``--chm 0.5m``; BART, whose CHM is
NEON's own product on an offset grid, is left out: 12 TEAK and 2 OSBS plots of 40 m)
is cut into chips with

    xchm.chips.build(pairs, "neon.zarr", bands=("red", "green", "blue"),
                     resolution=0.5, stride=8, nodata=None, split_by="scene",
                     fractions={"train": 0.75, "val": 0.25}, seed=0)

(the 0.1 m RGB area-averaged to 0.5 m: 80 x 80 px per plot, so 9 overlapping 64 px
chips per plot at stride 8, 4 at stride 16; ``nodata=None`` because these files
declare 255 as nodata, which is also real saturated white; the scene split keeps
every plot whole, and with split seed 0 puts 4 TEAK plots in val). ``test-tiny``
(the DINOv3 architecture, 64-d, 4 blocks, random weights, and its decoder) is
trained end to end with ``xchm.train`` and the best checkpoint (lowest val loss) is
scored on the val plots with ``xchm.evaluate``, next to its baseline, predicting the
train split's mean height everywhere, and next to the train median (the constant
with the lower MAE when heights are skewed). Because the best epoch is chosen on
those same val plots, the last epoch's weights (chosen by nobody) are scored too.

Defaults (from an exploration of an earlier session whose per-setting numbers were
not kept; RESULTS.md records the defaults' run): policy ``full``
with ``ft_rate=1.0`` (the backbone is random), AdamW at 1e-2 with a cosine
schedule, 40 epochs of batch 8, MSE loss, output bias started at the train median,
no flips or rotations (they scored worse on every split tried), no early stopping.

Printed (and written with ``--json``): MAE, RMSE, bias, R2 and Pearson r2 of the
model and of the baselines on the val plots, per-plot MAE, plots and chips per
split, and the wall time of the build, the training and the evaluation.

Run it from the repository root (about one minute on a quiet 2-core CPU, several on a
busy one)::

    .venv/bin/python benchmarks/train_neon.py --out out/train_neon --overwrite
    .venv/bin/python benchmarks/train_neon.py --out out/ref --loss asymmetric_mse --augment
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chip_cube import available_cores, cpu_model, load_average, versions  # noqa: E402

NEON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"
METRICS = ("mae", "rmse", "bias", "r2", "pearson_r2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (cube, run)")
    p.add_argument("--data", type=Path, default=NEON, help="NEON folder (../shared/data/neon)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    # chips
    p.add_argument("--chm", choices=("1m", "0.5m"), default="1m", help="lidar CHM (1m)")
    p.add_argument("--resolution", type=float, default=0.5, help="pixel size, m (0.5)")
    p.add_argument("--stride", type=int, default=8, help="chip stride, px (8)")
    p.add_argument("--val-fraction", type=float, default=0.25, help="val share of plots (0.25)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the plot split (0)")
    # training
    p.add_argument("--epochs", type=int, default=40, help="epochs (40)")
    p.add_argument("--policy", default="full", help="fine-tuning policy (full)")
    p.add_argument("--ft-rate", type=float, default=1.0, help="backbone lr / decoder lr (1.0)")
    p.add_argument("--lr", type=float, default=1e-2, help="decoder learning rate (1e-2)")
    p.add_argument("--batch-size", type=int, default=8, help="chips per step (8)")
    p.add_argument("--loss", default="mse", help="training loss (mse)")
    p.add_argument(
        "--bias-percentile",
        type=float,
        default=50.0,
        help="initial output bias = this percentile of train heights; <0 keeps the model's (50)",
    )
    p.add_argument("--scheduler", default="cosine", help="plateau or cosine (cosine)")
    p.add_argument("--patience", type=int, default=0, help="early stopping, 0 = off (0)")
    p.add_argument("--weight-decay", type=float, default=1e-3, help="AdamW weight decay (1e-3)")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="random flips / 90-degree rotations (off: they scored worse in that exploration)",
    )
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (0)")
    p.add_argument("--seed", type=int, default=0, help="training seed (0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads, 0 = torch's (0)")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    return p.parse_args(argv)


def neon_pairs(data: Path, chm: str) -> list[Any]:
    """(RGB, CHM) scene pairs of every plot with a ``_chm_<chm>.tif``, named by plot."""
    import xchm.chips

    pairs = []
    for rgb in sorted(data.glob("*_rgb.tif")):
        label = rgb.with_name(rgb.name.replace("_rgb", f"_chm_{chm}"))
        if label.exists():
            pairs.append(xchm.chips.ScenePair(rgb, label, scene=rgb.name[: -len("_rgb.tif")]))
    if not pairs:
        raise SystemExit(f"no *_rgb.tif with a matching *_chm_{chm}.tif in {data}")
    return pairs


def build_cube(args: argparse.Namespace, path: Path) -> Any:
    """Build the NEON chip cube of ``args`` (this script's options) at ``path``, split by plot."""
    import xchm.chips

    return xchm.chips.build(
        neon_pairs(args.data, args.chm),
        path,
        bands=("red", "green", "blue"),
        resolution=args.resolution,
        stride=args.stride,
        nodata=None,  # 255 is declared nodata in these files but is real saturated white
        split_by="scene",
        fractions={"train": 1 - args.val_fraction, "val": args.val_fraction},
        seed=args.split_seed,
        progress=False,
    )


def prepare(out: Path, overwrite: bool) -> tuple[Path, Path]:
    """Paths of the cube and the run in ``out``; remove only those with ``overwrite``."""
    cube, run = out / "neon.zarr", out / "run"
    for path in (cube, run):
        if path.exists():
            if not overwrite:
                raise SystemExit(f"{path} exists; pass --overwrite or choose another --out")
            shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)
    return cube, run


def config(args: argparse.Namespace) -> Any:
    """Return the TrainConfig of the options."""
    from xchm.training import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        ft_rate=args.ft_rate,
        policy=args.policy,
        scheduler=args.scheduler,
        loss=args.loss,
        output_bias_percentile=None if args.bias_percentile < 0 else args.bias_percentile,
        augment=args.augment,
        num_workers=args.num_workers,
        seed=args.seed,
    )


def split_plots(cube: Any) -> dict[str, dict[str, Any]]:
    """Return the plots (scene ids) and chips of each split."""
    import numpy as np

    scenes, labels = cube.coord("scene"), cube.coord("split")
    return {
        s: {
            "plots": sorted({str(x) for x in scenes[labels == s]}),
            "chips": int(np.sum(labels == s)),
        }
        for s in sorted({str(x) for x in labels})
    }


def median_baseline(cube: Any) -> dict[str, Any]:
    """Score predicting the train split's median height everywhere on the val plots.

    The mean (``xchm.evaluate``'s baseline) minimises squared error; with skewed
    heights the median has a lower MAE, so a model must beat both to show skill.
    """
    import numpy as np

    from xchm.evaluation.metrics import height_metrics

    train, val = cube.sel(split="train"), cube.sel(split="val")
    _, train_h = train.read(np.arange(len(train)))
    _, val_h = val.read(np.arange(len(val)))
    median = float(np.median(train_h[np.isfinite(train_h)]))
    return {"height": median, **height_metrics(np.full_like(val_h, median), val_h)}


def last_epoch_model(run: Path) -> Any:
    """Load the model with the weights of the run's last epoch (``checkpoints/last.pt``)."""
    import xchm
    from xchm.runs.state import load_state

    net = xchm.load_model(run / "best")
    net.load_state_dict(load_state(run / "checkpoints" / "last.pt")["model"])
    return net


def scores(metrics: dict[str, Any]) -> dict[str, float]:
    """Return the headline numbers of an ``xchm.evaluate`` result (or its baseline)."""
    return {k: float(metrics[k]) for k in METRICS}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, train, evaluate; return the results."""
    import torch

    import xchm

    if args.threads:
        torch.set_num_threads(args.threads)
    cube_path, run_path = prepare(args.out, args.overwrite)
    cfg = config(args)  # fail on a bad option before any work
    t0 = time.perf_counter()
    cube = build_cube(args, cube_path)
    t_build = time.perf_counter() - t0
    splits = split_plots(cube)
    t0 = time.perf_counter()
    result = xchm.train(cube, model="test-tiny", config=cfg, output=run_path, progress=False)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    best = xchm.evaluate(result.best_checkpoint, cube, split="val", per_scene=True, progress=False)
    last = xchm.evaluate(last_epoch_model(run_path), cube, split="val", progress=False)
    t_eval = time.perf_counter() - t0
    median = median_baseline(cube)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "device": {
            "cpu": cpu_model(),
            "cores": available_cores(),
            "torch_threads": torch.get_num_threads(),
            "load_average": load_average(),
        },
        "versions": {**versions(), "torch": torch.__version__},
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "config": cfg.to_dict(),
        "cube": {
            "pixel_size": cube.pixel_size,
            "window": cube.window,
            "chips": len(cube),
            "filters": cube.filters,
            "splits": splits,
        },
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "history": result.history,
        "model": scores(best),
        "model_last_epoch": scores(last),
        "baseline": {"height": float(best["baseline"]["height"]), **scores(best["baseline"])},
        "baseline_median": {"height": median["height"], **scores(median)},
        "n_pixels": int(best["n_pixels"]),
        "per_plot_mae": {s: float(m["mae"]) for s, m in best["scenes"].items()},
        "classes": best["classes"],
        "seconds": {"build": t_build, "train": t_train, "evaluate": t_eval},
    }


def table(res: dict[str, Any]) -> str:
    """Markdown table of the model vs the baseline on the val plots."""
    lines = [
        "| val plots | MAE m | RMSE m | bias m | R2 | Pearson r2 |",
        "|---|---|---|---|---|---|",
    ]
    rows = (
        (f"test-tiny, best epoch ({res['best_epoch']}, chosen on val)", res["model"]),
        (f"test-tiny, last epoch ({res['epochs_run'] - 1})", res["model_last_epoch"]),
        (f"baseline: train mean {res['baseline']['height']:.2f} m", res["baseline"]),
        (f"train median {res['baseline_median']['height']:.2f} m", res["baseline_median"]),
    )
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(m[k]) for k in METRICS) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def report(res: dict[str, Any]) -> str:
    """Human-readable summary."""
    s = res["cube"]["splits"]
    sec = res["seconds"]
    lines = [
        f"{res['date']}  {res['device']['cpu']}, {res['device']['cores']} cores, "
        f"load {res['device']['load_average']}",
        f"chips: {res['cube']['chips']} ({res['cube']['pixel_size']} m, window "
        f"{res['cube']['window']}); filters: {res['cube']['filters']}",
    ]
    for name, part in s.items():
        lines.append(
            f"{name}: {len(part['plots'])} plots, {part['chips']} chips: {' '.join(part['plots'])}"
        )
    lines += [
        table(res),
        "per-plot MAE (best): " + ", ".join(f"{k} {v:.2f}" for k, v in res["per_plot_mae"].items()),
        f"val pixels: {res['n_pixels']}; epochs run: {res['epochs_run']}",
        f"wall time: build {sec['build']:.1f} s, train {sec['train']:.1f} s, "
        f"evaluate {sec['evaluate']:.1f} s, total {sum(sec.values()):.1f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    print(report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
