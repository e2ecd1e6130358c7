"""``xchm.train``: fine-tune a canopy height model on a chip cube.

One loop for one process or many (DDP under ``torchrun``): chips stream from the
cube (:class:`~xchm.training.data.ChipStream`), are normalised on the device with
the cube's statistics, and the policy (:mod:`xchm.training.policy`) decides which
backbone blocks train. Every epoch ends with a validation pass, the scheduler and
early-stopping step, the best model saved as an xchm checkpoint (``best/``) and the
full training state (``checkpoints/last.pt``) from which ``resume=True`` continues
exactly where the run stopped.

The run directory, resume, checkpoints, logs, the non-finite loss check and DDP are
the shared run skeleton's (:class:`xchm.runs.run.Run`); this module holds what is
fine-tuning's own: the optimiser and scheduler, early stopping and the best model.

At the end of every run the best model's val MAE is compared with predicting the
train split's mean height everywhere (:mod:`xchm.training.baseline`): a run that does
not beat that constant gets an :class:`~xchm.errors.XCHMWarning` saying what to try,
and both numbers go into the :class:`TrainResult` and the run's ``summary.json``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from xchm.chips.cube import ChipCube, open_cube
from xchm.errors import InputError, XCHMWarning
from xchm.models.presets import DecoderSpec
from xchm.runs.result import RunResult
from xchm.runs.run import Run
from xchm.training.config import TrainConfig

__all__ = ["train", "TrainResult", "SUMMARY"]

#: The run's summary, relative to the run directory: :class:`TrainResult` as JSON,
#: without the history (``metrics.jsonl`` holds it).
SUMMARY = "summary.json"


@dataclass(frozen=True)
class TrainResult(RunResult):
    """What :func:`train` returns (``to_dict()``: the same as plain JSON)."""

    best_checkpoint: Path | str
    """Directory of the best model (``xchm.load_model`` reads it); a URL when the run's is."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Per-epoch metrics (train/val loss, val MAE/RMSE/bias, learning rates, time)."""
    best_epoch: int = -1
    """Epoch (0-based) of the best validation loss."""
    stopped_early: bool = False
    """Whether early stopping ended the run before ``config.epochs``."""
    best_val_mae: float = math.nan
    """Val MAE (m) of the best model (``history[best_epoch]["val_mae"]``)."""
    baseline_height: float = math.nan
    """The train split's mean height (m): the constant baseline's prediction."""
    baseline_mae: float = math.nan
    """Val MAE (m) of predicting ``baseline_height`` everywhere (as ``xchm.evaluate``)."""
    beats_baseline: bool | None = None
    """Whether ``best_val_mae < baseline_mae`` (None when either is not a number). False
    also raised an :class:`~xchm.errors.XCHMWarning`: the model learned nothing from the
    imagery."""


def train(
    cube: ChipCube | str | Path,
    *,
    model: str | Path = "dinov3-vitl16-sat",
    weights: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    config: TrainConfig | None = None,
    output: str | Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    decoder: str | DecoderSpec | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on the train split of ``cube``, validating on its val split.

    Parameters
    ----------
    cube
        A chip cube (or its path) with ``train`` and ``val`` chips.
    model
        Preset name or xchm checkpoint directory to start from.
    weights
        Pretrained backbone weights for a preset (Meta ``.pth``, HF folder, timm); for
        ``chmv2`` its head file or snapshot folder (see ``xchm.load_model``).
    backbone_weights
        The backbone file beside ``weights`` (CHMv2's ``dinov3_vitl16_pretrain_sat493m-*.pth``;
        see ``xchm.load_model``). Part of the run's identity, as ``weights``.
    config
        Training settings (:class:`TrainConfig`; defaults are the reference's, meant
        for a pretrained ViT on a large cube: on a small cube or a random backbone use
        ``TrainConfig.recipe("small-data")`` or ``TrainConfig.recipe("from-scratch")``).
    output
        Run directory: ``best/`` (xchm checkpoint), ``checkpoints/last.pt``,
        ``metrics.jsonl``, ``metrics.csv``, ``config.json``, ``summary.json`` (the
        result without the history, at the end) and ``tensorboard/`` with
        ``config.tensorboard``. It must be new, empty or a training run (see
        ``xchm.outputs``); nothing else in it is touched.
    resume
        Continue the run in ``output`` from its last checkpoint; the cube, model,
        weights and config must be the run's own (:mod:`xchm.runs.job`).
    device
        Torch device (default: this process's CUDA device, else the CPU).
    progress
        Show one progress bar for the whole run and a summary line per epoch (rank 0).
    decoder
        The new decoder of a preset: ``"reference"`` (default), ``"light"`` (under
        1 GFLOP per 64x64 window instead of about 7.2; :mod:`xchm.models.light_decoder`)
        or a :class:`~xchm.models.DecoderSpec`. Part of the run's identity, as
        ``model``; a checkpoint ``model`` keeps its own decoder.

    Returns
    -------
    TrainResult
        With the best model's val MAE next to the train-mean baseline's
        (``baseline_mae``, ``beats_baseline``).

    Warns
    -----
    XCHMWarning
        The best model's val MAE is not below that of predicting the train mean height
        everywhere: the run learned nothing from the imagery (try a recipe,
        :meth:`TrainConfig.recipe`, or :func:`xchm.training.find_lr`).

    Raises
    ------
    OutputExistsError
        ``output`` holds files xchm did not write, another kind of xchm output, or
        (without ``resume``) a training run that made progress.
    PathNotFoundError
        ``resume=True`` but ``output`` holds no state to continue.
    ResumeError
        ``resume=True`` with another cube, model, weights, decoder, number of processes
        or config than the run's (the message names what changed); checked before any work.
    DeviceError
        ``device`` is not a torch device or is unavailable here.
    NonFiniteLossError
        The loss became NaN or infinite (the last checkpoint keeps the last good state).

    Examples
    --------
    >>> result = xchm.train("chips.zarr", model="test-tiny", output="runs/a",  # doctest: +SKIP
    ...                     config=xchm.TrainConfig(epochs=3))
    >>> chm = xchm.predict(image, result.best_checkpoint)  # doctest: +SKIP
    """
    import torch

    from xchm.runs.distributed import place

    cfg = config or TrainConfig()
    cube = cube if isinstance(cube, ChipCube) else open_cube(cube)
    cube.check_labeled("xchm.train")  # before the run directory is created
    for needed in ("train", "val"):
        if not cube.splits.get(needed):
            raise InputError(
                f"chip cube {cube.path} has no {needed!r} chips (splits: {cube.splits}); "
                "build it with a val fraction > 0"
            )
    where = place(device)  # before the run directory is created
    run = Run.start(
        "training",
        cube,
        cfg,
        output,
        place=where,
        model=model,
        weights=weights,
        backbone_weights=backbone_weights,
        resume=resume,
        decoder=decoder,
    )
    net = _model(run, model, weights, backbone_weights, decoder)
    opt = torch.optim.AdamW(_groups(net, cfg), weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg)
    run.restore(partial(_load, net, opt, sched))
    try:
        return _loop(run, net, opt, sched, progress)
    finally:
        run.close()


def _model(
    run: Run[TrainConfig],
    model: str | Path,
    weights: str | Path | None,
    backbone_weights: str | Path | None = None,
    decoder: str | DecoderSpec | None = None,
) -> Any:
    """Load the model to fine-tune on the run's device (a new run: output bias set)."""
    if run.state is not None:  # resumed: the saved weights replace the start
        from xchm.runs.model import model_for_cube

        return model_for_cube(
            run.cube,
            model,
            weights,
            seed=run.config.seed,
            backbone_weights=backbone_weights,
            decoder=decoder,
        ).to(run.device)
    net = initial_model(
        run.cube, model, weights, run.config, backbone_weights=backbone_weights, decoder=decoder
    )
    return net.to(run.device)


def initial_model(
    cube: ChipCube,
    model: str | Path,
    weights: str | Path | None,
    cfg: TrainConfig,
    *,
    backbone_weights: str | Path | None = None,
    decoder: str | DecoderSpec | None = None,
) -> Any:
    """Return the model a new run starts from (on the CPU): for the cube, output bias set.

    Also where :func:`xchm.training.find_lr` starts its sweep.
    """
    from xchm.runs.model import model_for_cube

    net = model_for_cube(
        cube, model, weights, seed=cfg.seed, backbone_weights=backbone_weights, decoder=decoder
    )
    p = cfg.output_bias_percentile
    if p is not None:
        net.decoder.reset_output(_label_percentile(cube, p, cfg.seed))
    return net


def _groups(net: Any, cfg: TrainConfig) -> list[dict[str, Any]]:
    from xchm.training.policy import param_groups

    return param_groups(net, cfg)


def _parts(net: Any, opt: Any, sched: Any, best: dict[str, Any]) -> dict[str, Any]:
    """Fine-tuning's entries of the saved state."""
    return {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "best": best,
    }


def _load(net: Any, opt: Any, sched: Any, state: dict[str, Any]) -> None:
    """Inverse of :func:`_parts` (:meth:`xchm.runs.run.Run.restore` calls it)."""
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])


def _checkpoint(
    run: Run[TrainConfig],
    net: Any,
    opt: Any,
    sched: Any,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    epoch: int,
    batch: int,
    sums: dict[str, Any],
) -> None:
    """Save the full state after ``batch`` batches of ``epoch`` (``sums``: its loss so far)."""
    run.checkpoint(epoch, batch, sums, history, _parts(net, opt, sched, best))


def _scheduler(opt: Any, cfg: TrainConfig) -> Any:
    import torch

    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode="min",
            factor=cfg.plateau_factor,
            patience=cfg.plateau_patience,
            min_lr=[cfg.min_lr, cfg.min_lr * cfg.ft_rate],
        )
    warm, total = cfg.warmup_epochs, cfg.epochs

    def factor(epoch: int) -> float:
        if epoch < warm:
            return (epoch + 1) / (warm + 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _loop(run: Run[TrainConfig], net: Any, opt: Any, sched: Any, progress: bool) -> TrainResult:
    from xchm.training.epoch import run_epoch, validate
    from xchm.training.policy import apply_policy

    cfg = run.config
    epoch, batch, sums, history = run.position()
    sums = sums or {"loss_sum": 0.0, "steps": 0}
    best = (run.state or {}).get("best", {"loss": math.inf, "epoch": -1, "bad_epochs": 0})
    stopped = _patience_spent(best, cfg)  # a run that stopped early stays stopped
    while epoch < cfg.epochs and not stopped:
        t0 = time.perf_counter()
        trainable = apply_policy(net, cfg, epoch)
        checkpoint = partial(_checkpoint, run, net, opt, sched, history, best, epoch)
        train_stats = run_epoch(run, net, opt, epoch, batch, sums, checkpoint, progress)
        val = validate(run, net)
        if cfg.scheduler == "plateau":
            sched.step(val["loss"])
        else:
            sched.step()
        row = {
            "epoch": epoch,
            "train_loss": train_stats["loss"],
            "val_loss": val["loss"],
            "val_mae": val["mae"],
            "val_rmse": val["rmse"],
            "val_bias": val["bias"],
            "lr_decoder": opt.param_groups[0]["lr"],
            "lr_backbone": opt.param_groups[1]["lr"],
            "trainable_backbone_tensors": len(trainable),
            "steps": train_stats["steps"],
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if val["loss"] < best["loss"]:
            best = {"loss": val["loss"], "epoch": epoch, "bad_epochs": 0}
            _save_best(run, net, row)
        else:
            best = {**best, "bad_epochs": best["bad_epochs"] + 1}
        stopped = _patience_spent(best, cfg)
        epoch, batch, sums = epoch + 1, 0, {"loss_sum": 0.0, "steps": 0}
        _checkpoint(run, net, opt, sched, history, best, epoch, 0, sums)
        run.log(history)
    result = _with_baseline(
        run,
        TrainResult(
            best_checkpoint=run.result("best"),
            history=history,
            best_epoch=int(best["epoch"]),
            stopped_early=stopped,
        ),
    )
    _write_summary(run, result)
    return result


def _with_baseline(run: Run[TrainConfig], result: TrainResult) -> TrainResult:
    """Compare the best val MAE with the train-mean baseline; warn when it is not better."""
    from dataclasses import replace

    from xchm.training.baseline import mean_baseline

    base = mean_baseline(run.cube)
    rows = result.history
    best_mae = (
        float(rows[result.best_epoch]["val_mae"])
        if 0 <= result.best_epoch < len(rows)
        else math.nan
    )
    beats = None if math.isnan(best_mae) or math.isnan(base["mae"]) else best_mae < base["mae"]
    if beats is False and run.main:
        warnings.warn(
            f"xchm.train: the best model (epoch {result.best_epoch}) has a val MAE of "
            f"{best_mae:.3f} m, no better than predicting the train mean height "
            f"{base['height']:.2f} m everywhere (MAE {base['mae']:.3f} m): it learned nothing "
            "from the imagery. Try a recipe for your case (TrainConfig.recipe('small-data') for "
            "a pretrained backbone, 'from-scratch' for a random one; CLI --recipe), a learning "
            "rate from xchm.training.find_lr (CLI --find-lr), or more epochs",
            XCHMWarning,
            stacklevel=4,  # train's caller
        )
    return replace(
        result,
        best_val_mae=best_mae,
        baseline_height=base["height"],
        baseline_mae=base["mae"],
        beats_baseline=beats,
    )


def _write_summary(run: Run[TrainConfig], result: TrainResult) -> None:
    """Write ``summary.json`` (the result, without the history) in the run directory; rank 0."""
    from xchm.outputs import write_atomic

    if not run.main:
        return
    summary = {k: v for k, v in result.to_dict().items() if k != "history"}
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    write_atomic(run.output / SUMMARY, lambda tmp: tmp.write_text(text))
    run.publish()  # a run into a URL: send the file to the store, as Run.log does


def _save_best(run: Run[TrainConfig], net: Any, row: dict[str, Any]) -> None:
    provenance = {
        "trained_on": str(run.cube.path),
        "cube_chips": run.cube.splits,
        "epoch": row["epoch"],
        "val_loss": row["val_loss"],
        "val_mae": row["val_mae"],
        "val_rmse": row["val_rmse"],
    }
    run.save_model(net, "best", provenance)


def _patience_spent(best: dict[str, Any], cfg: TrainConfig) -> bool:
    """Early stopping: ``patience`` epochs without a better validation loss (0: never)."""
    return cfg.patience > 0 and best["bad_epochs"] >= cfg.patience


def _label_percentile(cube: ChipCube, q: float, seed: int, max_chunks: int = 16) -> float:
    """``q``-th percentile of valid training heights, from a few random chunks."""
    train = cube.sel(split="train")
    chunk = cube.height.chunks[0]
    groups = train.index // chunk
    picked = np.random.default_rng(seed).permutation(np.unique(groups))[:max_chunks]
    positions = np.flatnonzero(np.isin(groups, picked))
    _, heights = train.read(positions)
    valid = heights[np.isfinite(heights)]
    if valid.size == 0:
        raise InputError("the training chips have no valid height; cannot set the output bias")
    return float(np.percentile(valid, q))
