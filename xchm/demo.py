"""``xchm demo``: the whole pipeline on one machine, offline, in a few minutes.

Steps: a scene (synthetic, or real image/CHM pairs with ``real=DIR``) -> a chip cube
-> training ``test-tiny`` for a bounded number of steps -> a lazy, resumable
prediction of the whole scene on a local Dask cluster -> evaluation on data the
model never saw, next to predicting the training mean -> ``chm.tif`` (COG) and
``report/`` (metrics and pictures). Everything goes under ``output``.

Held-out data: in the synthetic scene, chips come from the northern 60 % only and
scores from the southern 35 % (a 5 % gap between them, so no training chip borders
a scored pixel); with real pairs, whole scenes are held out (``split_by="scene"``).

Validation (the epoch kept): in the synthetic scene, the eastern strip of the
northern part (a fifth of the width, at least 96 px) is its own scene, and the
cube's scene split puts it in ``val`` and the rest in ``train`` (the split's seed is
the first from ``seed`` on that does so, recorded in the cube). A hashed split of
blocks could leave ``val`` empty on a small scene; this one cannot, at any size the
demo accepts (:data:`MIN_SIZE`). Real pairs get a scene split with scenes on both
sides, found the same way.

The output folder follows :mod:`xchm.outputs`: new, empty or an earlier demo's
(replaced only with ``overwrite``); a folder of anything else is never touched.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from xchm._compat import renamed_keywords
from xchm.errors import InputError

__all__ = ["run_demo", "DEMO_SIZE", "MIN_SIZE"]

#: Default side of the synthetic scene, pixels (2 m: 3 x 3 km).
DEMO_SIZE = 1536
#: Smallest side of the synthetic scene, pixels: train and val chips both exist.
MIN_SIZE = 256
#: Kind of output folder (see xchm.outputs).
OUTPUT_KIND = "demo"
_WINDOW, _STRIDE = 64, 32
_FRACTIONS = {"train": 0.8, "val": 0.2}
_METRICS = ("mae", "rmse", "bias", "r2")


def _say(step: int, total: int, text: str) -> None:
    print(f"[{step}/{total}] {text}", flush=True)


def _timed(seconds: dict[str, float], name: str, work: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = work()
    seconds[name] = round(time.perf_counter() - start, 1)
    return result


def _train_config(real: bool, epochs: int | None, seed: int, train_chips: int) -> Any:
    from xchm.training import TrainConfig

    # A random test-tiny backbone: the from-scratch recipe (all of it at lr 1e-2, MSE,
    # bias started at the train median; docs/training.md).
    return TrainConfig.recipe(
        "from-scratch",
        epochs=epochs or (25 if real else 16),
        batch_size=max(1, min(8 if real else 32, train_chips)),  # a small scene: fewer chips
        augment=not real,
        num_workers=0,
        mixed_precision=False,
        seed=seed,
    )


def _prepare(out: Path, overwrite: bool) -> None:
    from xchm.outputs import prepare_output_dir

    prepare_output_dir(
        out,
        OUTPUT_KIND,
        overwrite=overwrite,
        legacy=_is_old_demo,
        hint="pass overwrite=True (--overwrite) to replace it, or choose another -o/--output",
    )


def _is_old_demo(folder: Path) -> bool:
    """Recognise a demo written before output folders were marked."""
    return (folder / "summary.json").is_file() or (folder / "chips.zarr").is_dir()


def _scene_split(
    seed: int, fractions: dict[str, float], wanted: dict[str, str] | None, scenes: list[str]
) -> Any:
    """Return a scene split that gives ``scenes`` both train and val (and ``wanted``'s labels).

    A scene split hashes each scene id with the seed, so a few scenes can all land in
    one split. The split's seed is the first from ``seed`` on whose labels suit (a
    handful of tries); the cube records it.
    """
    from xchm.chips.splits import SplitRule

    for split_seed in itertools.count(seed):  # ends: each try suits with odds >= 0.16
        rule = SplitRule(method="scene", fractions=fractions, seed=split_seed)
        labels = {name: rule.label(name) for name in scenes}
        if {"train", "val"} <= set(labels.values()) and all(
            labels[name] == label for name, label in (wanted or {}).items()
        ):
            return rule
    raise AssertionError("unreachable")  # pragma: no cover


def _synthetic_inputs(out: Path, size: int, seed: int) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """Write the scene and its truth as GeoTIFFs; return (pairs, image path, truth, test rows)."""
    from xchm.chips import ScenePair
    from xchm.datasets import synthetic_landscape

    scene = synthetic_landscape(size, seed=seed)
    image, truth = scene["image"], scene["chm"]
    named = image.assign_coords(band=[1, 2, 3])
    named.attrs["long_name"] = ("nir", "red", "green")  # GeoTIFF band descriptions
    named.rio.to_raster(out / "scene.tif", tiled=True, compress="DEFLATE")
    truth.rio.to_raster(out / "truth.tif", tiled=True, compress="DEFLATE")
    h, w = image.sizes["y"], image.sizes["x"]
    north, test_rows = slice(0, int(0.6 * h)), slice(int(0.65 * h), h)
    east = w - max(96, w // 5)  # val: at least two chip columns (64 px chips, stride 32)
    pairs = [
        ScenePair(
            image.isel(y=north, x=slice(0, east)),
            truth.isel(y=north, x=slice(0, east)),
            scene="north-west",
        ),
        ScenePair(
            image.isel(y=north, x=slice(east, w)),
            truth.isel(y=north, x=slice(east, w)),
            scene="north-east",
        ),
    ]
    info = {
        "scene": f"synthetic, seed {seed}, {size}x{size} px at 2 m",
        "train_area": f"rows 0-60 %, columns 0-{east - 1}",
        "val_area": f"rows 0-60 %, columns {east}-{w - 1}",
        "test_area": "rows 65-100 %",
    }
    return pairs, out / "scene.tif", truth, test_rows, info


def _real_pairs(real: Path) -> list[Any]:
    from xchm.chips import ScenePair

    pairs = []
    for rgb in sorted(real.glob("*_rgb.tif")):
        stem = rgb.name[: -len("_rgb.tif")]
        chms = sorted(real.glob(f"{stem}_chm*.tif"))
        if chms:
            pairs.append(ScenePair(rgb, chms[-1], scene=stem))
    if len(pairs) < 2:
        raise InputError(
            f"{real} needs at least two image/CHM pairs named NAME_rgb.tif and NAME_chm*.tif "
            f"(found {len(pairs)}); e.g. ../shared/data/neon"
        )
    return pairs


@renamed_keywords(out="output")
def run_demo(
    output: str | Path = "out/demo",
    *,
    size: int = DEMO_SIZE,
    seed: int = 0,
    device: str | None = None,
    real: str | Path | None = None,
    resolution: float = 0.5,
    epochs: int | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    """Run the demo pipeline; return the summary (also written to ``output/summary.json``).

    Parameters
    ----------
    output
        Folder to write: new, empty, or a previous demo's (replaced with
        ``overwrite``). Formerly ``out=``, which still works for one release with a
        ``FutureWarning``.
    size
        Side of the synthetic scene in pixels (at 2 m), at least :data:`MIN_SIZE`.
    seed
        Seed of the scene, the split and the training.
    device
        Torch device for training and prediction (default: CUDA if present).
    real
        A folder of real pairs ``NAME_rgb.tif`` + ``NAME_chm*.tif`` (RGB imagery, lidar
        CHM in metres) to use instead of the synthetic scene.
    resolution
        Real pairs: pixel size the imagery is averaged to (metres).
    epochs
        Training epochs (default 16 synthetic, 25 real).
    workers
        CPU worker processes of the local cluster (GPUs: one worker each).
    overwrite
        Replace a previous demo in ``output``.
    progress
        Progress bars; on by default, as in every long-running xchm function.
    host
        Interface the local Dask cluster (scheduler, workers, dashboard) listens on;
        the default keeps it on this machine (see :func:`xchm.cluster.start`).

    Returns
    -------
    dict
        Model and baseline scores (``mae``, ``rmse``, ``bias``, ``r2``) on held-out
        data, file paths and wall times per step.

    Examples
    --------
    >>> summary = xchm.demo.run_demo("out/demo")  # doctest: +SKIP
    >>> summary["model"]["mae"] < summary["baseline"]["mae"]  # doctest: +SKIP
    True
    """
    import xchm
    import xchm.chips
    import xchm.cluster

    out = Path(output)
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise InputError(f"size must be an integer >= {MIN_SIZE} pixels, got {size!r}")
    real_dir = None if real is None else Path(real)
    if real_dir is not None and not real_dir.is_dir():
        raise InputError(f"--real {str(real_dir)!r} is not a folder")
    real_pairs = [] if real_dir is None else _real_pairs(real_dir)  # checked before writing
    _prepare(out, overwrite)
    seconds: dict[str, float] = {}
    total = 6
    start_all = time.perf_counter()

    if real_dir is None:
        pairs, image_path, truth, test_rows, info = _timed(
            seconds, "scene", lambda: _synthetic_inputs(out, size, seed)
        )
        # Keep chips without trees (open ground, lakes): the split stays non-empty.
        build_opts: dict[str, Any] = dict(
            bands=("nir", "red", "green"),
            window=_WINDOW,
            stride=_STRIDE,
            split_by=_scene_split(
                seed,
                _FRACTIONS,
                {"north-west": "train", "north-east": "val"},
                [p.scene for p in pairs],
            ),
            drop_no_positive=False,
        )
    else:
        pairs = real_pairs
        info = {"scene": f"{len(pairs)} real pairs from {real_dir}", "resolution_m": resolution}
        build_opts = dict(
            bands=("red", "green", "blue"),
            stride=16,
            resolution=resolution,
            nodata=None,
            split_by=_scene_split(
                seed, {"train": 0.75, "val": 0.25}, None, [p.scene for p in pairs]
            ),
        )
    _say(1, total, f"scene: {info['scene']}")

    cube = _timed(
        seconds,
        "chips",
        lambda: xchm.chips.build(
            pairs, out / "chips.zarr", seed=seed, progress=progress, **build_opts
        ),
    )
    splits = {s: int(np.sum(cube.coord("split") == s)) for s in ("train", "val")}
    _say(
        2,
        total,
        f"chip cube: {len(cube)} chips ({splits['train']} train, {splits['val']} val) "
        f"-> {out / 'chips.zarr'}",
    )

    config = _train_config(real_dir is not None, epochs, seed, splits["train"])
    result = _timed(
        seconds,
        "train",
        lambda: xchm.train(
            cube,
            model="test-tiny",
            config=config,
            output=out / "run",
            device=device,
            progress=progress,
        ),
    )
    val = result.history[result.best_epoch]
    _say(
        3,
        total,
        f"trained test-tiny for {len(result.history)} epochs: best val MAE "
        f"{val.get('val_mae', float('nan')):.2f} m (epoch {result.best_epoch}) "
        f"-> {result.best_checkpoint}",
    )

    if real_dir is not None:  # predict the largest held-out scene
        held = sorted(set(cube.sel(split="val").coord("scene")))
        pair = max(
            (p for p in pairs if p.scene in held), key=lambda p: Path(p.image).stat().st_size
        )
        image_path, truth = _real_scene(out, pair, resolution)
        test_rows = slice(None)
    image = _open_chunked(image_path)
    gpus = device is None or device.startswith("cuda")
    sizing: dict[str, Any] = {} if gpus and xchm.cluster.gpu_count() else {"n_workers": workers}
    with xchm.cluster.start(
        gpus="auto" if gpus else None, dashboard_address=":0", host=host, **sizing
    ):
        ds = _timed(
            seconds,
            "predict",
            lambda: xchm.predict_to_zarr(
                image,
                result.best_checkpoint,
                out / "chm.zarr",
                region_size=1024,
                device=device,
                progress=progress,
            ),
        )
    chm = ds["chm"]
    xchm.write_cog(chm, out / "chm.tif")
    _say(
        4,
        total,
        f"predicted {chm.shape[0]}x{chm.shape[1]} px on a local Dask cluster -> "
        f"{out / 'chm.tif'} (COG); {ds.attrs['xchm_run'].removeprefix('xchm: ')}",
    )

    scores = _timed(
        seconds,
        "evaluate",
        lambda: _evaluate(
            out, cube, result.best_checkpoint, chm, truth, test_rows, real_dir is not None
        ),
    )
    _say(
        5,
        total,
        "held-out "
        + ("plots" if real_dir is not None else "area")
        + ": model "
        + ", ".join(f"{k.upper()} {scores['model'][k]:.2f}" for k in _METRICS)
        + "; predicting the "
        f"train mean ({scores['baseline']['height']:.1f} m) "
        + ", ".join(f"{k.upper()} {scores['baseline'][k]:.2f}" for k in _METRICS),
    )

    from xchm.demo_report import write_maps

    maps = write_maps(out / "report", image_path, chm, truth)
    _say(6, total, f"report: {', '.join(p.name for p in maps)} and metrics in {out / 'report'}")
    seconds["total"] = round(time.perf_counter() - start_all, 1)
    summary = {
        **info,
        "chips": len(cube),
        "epochs": len(result.history),
        **scores,
        "better_than_mean": scores["model"]["mae"] < scores["baseline"]["mae"],
        "files": {
            "cog": str(out / "chm.tif"),
            "store": str(out / "chm.zarr"),
            "checkpoint": str(result.best_checkpoint),
            "report": str(out / "report"),
        },
        "seconds": seconds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    verdict = "better than" if summary["better_than_mean"] else "NOT better than"
    print(
        f"summary: MAE {scores['model']['mae']:.2f} m vs {scores['baseline']['mae']:.2f} m for "
        f"the train mean ({verdict} the mean); {seconds['total']:.0f} s in all; "
        f"{out / 'summary.json'}",
        file=sys.stdout,
        flush=True,
    )
    return summary


def _open_chunked(path: Path) -> Any:
    import rioxarray

    return rioxarray.open_rasterio(path, chunks={"band": -1, "y": 512, "x": 512}, lock=False)


def _real_scene(out: Path, pair: Any, resolution: float) -> tuple[Path, Any]:
    """Average a real scene to ``resolution``, write it; return it and its CHM on its grid."""
    import rioxarray
    from rasterio.enums import Resampling

    rgb: Any = rioxarray.open_rasterio(pair.image)
    image = rgb.rio.reproject(rgb.rio.crs, resolution=resolution, resampling=Resampling.average)
    image = image.assign_coords(band=[1, 2, 3])
    image.attrs["long_name"] = ("red", "green", "blue")
    image.rio.to_raster(out / "scene.tif")
    lidar: Any = rioxarray.open_rasterio(pair.chm, masked=True)
    lidar = lidar.squeeze("band", drop=True)
    truth = lidar.rio.reproject_match(image, resampling=Resampling.average)
    truth.rio.to_raster(out / "truth.tif")
    return out / "scene.tif", truth


def _evaluate(
    out: Path, cube: Any, checkpoint: Path, chm: Any, truth: Any, rows: slice, real: bool
) -> dict[str, Any]:
    """Score the model and the train-mean baseline on held-out data; write the report."""
    import xchm
    from xchm.evaluation.metrics import height_metrics

    if real:  # whole held-out plots, chip by chip
        m = xchm.evaluate(checkpoint, cube, split="val", output=out / "report", progress=False)
        base = m["baseline"]
        return {
            "model": {k: float(m[k]) for k in _METRICS},
            "baseline": {"height": float(base["height"]), **{k: float(base[k]) for k in _METRICS}},
        }
    _, train_h = cube.sel(split="train").read(np.arange(len(cube.sel(split="train"))))
    mean = float(np.nanmean(train_h))
    pred = chm.isel(y=rows).load()
    ref = truth.isel(y=rows).rio.write_crs(chm.rio.crs)
    pred = pred.assign_coords(x=ref.x, y=ref.y)  # same grid; exact coordinates
    m = xchm.evaluate_raster(pred, ref, output=out / "report")
    base = height_metrics(np.full(ref.shape, mean, dtype=np.float32), ref.values)
    return {
        "model": {k: float(m[k]) for k in _METRICS},
        "baseline": {"height": mean, **{k: float(base[k]) for k in _METRICS}},
    }
