"""Does DINO pretraining on NEON imagery help a frozen backbone? Pretrained vs random.

The experiment of issue 9 on the real NEON data in ``--data``:

1. an **unlabeled** cube of every RGB image there (the 14 lidar plots and the
   larger BART crop, whose CHM is left out anyway), 0.5 m, stride ``--ssl-stride``:
   ``xchm.chips.build(images, ..., bands=("red", "green", "blue"))``;
2. ``xchm.pretrain`` of ``--model`` (``test-tiny``: the DINOv3 architecture, 64-d,
   4 blocks; or ``dinov3-vits16``) from its random weights on those chips;
3. the labeled cube of ``train_neon.py`` (scene split: 10 train plots, 4 val plots);
4. two decoders trained with ``xchm.train`` and ``policy="frozen"`` (the backbone
   never changes) and the same settings: one on the **pretrained** backbone
   (``weights=run/backbone``), one on the **same backbone with its random weights**;
5. both scored with ``xchm.evaluate`` on the 4 held-out plots (best epoch, chosen on
   those plots, and the last epoch, chosen by nobody), next to the train-mean and
   train-median baselines.

The val plots' imagery is among the unlabeled chips (their heights never are):
pretraining on all imagery of the area to be mapped is the intended use.

Run it from the repository root (minutes on a 2-core CPU)::

    .venv/bin/python benchmarks/pretrain_neon.py --out out/pretrain_neon --overwrite
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
from train_neon import (  # noqa: E402
    METRICS,
    NEON,
    _fmt,
    last_epoch_model,
    median_baseline,
    neon_pairs,
    scores,
    split_plots,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--data", type=Path, default=NEON, help="NEON folder (../shared/data/neon)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in --out")
    p.add_argument("--resolution", type=float, default=0.5, help="pixel size, m (0.5)")
    p.add_argument("--ssl-stride", type=int, default=8, help="unlabeled chip stride, px (8)")
    p.add_argument("--stride", type=int, default=8, help="labeled chip stride, px (8)")
    # pretraining
    p.add_argument("--model", default="test-tiny", help="preset (test-tiny)")
    p.add_argument("--ssl-epochs", type=int, default=30, help="pretraining epochs (30)")
    p.add_argument("--ssl-batch", type=int, default=32, help="pretraining chips per step (32)")
    p.add_argument("--ssl-lr", type=float, default=5e-4, help="pretraining peak lr (5e-4)")
    p.add_argument("--local-crops", type=int, default=4, help="local crops per chip (4)")
    p.add_argument("--out-dim", type=int, default=1024, help="DINO prototypes (1024)")
    p.add_argument("--ibot-weight", type=float, default=1.0, help="iBOT loss weight (1)")
    p.add_argument("--koleo-weight", type=float, default=0.1, help="KoLeo weight (0.1)")
    # decoder training (both arms)
    p.add_argument("--epochs", type=int, default=40, help="decoder epochs (40)")
    p.add_argument("--lr", type=float, default=1e-2, help="decoder learning rate (1e-2)")
    p.add_argument("--batch-size", type=int, default=8, help="decoder chips per step (8)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything (0)")
    p.add_argument("--threads", type=int, default=0, help="torch threads, 0 = torch's (0)")
    p.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    return p.parse_args(argv)


def build_cubes(args: argparse.Namespace) -> tuple[Any, Any]:
    """Build the unlabeled cube of every image and the labeled cube of the lidar plots."""
    import xchm.chips

    images = [
        xchm.chips.ScenePair(p, None, scene=p.name[: -len("_rgb.tif")])
        for p in sorted(args.data.glob("*_rgb.tif"))
    ]
    common = {
        "bands": ("red", "green", "blue"),
        "resolution": args.resolution,
        "nodata": None,  # 255 is declared nodata in these files but is real saturated white
        "progress": False,
    }
    unlabeled = xchm.chips.build(
        images,
        args.out / "unlabeled.zarr",
        stride=args.ssl_stride,
        split_by="random",
        fractions={"train": 1.0},
        seed=args.seed,
        **common,
    )
    labeled = xchm.chips.build(
        neon_pairs(args.data, "1m"),
        args.out / "neon.zarr",
        stride=args.stride,
        split_by="scene",
        fractions={"train": 0.75, "val": 0.25},
        seed=0,
        **common,
    )
    return unlabeled, labeled


def train_decoder(cube: Any, out: Path, args: argparse.Namespace, weights: Any) -> dict[str, Any]:
    """Train a decoder on a frozen backbone; score best and last epoch on the val plots."""
    import xchm
    from xchm.training import TrainConfig

    cfg = TrainConfig(
        epochs=args.epochs,
        patience=0,
        batch_size=args.batch_size,
        lr=args.lr,
        policy="frozen",
        scheduler="cosine",
        loss="mse",
        output_bias_percentile=50.0,
        augment=False,
        num_workers=0,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    result = xchm.train(
        cube, model=args.model, weights=weights, config=cfg, output=out, progress=False
    )
    seconds = time.perf_counter() - t0
    best = xchm.evaluate(result.best_checkpoint, cube, split="val", per_scene=True, progress=False)
    last = xchm.evaluate(last_epoch_model(out), cube, split="val", progress=False)
    return {
        "best_epoch": result.best_epoch,
        "best": scores(best),
        "last": scores(last),
        "per_plot_mae": {s: float(m["mae"]) for s, m in best["scenes"].items()},
        "baseline": {"height": float(best["baseline"]["height"]), **scores(best["baseline"])},
        "seconds": seconds,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build, pretrain, train both decoders, evaluate; return the results."""
    import torch

    import xchm
    from xchm.pretraining import PretrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out.exists():
        if not args.overwrite:
            raise SystemExit(f"{args.out} exists; pass --overwrite or choose another --out")
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    ssl_cfg = PretrainConfig(
        epochs=args.ssl_epochs,
        batch_size=args.ssl_batch,
        lr=args.ssl_lr,
        local_crops=args.local_crops,
        out_dim=args.out_dim,
        head_hidden=256,
        head_bottleneck=64,
        ibot_weight=args.ibot_weight,
        koleo_weight=args.koleo_weight,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    unlabeled, labeled = build_cubes(args)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    ssl = xchm.pretrain(
        unlabeled, model=args.model, config=ssl_cfg, output=args.out / "ssl", progress=False
    )
    t_ssl = time.perf_counter() - t0
    pretrained = train_decoder(labeled, args.out / "ft_pretrained", args, ssl.backbone)
    random_init = train_decoder(labeled, args.out / "ft_random", args, None)
    median = median_baseline(labeled)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "model": args.model,
        "device": {
            "cpu": cpu_model(),
            "cores": available_cores(),
            "torch_threads": torch.get_num_threads(),
            "load_average": load_average(),
        },
        "versions": {**versions(), "torch": torch.__version__},
        "pretrain_config": ssl_cfg.to_dict(),
        "unlabeled_chips": len(unlabeled),
        "unlabeled_scenes": sorted({str(s) for s in unlabeled.coord("scene")}),
        "labeled": {"chips": len(labeled), "splits": split_plots(labeled)},
        "pretrain_history": ssl.history,
        "pretrained": pretrained,
        "random": random_init,
        "baseline_median": {"height": median["height"], **scores(median)},
        "seconds": {"build": t_build, "pretrain": t_ssl},
    }


def report(res: dict[str, Any]) -> str:
    """Markdown table and a few lines of context."""
    h = res["pretrain_history"]
    lines = [
        f"{res['date']}  {res['device']['cpu']}, {res['device']['cores']} cores, "
        f"load {res['device']['load_average']}",
        f"model {res['model']}; unlabeled chips: {res['unlabeled_chips']} from "
        f"{len(res['unlabeled_scenes'])} images; "
        f"labeled: {res['labeled']['splits']}",
        f"pretraining: {len(h)} epochs in {res['seconds']['pretrain']:.0f} s, loss "
        f"{h[0]['loss']:.3f} -> {h[-1]['loss']:.3f} (dino {h[0]['dino_loss']:.3f} -> "
        f"{h[-1]['dino_loss']:.3f})",
        "| val plots (frozen backbone, trained decoder) | MAE m | RMSE m | bias m | R2 | "
        "Pearson r2 |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ("pretrained", "random"):
        a = res[arm]
        for which, label in (("best", f"best epoch {a['best_epoch']}"), ("last", "last epoch")):
            m = a[which]
            lines.append(f"| {arm}, {label} | " + " | ".join(_fmt(m[k]) for k in METRICS) + " |")
    base = res["pretrained"]["baseline"]
    lines.append(
        f"| train mean {base['height']:.2f} m | "
        + " | ".join(_fmt(base[k]) for k in METRICS)
        + " |"
    )
    med = res["baseline_median"]
    lines.append(
        f"| train median {med['height']:.2f} m | "
        + " | ".join(_fmt(med[k]) for k in METRICS)
        + " |"
    )
    for arm in ("pretrained", "random"):
        per = res[arm]["per_plot_mae"]
        lines.append(f"{arm} per-plot MAE: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
    lines.append(
        f"decoder training: pretrained {res['pretrained']['seconds']:.0f} s, random "
        f"{res['random']['seconds']:.0f} s"
    )
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
