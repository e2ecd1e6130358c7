r"""Each training recipe against the train-mean baseline, on the synthetic landscape and NEON.

For every recipe of :mod:`xchm.training.recipes` (``reference``, ``small-data``,
``from-scratch``) and every dataset:

- ``synthetic``: ``xchm.datasets.synthetic_landscape(512, seed=0)`` (2 m pixels,
  NIR/red/green reflectance, heights drawn from the same cover map), cut with
  ``xchm.chips.build(..., stride=32, split_by="block", block_size=1,
  fractions={"train": 0.75, "val": 0.25})``;
- ``neon``: the 14 NEON lidar plots of ``../shared/data/neon`` (read there, never
  copied), cut as ``benchmarks/train_neon.py`` does (RGB area-averaged to 0.5 m, the
  1 m lidar CHM, stride 8, whole plots to train or val);

the model (``--model``, default ``test-tiny``: random weights, the only kind this
machine has offline) is trained with ``xchm.train(config=TrainConfig.recipe(name,
epochs=E, num_workers=0, seed=S))``: the recipe as a user gets it, only the epochs
capped so each run takes minutes on a CPU (``--epochs``). Printed (and written with
``--json``): the best model's val MAE, the train-mean baseline's val MAE (what
``xchm.train`` now reports in ``TrainResult.baseline_mae``), whether it beats it, the
best epoch, the steps run and the wall time. With ``--find-lr`` the learning-rate
range test (``xchm.training.find_lr``, 100 steps) also runs for each recipe and its
suggestion is recorded.

The runs are random-weight models: ``small-data`` is meant for a pretrained backbone
and ``reference`` for a pretrained ViT-L on 500k chips, so their rows say how they
behave when the backbone knows nothing, not what they reach with real weights.

Run it from the repository root::

    .venv/bin/python benchmarks/train_recipes.py --out /tmp/recipes --threads 1 \
        --json /tmp/recipes.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chip_cube import available_cores, cpu_model, load_average, versions  # noqa: E402
from train_neon import NEON, neon_pairs  # noqa: E402

DATASETS = ("synthetic", "neon")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    from xchm.training.recipes import RECIPES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="scratch folder (cubes, runs)")
    p.add_argument("--data", type=Path, default=NEON, help="NEON folder (../shared/data/neon)")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--model", default="test-tiny", help="preset (random weights) (test-tiny)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of every run (20)")
    p.add_argument("--seed", type=int, default=0, help="training seed (0)")
    p.add_argument("--lr", type=float, help="replace every recipe's lr (e.g. find_lr's)")
    p.add_argument("--find-lr", action="store_true", help="also run find_lr per recipe")
    p.add_argument("--threads", type=int, default=0, help="torch threads, 0 = torch's (0)")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    return p.parse_args(argv)


def build(dataset: str, out: Path, data: Path) -> Any:
    """Build (afresh) the chip cube of ``dataset`` in ``out``."""
    import xchm.chips
    import xchm.datasets

    path = out / f"{dataset}.zarr"
    if path.exists():
        shutil.rmtree(path)
    if dataset == "synthetic":
        scene = xchm.datasets.synthetic_landscape(512, seed=0)
        pairs = [xchm.chips.ScenePair(scene["image"], scene["chm"], scene="synthetic")]
        return xchm.chips.build(
            pairs,
            path,
            bands=("nir", "red", "green"),
            stride=32,
            split_by="block",
            block_size=1,
            fractions={"train": 0.75, "val": 0.25},
            seed=0,
            progress=False,
        )
    return xchm.chips.build(
        neon_pairs(data, "1m"),
        path,
        bands=("red", "green", "blue"),
        resolution=0.5,
        stride=8,
        nodata=None,  # 255 is declared nodata in these files but is real saturated white
        split_by="scene",
        fractions={"train": 0.75, "val": 0.25},
        seed=0,
        progress=False,
    )


def one(cube: Any, recipe: str, args: argparse.Namespace, run: Path) -> dict[str, Any]:
    """Train (and optionally range-test) one recipe on one cube; return its row."""
    import warnings

    import xchm
    from xchm.training import TrainConfig, find_lr

    fixed = {"lr": args.lr} if args.lr else {}
    cfg = TrainConfig.recipe(recipe, epochs=args.epochs, num_workers=0, seed=args.seed, **fixed)
    if cfg.batch_size > cube.splits["train"]:  # the recipe cannot run on so few chips
        return {"recipe": recipe, "skipped": f"batch_size {cfg.batch_size} > train chips"}
    if run.exists():
        shutil.rmtree(run)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = xchm.train(cube, model=args.model, config=cfg, output=run, progress=False)
    seconds = time.perf_counter() - t0
    row = {
        "recipe": recipe,
        "best_val_mae": result.best_val_mae,
        "baseline_mae": result.baseline_mae,
        "baseline_height": result.baseline_height,
        "beats_baseline": result.beats_baseline,
        "warned": any("train mean" in str(w.message) for w in caught),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "steps": sum(r["steps"] for r in result.history),
        "first_val_mae": result.history[0]["val_mae"],
        "seconds": seconds,
        "config": cfg.to_dict(),
    }
    if args.find_lr:
        t0 = time.perf_counter()
        found = find_lr(cube, args.model, config=cfg, steps=100)
        row["find_lr"] = {
            "suggestion": found.suggestion,
            "rule": found.rule,
            "stopped_early": found.stopped_early,
            "steps": len(found.lrs),
            "seconds": time.perf_counter() - t0,
        }
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every dataset x recipe; return the results."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "device": {
            "cpu": cpu_model(),
            "cores": available_cores(),
            "torch_threads": torch.get_num_threads(),
            "load_average": load_average(),
        },
        "versions": {**versions(), "torch": torch.__version__},
        "model": args.model,
        "epochs": args.epochs,
        "datasets": {},
    }
    for dataset in args.datasets:
        cube = build(dataset, args.out, args.data)
        part: dict[str, Any] = {"splits": cube.splits, "rows": []}
        results["datasets"][dataset] = part
        for recipe in args.recipes:
            part["rows"].append(one(cube, recipe, args, args.out / f"{dataset}-{recipe}"))
            print(table(dataset, {**part, "rows": part["rows"][-1:]}), flush=True)
            if args.json:  # what is done so far survives an interrupted run
                Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(table(dataset, part), flush=True)
    results["load_average_end"] = load_average()
    return results


def table(dataset: str, part: dict[str, Any]) -> str:
    """Markdown table of one dataset's rows."""
    lines = [
        f"{dataset}: chips {part['splits']}",
        "| recipe | val MAE m (best epoch) | train-mean baseline MAE m | beats it | "
        "warned | first-epoch val MAE m | best epoch / run | steps | find_lr | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in part["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['recipe']} | skipped: {r['skipped']} |||||||||")
            continue
        lr = r.get("find_lr")
        found = f"{lr['suggestion']:.1e} ({lr['rule']})" if lr else "-"
        lines.append(
            f"| {r['recipe']} | {r['best_val_mae']:.3f} | {r['baseline_mae']:.3f} | "
            f"{'yes' if r['beats_baseline'] else 'no'} | {'yes' if r['warned'] else 'no'} | "
            f"{r['first_val_mae']:.3f} | {r['best_epoch']} / {r['epochs_run']} | {r['steps']} | "
            f"{found} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    print(f"{res['date']}  {res['device']}  load at the end {res['load_average_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
