"""One training epoch and one validation pass (used by :mod:`xchm.training.trainer`)."""

from __future__ import annotations

import math
from typing import Any

from xchm.models.normalize import prepare_inputs
from xchm.runs.distributed import all_reduce_sum, wrap
from xchm.runs.precision import autocast
from xchm.training.losses import height_loss

__all__ = ["run_epoch", "train_step", "validate"]


def _stream(run: Any, split: str, *, train: bool) -> Any:
    from xchm.training.data import ChipStream

    cfg = run.config
    return ChipStream(
        run.cube,
        split=split,
        batch_size=cfg.batch_size,
        shuffle=train,
        buffer_chunks=cfg.buffer_chunks,
        augment=cfg.augment and train,
        seed=cfg.seed,
        rank=run.rank,
        world_size=run.world,
        drop_last=train,
    )


def train_step(
    model: Any,
    opt: Any,
    trainable: list[Any],
    raw: Any,
    heights: Any,
    nodata: float | None,
    stats: Any,
    cfg: Any,
) -> Any:
    """One optimiser step on a batch of raw chips; return the loss (detached tensor).

    The one training step: :func:`run_epoch` and :func:`xchm.training.find_lr` take it.
    ``model`` may be the DDP wrapper; the device is that of its parameters.
    """
    import torch

    device = trainable[0].device if trainable else next(model.parameters()).device
    x = prepare_inputs(raw, nodata, stats, device)
    y = heights.to(device, non_blocking=True)
    with autocast(device, cfg.mixed_precision):
        pred = model(x, validate=False)
    loss = height_loss(pred[:, 0], y, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
    opt.step()
    return loss.detach()


def run_epoch(
    run: Any,
    net: Any,
    opt: Any,
    epoch: int,
    start_batch: int,
    partial: dict[str, Any],
    checkpoint: Any,
    progress: bool,
) -> dict[str, Any]:
    """Train one epoch from batch ``start_batch``; return the mean loss and steps.

    ``checkpoint(batches_done, partial)`` saves the state mid-epoch (every
    ``checkpoint_every`` steps); ``partial`` holds the loss summed so far.
    """
    import torch

    from xchm.training.data import make_loader

    cfg, stats = run.config, net.card.statistics
    stream = _stream(run, "train", train=True)
    stream.set_epoch(epoch)
    steps = (
        len(stream)
        if cfg.max_steps_per_epoch is None
        else min(len(stream), cfg.max_steps_per_epoch)
    )
    if start_batch:
        stream.set_position(start_batch)
    loader = make_loader(stream, num_workers=cfg.num_workers, pin_memory=run.device.type == "cuda")
    model = wrap(net, run.device)
    net.train()
    trainable = [p for p in net.parameters() if p.requires_grad]
    loss_sum, done = float(partial["loss_sum"]), int(partial["steps"])
    bar = run.progress(steps, epoch, start_batch, "batch", progress)  # the fit's one bar
    with torch.random.fork_rng(devices=[]):  # the loader's seed draw must not shift dropout
        batches = iter(loader)
    for i, (raw, heights) in enumerate(batches, start=start_batch):
        if i >= steps:
            break
        loss = train_step(model, opt, trainable, raw, heights, run.cube.nodata, stats, cfg)
        value = loss.item()  # the step's one sync with the device
        run.check_loss(value, epoch, i, "Lower lr, keep grad_clip on or use loss='huber'")
        loss_sum, done = loss_sum + value, done + 1
        bar.set_postfix(loss=f"{loss_sum / done:.3f}", refresh=False)  # shown by update()
        bar.update()
        if run.checkpoint_due(i + 1, steps):
            checkpoint(i + 1, {"loss_sum": loss_sum, "steps": done})
    total, count = all_reduce_sum([loss_sum, done], run.device)
    return {"loss": total / max(count, 1), "steps": done}


def validate(run: Any, net: Any) -> dict[str, float]:
    """Pixel-weighted loss, MAE, RMSE and bias over the val split (all ranks)."""
    import torch

    from xchm.training.data import make_loader

    stream = _stream(run, "val", train=False)
    stream.set_epoch(0)
    loader = make_loader(stream, num_workers=run.config.num_workers, pin_memory=False)
    sums = [0.0] * 5  # loss * n, n, |e|, e^2, e
    training = net.training
    net.eval()
    with torch.random.fork_rng(devices=[]):
        batches = iter(loader)
    with torch.inference_mode():
        for raw, heights in batches:
            x = prepare_inputs(raw, run.cube.nodata, net.card.statistics, run.device)
            y = heights.to(run.device)
            with autocast(run.device, run.config.mixed_precision):
                pred = net(x, validate=False)[:, 0].float()
            valid = torch.isfinite(y)
            count = int(valid.sum())
            if count == 0:
                continue
            err = (pred - y)[valid].double()
            sums[0] += float(height_loss(pred, y, run.config)) * count
            sums[1] += count
            sums[2] += float(err.abs().sum())
            sums[3] += float((err * err).sum())
            sums[4] += float(err.sum())
    net.train(training)
    loss, n, abs_sum, sq_sum, err_sum = all_reduce_sum(sums, run.device)
    if n == 0:
        nan = float("nan")
        return {"loss": nan, "mae": nan, "rmse": nan, "bias": nan, "n_pixels": 0}
    return {
        "loss": loss / n,
        "mae": abs_sum / n,
        "rmse": math.sqrt(sq_sum / n),
        "bias": err_sum / n,
        "n_pixels": int(n),
    }
