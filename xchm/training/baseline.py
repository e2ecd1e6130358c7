"""The constant baseline of a training run: predict the train split's mean height everywhere.

A model whose validation MAE is not below this constant's has learned nothing from
the imagery. :func:`xchm.evaluate` reports the same baseline (the mean of the train
split's finite heights, from at most ``BASELINE_MAX_CHIPS`` chips in evenly spread
whole chunks); it is computed here again because training may not import
evaluation (the layers in docs/development.md). It reads heights only, chunk by
chunk, never the images.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["BASELINE_MAX_CHIPS", "mean_baseline"]

#: Train chips read at most for the mean height (the value ``xchm.evaluate`` uses).
BASELINE_MAX_CHIPS = 16384


def _chunk_groups(index: np.ndarray, size: int) -> list[tuple[int, np.ndarray]]:
    """(first stored chip, offsets in the chunk) of each stored chunk holding ``index``."""
    ids = index // size
    return [(int(c) * size, index[ids == c] - int(c) * size) for c in np.unique(ids)]


def _heights(cube: Any, max_chips: int | None = None) -> np.ndarray:
    """Finite heights of the selection ``cube`` (whole chunks, evenly spread past ``max_chips``)."""
    index = cube.index
    if index.size == 0:
        return np.empty(0, dtype=np.float32)
    array = cube.height
    size = int(array.chunks[0])
    groups = _chunk_groups(index, size)
    if max_chips is not None and index.size > max_chips:
        keep = max(1, max_chips // max(1, index.size // len(groups)))
        picked = np.unique(np.linspace(0, len(groups) - 1, keep).round().astype(int))
        groups = [groups[i] for i in picked]
    parts = []
    for start, offsets in groups:
        block = np.asarray(array[start : start + size])[offsets]
        parts.append(block[np.isfinite(block)])
    return np.concatenate(parts)


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
    train = _heights(cube.sel(split="train"), BASELINE_MAX_CHIPS)
    val = _heights(cube.sel(split="val"))
    height = float(train.mean(dtype=np.float64)) if train.size else math.nan
    mae = float(np.abs(val.astype(np.float64) - height).mean()) if val.size else math.nan
    return {"height": height, "mae": mae, "n_pixels": int(val.size)}
