"""Normalise raw image batches on the device, with a model card's statistics.

The same arithmetic as :meth:`xchm.ModelCard.normalize` (NumPy), in torch, so that
training, evaluation and prediction normalise on the device after moving compact raw DN there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from xchm.errors import InputError
from xchm.models.card import BandStats

if TYPE_CHECKING:
    import torch

__all__ = ["normalize_batch", "prepare_inputs"]


def normalize_batch(raw: torch.Tensor, stats: Sequence[BandStats]) -> torch.Tensor:
    """Clip to ``[0, clip_max]``, scale to ``[0, 1]`` and z-score each band.

    Parameters
    ----------
    raw
        ``(batch, band, h, w)`` raw values (any real dtype) on any device.
    stats
        One :class:`~xchm.BandStats` per band, in order.

    Returns
    -------
    torch.Tensor
        float32, same shape and device.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from xchm import ModelCard
    >>> card = ModelCard(preset="test-tiny")
    >>> z = normalize_batch(torch.full((1, 3, 2, 2), 1000), card.statistics)
    >>> bool(torch.allclose(z[0], torch.from_numpy(card.normalize(np.full((3, 2, 2), 1000)))))
    True
    """
    import torch

    if raw.ndim != 4 or raw.shape[1] != len(stats):
        raise InputError(f"expected (batch, {len(stats)}, h, w), got {tuple(raw.shape)}")
    dev = raw.device
    clip = torch.tensor([s.clip_max for s in stats], device=dev).view(1, -1, 1, 1)
    mean = torch.tensor([s.mean for s in stats], device=dev).view(1, -1, 1, 1)
    std = torch.tensor([s.std for s in stats], device=dev).view(1, -1, 1, 1)
    x = raw.float()
    return (x.clamp(min=0).minimum(clip) / clip - mean) / std


def prepare_inputs(
    raw: torch.Tensor, nodata: float | None, stats: Sequence[BandStats], device: Any
) -> torch.Tensor:
    """Move raw chips to ``device`` and normalise them there; missing pixels become 0.

    A pixel is missing when any band is NaN or equals ``nodata``; 0 is the band
    mean after normalisation, the least informative value.

    Examples
    --------
    >>> import torch
    >>> from xchm import ModelCard
    >>> raw = torch.full((1, 3, 2, 2), 1000)
    >>> raw[0, 1, 0, 0] = 0
    >>> z = prepare_inputs(raw, 0, ModelCard(preset="test-tiny").statistics, "cpu")
    >>> z[0, :, 0, 0].tolist()
    [0.0, 0.0, 0.0]
    """
    import torch

    raw = raw.to(device, non_blocking=True)
    z = normalize_batch(raw, stats)
    if raw.is_floating_point():
        missing = torch.isnan(raw).any(dim=1, keepdim=True)
    else:
        missing = torch.zeros_like(raw[:, :1], dtype=torch.bool)
    if nodata is not None and not math.isnan(nodata):
        missing |= (raw == nodata).any(dim=1, keepdim=True)
    return torch.where(missing, torch.zeros_like(z), z)
