"""``xchm.train``: fine-tune a canopy height model on a chip cube.

One loop for one process or many (DDP under ``torchrun``): chips stream from the
cube (:class:`~xchm.training.data.ChipStream`), are normalised on the device with
the cube's statistics, and the policy (:mod:`xchm.training.policy`) decides which
backbone blocks train. Every epoch ends with a validation pass, the scheduler and
early-stopping step, the best model saved as an xchm checkpoint (``best/``) and the
full training state (``checkpoints/last.pt``) from which ``resume=True`` continues
exactly where the run stopped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from xchm.chips.cube import ChipCube, open_cube
from xchm.errors import InputError, ResumeError
from xchm.runs.state import capture_rng, open_run, restore_rng, save_model_dir, save_state
from xchm.training.config import TrainConfig

__all__ = ["train", "TrainResult"]

log = logging.getLogger(__name__)
_STATE = Path("checkpoints") / "last.pt"


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns."""

    best_checkpoint: Path
    """Directory of the best model (``xchm.load_model`` reads it)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Per-epoch metrics (train/val loss, val MAE/RMSE/bias, learning rates, time)."""
    best_epoch: int = -1
    """Epoch (0-based) of the best validation loss."""
    stopped_early: bool = False
    """Whether early stopping ended the run before ``config.epochs``."""


def train(
    cube: ChipCube | str | Path,
    *,
    model: str | Path = "dinov3-vitl16-sat",
    weights: str | Path | None = None,
    config: TrainConfig | None = None,
    output: str | Path,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``model`` on the train split of ``cube``, validating on its val split.

    Parameters
    ----------
    cube
        A chip cube (or its path) with ``train`` and ``val`` chips.
    model
        Preset name or xchm checkpoint directory to start from.
    weights
        Pretrained backbone weights for a preset (Meta ``.pth``, HF folder, timm).
    config
        Training settings (:class:`TrainConfig`; defaults are the reference's).
    output
        Run directory: ``best/`` (xchm checkpoint), ``checkpoints/last.pt``,
        ``metrics.jsonl``, ``metrics.csv``, ``config.json``. It must be new, empty or
        a training run (see ``xchm.outputs``); nothing else in it is touched.
    resume
        Continue the run in ``output`` from its last checkpoint; the cube, model,
        weights and config must be the run's own (:mod:`xchm.runs.job`).
    device
        Torch device (default: this process's CUDA device, else the CPU).
    progress
        Show a progress bar per epoch (rank 0).

    Returns
    -------
    TrainResult

    Raises
    ------
    OutputExistsError
        ``output`` holds files xchm did not write, another kind of xchm output, or
        (without ``resume``) a training run that made progress.
    PathNotFoundError
        ``resume=True`` but ``output`` holds no state to continue.
    ResumeError
        ``resume=True`` with another cube, model, weights, number of processes or
        config than the run's (the message names what changed); checked before any work.
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

    cfg = config or TrainConfig()
    cube = cube if isinstance(cube, ChipCube) else open_cube(cube)
    cube.check_labeled("xchm.train")  # before the run directory is created
    for needed in ("train", "val"):
        if not cube.splits.get(needed):
            raise InputError(
                f"chip cube {cube.path} has no {needed!r} chips (splits: {cube.splits}); "
                "build it with a val fraction > 0"
            )
    run = _Run.start(cube, cfg, Path(output), resume, device, model, weights)
    net = run.build_model(model, weights)
    opt = torch.optim.AdamW(_groups(net, cfg), weight_decay=cfg.weight_decay)
    sched = _scheduler(opt, cfg)
    if run.state is not None:
        try:
            net.load_state_dict(run.state["model"])
            opt.load_state_dict(run.state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ResumeError(
                f"the state in {run.output / _STATE} does not fit the model {model!r}: it was "
                "saved by another model. Pass the run's own model, or start a new run in "
                f"another output directory ({str(err).splitlines()[0]})"
            ) from err
        sched.load_state_dict(run.state["scheduler"])
        restore_rng(run.state["rng"])
    return run.loop(net, opt, sched, progress)


def _groups(net: Any, cfg: TrainConfig) -> list[dict[str, Any]]:
    from xchm.training.policy import param_groups

    return param_groups(net, cfg)


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


@dataclass
class _Run:
    """State of one training run in one process."""

    cube: ChipCube
    cfg: TrainConfig
    output: Path
    device: Any
    rank: int
    world: int
    state: dict[str, Any] | None
    job: dict[str, Any]

    @classmethod
    def start(
        cls,
        cube: ChipCube,
        cfg: TrainConfig,
        output: Path,
        resume: bool,
        device: str | None,
        model: str | Path,
        weights: str | Path | None,
    ) -> _Run:
        import torch

        from xchm.runs.distributed import process_group, resolve_device
        from xchm.runs.job import fingerprint

        rank, world, local = process_group()
        dev = resolve_device(device, local)  # before the run directory is created
        job = fingerprint(cube, model, weights, world)
        state = open_run(
            output,
            output / _STATE,
            cfg.to_dict(),
            job=job,
            resume=resume,
            rank=rank,
            expected_format="xchm-train-state",
            config_type=TrainConfig,
        )
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        return cls(cube, cfg, output, dev, rank, world, state, job)

    # -- model ------------------------------------------------------------------------
    def build_model(self, model: str | Path, weights: str | Path | None) -> Any:
        from xchm.models import api

        cube = self.cube
        options: dict[str, Any] = {
            "bands": cube.bands,
            "statistics": cube.statistics,
            "window": cube.window,
            "seed": self.cfg.seed,
        }
        if cube.pixel_size is not None:
            options["pixel_size"] = cube.pixel_size
        if Path(str(model)).is_dir():
            net = api.load_model(model)
            if net.card.bands != cube.bands:
                raise InputError(
                    f"checkpoint {model} expects bands {net.card.bands}; the cube has {cube.bands}"
                )
        else:
            if weights is not None and api.is_checkpoint(weights):
                # A pretrained xchm backbone (xchm.pretrain) was adapted to inputs
                # normalised with its own card's statistics: keep them.
                del options["statistics"]
            net = api.load_model(str(model), weights=weights, **options)
        p = self.cfg.output_bias_percentile
        if p is not None and self.state is None:
            net.decoder.reset_output(_label_percentile(cube, p, self.cfg.seed))
        self.source = {"model": str(model), "weights": None if weights is None else str(weights)}
        return net.to(self.device)

    # -- the loop ---------------------------------------------------------------------
    def loop(self, net: Any, opt: Any, sched: Any, progress: bool) -> TrainResult:
        from xchm.training.epoch import run_epoch, validate
        from xchm.training.policy import apply_policy

        cfg, st = self.cfg, self.state or {}
        history: list[dict[str, Any]] = list(st.get("history", []))
        best = st.get("best", {"loss": math.inf, "epoch": -1, "bad_epochs": 0})
        epoch, batch = int(st.get("epoch", 0)), int(st.get("batch", 0))
        partial = st.get("partial", {"loss_sum": 0.0, "steps": 0})
        stopped = _patience_spent(best, cfg)  # a run that stopped early stays stopped
        while epoch < cfg.epochs and not stopped:
            t0 = time.perf_counter()
            trainable = apply_policy(net, cfg, epoch)
            checkpoint = _Checkpointer(self, net, opt, sched, history, best, epoch)
            train_stats = run_epoch(
                self, net, opt, epoch, batch, partial, checkpoint, progress and self.rank == 0
            )
            val = validate(self, net)
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
                self._save_best(net, row)
            else:
                best = {**best, "bad_epochs": best["bad_epochs"] + 1}
            stopped = _patience_spent(best, cfg)
            epoch, batch, partial = epoch + 1, 0, {"loss_sum": 0.0, "steps": 0}
            self._log(row)
            _Checkpointer(self, net, opt, sched, history, best, epoch).save(0, partial)
        return TrainResult(
            best_checkpoint=self.output / "best",
            history=history,
            best_epoch=int(best["epoch"]),
            stopped_early=stopped,
        )

    def _save_best(self, net: Any, row: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        card = net.card
        net.card = replace(
            card,
            provenance={
                **dict(card.provenance),
                "trained_on": str(self.cube.path),
                "cube_content_sha256": self.job["cube"]["content"],
                "cube_chips": self.cube.splits,
                "epoch": row["epoch"],
                "val_loss": row["val_loss"],
                "val_mae": row["val_mae"],
                "val_rmse": row["val_rmse"],
                "config": self.cfg.to_dict(),
                **self.source,
            },
        )
        try:
            save_model_dir(net, self.output / "best")
        finally:
            net.card = card

    def _log(self, row: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.output / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        rows = [
            json.loads(line)
            for line in (self.output / "metrics.jsonl").read_text().split("\n")
            if line
        ]
        keys = list(rows[0])
        lines = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]
        (self.output / "metrics.csv").write_text("\n".join(lines) + "\n")
        log.info("epoch %d: %s", row["epoch"], row)
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(str(self.output / "tensorboard")) as tb:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, int | float):
                        tb.add_scalar(k, v, row["epoch"])


@dataclass
class _Checkpointer:
    """Save the full training state at a data position (epoch, batches done)."""

    run: _Run
    net: Any
    opt: Any
    sched: Any
    history: list[dict[str, Any]]
    best: dict[str, Any]
    epoch: int

    def save(self, batch: int, partial: dict[str, Any]) -> None:
        if self.run.rank != 0:
            return
        state = {
            "format": "xchm-train-state",
            "model": self.net.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": capture_rng(),
            "epoch": self.epoch,
            "batch": batch,
            "partial": partial,
            "history": self.history,
            "best": self.best,
            "config": self.run.cfg.to_dict(),
            "job": self.run.job,
        }
        save_state(state, self.run.output / _STATE)


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
