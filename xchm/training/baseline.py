"""The constant baseline of a training run: predict the train split's mean height everywhere.

A model whose validation MAE is not below this constant's has learned nothing from
the imagery. :func:`xchm.evaluate` reports the same baseline (the mean of the train
split's finite heights, from at most ``BASELINE_MAX_CHIPS`` chips in evenly spread
whole chunks), read by the same :meth:`ChipCube.finite_heights
<xchm.chips.ChipCube.finite_heights>`; training may not import evaluation (the layers
in docs/development.md), so the few lines of arithmetic are here. Heights only, chunk
by chunk, never the images.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xchm.chips.cube import BASELINE_MAX_CHIPS

__all__ = ["mean_baseline"]


def mean_baseline(cube: Any) -> dict[str, Any]:
    """Score predicting the train split's mean height on the val split of ``cube``.

    Parameters
    ----------
    cube
        A labelled :class:`~xchm.chips.ChipCube` (the whole cube) with ``train`` and
        ``val`` chips.

    Returns
    -------
    dict
        ``height`` (the train mean, m), ``mae`` (its mean absolute error over the
        val split's valid pixels, m; NaN if there are none) and ``n_pixels``.

    Examples
    --------
    >>> mean_baseline(cube)  # doctest: +SKIP
    {'height': 11.4, 'mae': 13.33, 'n_pixels': 147456}
    """
    count, total = 0, 0.0
    for finite in cube.sel(split="train").finite_heights(BASELINE_MAX_CHIPS):
        count, total = count + finite.size, total + float(finite.sum(dtype=np.float64))
    height = total / count if count else math.nan
    n, error = 0, 0.0
    for finite in cube.sel(split="val").finite_heights():
        n, error = n + finite.size, error + float(np.abs(finite.astype(np.float64) - height).sum())
    return {"height": height, "mae": error / n if n else math.nan, "n_pixels": n}
