"""Pixel losses over valid (finite) height labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from xchm.training.config import TrainConfig

__all__ = ["height_loss"]


def height_loss(pred: torch.Tensor, target: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Mean loss over pixels whose label is finite (NaN labels are no data).

    ``asymmetric_mse`` weighs squared errors by ``underestimation_penalty`` where the
    prediction is below the label (the reference: tall trees are rare and get
    underestimated), by 1 elsewhere. A batch without any valid label gives 0 with a
    gradient (so every DDP rank still takes part in the step).

    Examples
    --------
    >>> import torch
    >>> from xchm.training import TrainConfig
    >>> pred, target = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])
    >>> height_loss(pred, target, TrainConfig()).item()  # (3 * 1 + 1) / 2
    2.0
    """
    import torch
    import torch.nn.functional as F

    pred = pred.reshape(target.shape).float()
    valid = torch.isfinite(target)
    if not bool(valid.any()):
        return pred.sum() * 0.0
    p, t = pred[valid], target[valid]
    kind = config.loss
    if kind == "asymmetric_mse":
        weight = torch.where(p < t, config.underestimation_penalty, 1.0)
        return (weight * (p - t) ** 2).mean()
    if kind == "mse":
        return F.mse_loss(p, t)
    if kind == "l1":
        return F.l1_loss(p, t)
    return F.huber_loss(p, t, delta=config.huber_delta)
