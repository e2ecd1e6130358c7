"""``find_lr``: a learning-rate range test, to choose ``TrainConfig.lr`` before a run.

The test of Smith (2015, "Cyclical learning rates"), as fastai's and Lightning's
learning-rate finders run it: train from the run's starting point while the
learning rate grows exponentially from ``start_lr`` to ``end_lr``, one step per
value, and watch the loss. The loss first barely moves (the rate is too small),
then falls fastest, then turns up and explodes (too large). The suggestion is the
rate at the lowest smoothed loss divided by ten (``"min/10"``, fastai's first rule,
the default), or where the smoothed loss falls fastest against log(lr)
(``"steepest"``, Lightning's). On small cubes the loss of one batch differs from the
next's by more than a hundred steps of a good rate improve it (heights differ from
chip to chip), so the slope of the smoothed curve mostly follows that noise, and the
lowest point, where the rate starts to blow the loss up, is the steadier landmark
(measured on the synthetic landscape: docs/training.md).

Written here rather than taken from a library: Lightning's tuner needs a
LightningModule and fastai's a Learner, and neither reads a chip cube; what is
shared with training (the model for the cube, the output bias, the policy's
parameter groups, the loss, the chip stream) is the training code itself, so the
sweep sees exactly what the run will. Nothing is written: no run folder, no
checkpoint; the model is discarded at the end.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xchm.chips.cube import ChipCube, open_cube
from xchm.errors import InputError
from xchm.models.presets import DecoderSpec
from xchm.training.config import TrainConfig

__all__ = ["LRFinderResult", "find_lr", "suggest_lr", "RULES"]

#: How the suggestion is read from the curve.
RULES = ("steepest", "min/10")


@dataclass(frozen=True)
class LRFinderResult:
    """What :func:`find_lr` returns: the curve and the suggested learning rate."""

    lrs: list[float] = field(default_factory=list)
    """Decoder learning rate of each step (the backbone's is ``lr * ft_rate``)."""
    losses: list[float] = field(default_factory=list)
    """Smoothed training loss after each step (exponential moving average, bias-corrected)."""
    raw_losses: list[float] = field(default_factory=list)
    """Training loss of each step's batch."""
    suggestion: float = math.nan
    """The suggested ``TrainConfig.lr`` (NaN when the curve is too short to read)."""
    rule: str = "min/10"
    """The rule that gave ``suggestion`` (one of ``RULES``)."""
    stopped_early: bool = False
    """Whether the sweep stopped before ``end_lr`` because the loss diverged."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (NaN as None).

        Examples
        --------
        >>> LRFinderResult(lrs=[1e-3], losses=[2.0], raw_losses=[2.0]).to_dict()["rule"]
        'min/10'
        """
        from xchm.runs.result import jsonable

        return {k: jsonable(v) for k, v in self.__dict__.items()}

    def plot(self, ax: Any = None) -> Any:
        """Draw the smoothed loss against the learning rate (log axis); return the axes."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(6, 4))[1]
        ax.plot(self.lrs, self.losses, label="smoothed loss")
        if math.isfinite(self.suggestion):
            ax.axvline(self.suggestion, color="C3", ls="--", label=f"{self.suggestion:.2g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss")
        ax.legend()
        return ax


def suggest_lr(
    lrs: Any, losses: Any, *, rule: str = "min/10", skip_start: int | None = None
) -> tuple[float, str]:
    """Read a learning rate off a smoothed loss curve.

    Parameters
    ----------
    lrs, losses
        The swept learning rates (increasing) and the smoothed loss at each.
    rule
        ``"min/10"``: a tenth of the rate at the lowest loss; ``"steepest"``: where
        the loss falls fastest against log(lr), before its lowest point.
    skip_start
        Points ignored at the start, where the moving average still holds few batches
        and follows their noise (default: 10 % of them, at least 10; on a flat NEON
        curve the lowest point otherwise fell among the first ten).

    Returns
    -------
    (float, str)
        The learning rate and the rule used: ``"steepest"`` falls back on
        ``"min/10"`` when fewer than 3 points lie before the lowest loss; NaN when
        there are fewer than 2 points after ``skip_start``.

    Examples
    --------
    >>> lrs = np.logspace(-5, 0, 50)
    >>> losses = 1 + np.tanh(-np.log10(lrs / 1e-3) * 2) + (lrs > 0.1) * 50 * lrs
    >>> lr, rule = suggest_lr(lrs, losses, rule="steepest")
    >>> rule, bool(3e-4 < lr < 3e-3)
    ('steepest', True)
    >>> lr, rule = suggest_lr(lrs, losses)
    >>> rule, bool(3e-3 < lr < 3e-2)
    ('min/10', True)
    """
    if rule not in RULES:
        raise InputError(f"rule must be one of {RULES}, got {rule!r}")
    lr, loss = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    keep = np.isfinite(loss)
    skip = max(10, len(loss) // 10) if skip_start is None else skip_start
    lr, loss = lr[keep][skip:], loss[keep][skip:]
    if lr.size < 2:
        return math.nan, rule
    lowest = int(np.argmin(loss))
    if rule == "steepest" and lowest >= 2:
        slope = np.gradient(loss[: lowest + 1], np.log10(lr[: lowest + 1]))
        return float(lr[int(np.argmin(slope))]), "steepest"
    return float(lr[lowest] / 10), "min/10"


def find_lr(
    cube: ChipCube | str | Path,
    model: str | Path = "dinov3-vitl16-sat",
    *,
    weights: str | Path | None = None,
    backbone_weights: str | Path | None = None,
    config: TrainConfig | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    steps: int = 100,
    smoothing: float = 0.98,
    diverge: float = 4.0,
    rule: str = "min/10",
    device: str | None = None,
    progress: bool = False,
    decoder: str | DecoderSpec | None = None,
) -> LRFinderResult:
    """Sweep the learning rate over a few training steps and suggest ``TrainConfig.lr``.

    The model starts as :func:`xchm.train` would start it with ``config`` (the cube's
    bands and statistics, the output bias, the policy's first epoch, the loss, the
    batch size, augmentation); each step multiplies the learning rate of both
    optimizer groups by the same factor, from ``start_lr`` to ``end_lr`` for the
    decoder (the backbone's stays ``ft_rate`` times it).

    Parameters
    ----------
    cube
        A chip cube (or its path) with ``train`` chips.
    model, weights, backbone_weights
        As :func:`xchm.train`: a preset or checkpoint, and weights.
    config
        The training settings to test (default ``TrainConfig()``); its ``lr`` is
        ignored, its ``max_steps_per_epoch`` too (the sweep reads the train split
        again as often as ``steps`` needs).
    start_lr, end_lr
        The range swept (decoder learning rate), ``0 < start_lr < end_lr``.
    steps
        Optimizer steps (at most 1000; 100 is enough for a readable curve).
    smoothing
        Weight of the past in the loss's moving average, in [0, 1).
    diverge
        Stop when the smoothed loss exceeds ``diverge`` times its lowest value (or is
        not finite): the rates beyond are useless and only take time.
    rule
        How the suggestion is read (:func:`suggest_lr`): ``"min/10"`` or ``"steepest"``.
    device
        Torch device (default: CUDA if present, else the CPU).
    progress
        Show a progress bar over the steps.
    decoder
        As :func:`xchm.train`: the new decoder of a preset (``"reference"``, ``"light"``).

    Returns
    -------
    LRFinderResult
        The rates, the smoothed and raw losses, the suggestion and the rule used.

    Raises
    ------
    InputError
        Bad range, steps or smoothing; a cube without labelled ``train`` chips.
    DeviceError
        ``device`` is not a torch device or is unavailable here.

    Notes
    -----
    Costs ``steps`` training steps (about ``steps / len(train) * batch_size`` epochs);
    reads chips as training does, writes nothing.

    Examples
    --------
    >>> found = xchm.training.find_lr("chips.zarr", "test-tiny",  # doctest: +SKIP
    ...     config=xchm.TrainConfig.recipe("from-scratch"))
    >>> cfg = xchm.TrainConfig.recipe("from-scratch", lr=found.suggestion)  # doctest: +SKIP
    """
    problems = []
    if not 0 < start_lr < end_lr:
        problems.append(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if not (isinstance(steps, int) and 5 <= steps <= 1000):
        problems.append(f"steps must be an integer in [5, 1000], got {steps!r}")
    if not 0 <= smoothing < 1:
        problems.append(f"smoothing must be in [0, 1), got {smoothing}")
    if not diverge > 1:
        problems.append(f"diverge must be > 1, got {diverge}")
    if rule not in RULES:
        problems.append(f"rule must be one of {RULES}, got {rule!r}")
    if problems:
        raise InputError("find_lr: " + "; ".join(problems))
    cfg = config or TrainConfig()
    cube = cube if isinstance(cube, ChipCube) else open_cube(cube)
    cube.check_labeled("xchm.training.find_lr")
    if not cube.splits.get("train"):
        raise InputError(
            f"chip cube {cube.path} has no 'train' chips (splits: {cube.splits}); "
            "find_lr sweeps on the train split"
        )
    lrs = np.geomspace(start_lr, end_lr, steps)
    raw, smooth, stopped = _sweep(
        cube,
        model,
        weights,
        cfg,
        lrs,
        smoothing,
        diverge,
        device,
        progress,
        backbone_weights,
        decoder,
    )
    done = lrs[: len(raw)].tolist()
    suggestion, used = suggest_lr(done, smooth, rule=rule)
    return LRFinderResult(
        lrs=done,
        losses=smooth,
        raw_losses=raw,
        suggestion=suggestion,
        rule=used,
        stopped_early=stopped,
    )


def _sweep(
    cube: ChipCube,
    model: str | Path,
    weights: str | Path | None,
    cfg: TrainConfig,
    lrs: np.ndarray,
    smoothing: float,
    diverge: float,
    device: str | None,
    progress: bool,
    backbone_weights: str | Path | None = None,
    decoder: str | DecoderSpec | None = None,
) -> tuple[list[float], list[float], bool]:
    """Run the steps; return the raw and smoothed losses and whether it stopped early."""
    import torch
    from tqdm.auto import tqdm

    from xchm.runs.distributed import resolve_device
    from xchm.training.epoch import train_step
    from xchm.training.policy import apply_policy, param_groups
    from xchm.training.trainer import initial_model

    where = resolve_device(device, 0)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG streams stay as they were
        torch.manual_seed(cfg.seed)
        net = initial_model(
            cube, model, weights, cfg, backbone_weights=backbone_weights, decoder=decoder
        )
        net = net.to(where)
        apply_policy(net, cfg, 0)
        groups = param_groups(net, cfg)
        ratios = [g["lr"] / cfg.lr for g in groups]
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        trainable = [p for p in net.parameters() if p.requires_grad]
        stats = net.card.statistics
        net.train()
        raw: list[float] = []
        smooth: list[float] = []
        average, lowest, stopped = 0.0, math.inf, False
        batches = _batches(cube, cfg)
        bar = tqdm(total=len(lrs), desc="find_lr", unit="step", disable=not progress)
        with bar, closing(batches):  # closing: DataLoader workers end with the sweep
            for lr, (images, heights) in zip(lrs, batches, strict=False):
                for group, ratio in zip(opt.param_groups, ratios, strict=True):
                    group["lr"] = float(lr) * ratio
                loss = train_step(net, opt, trainable, images, heights, cube.nodata, stats, cfg)
                value = float(loss)
                raw.append(value)
                # Moving average with the bias correction of Adam's moments.
                average = smoothing * average + (1 - smoothing) * value
                smoothed = average / (1 - smoothing ** len(raw))
                smooth.append(smoothed)
                bar.update()
                if not math.isfinite(smoothed) or smoothed > diverge * lowest:
                    stopped = True
                    break
                lowest = min(lowest, smoothed)
    return raw, smooth, stopped


def _batches(cube: ChipCube, cfg: TrainConfig) -> Generator[Any, None, None]:
    """Training batches, epoch after epoch, without end (the caller stops)."""
    from xchm.training.data import ChipStream, make_loader

    stream = ChipStream(
        cube,
        split="train",
        batch_size=cfg.batch_size,
        shuffle=True,
        buffer_chunks=cfg.buffer_chunks,
        augment=cfg.augment,
        seed=cfg.seed,
    )
    loader = make_loader(stream, num_workers=cfg.num_workers, pin_memory=False)
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from loader
        epoch += 1
