"""Sliding windows on the global pixel grid and their blending weights.

Windows start at every multiple of the stride along each axis (origin 0 of the
*whole* image, not of a chunk), and each pixel's height is the weighted mean of
the predictions of every window covering it. Because both the lattice and the
weights depend only on global pixel positions, any chunking reproduces one
global pass (to float rounding): a chunk simply evaluates every window that
touches it, reading a halo of one window around itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "WindowSpan",
    "window_span",
    "scene_origins",
    "scene_windows",
    "blend_weights",
    "BORDER_WEIGHT",
]

#: A window at the scene's border is not run when its blend weight over every scene pixel
#: it covers stays below this (the largest weight is 1) and other windows cover those
#: pixels: it would move them by ~1 % of a weight at most (64 px windows: overlaps of 1-2 px).
BORDER_WEIGHT = 0.01


@dataclass(frozen=True)
class WindowSpan:
    """The windows touching global pixels ``[start, stop)`` along one axis."""

    first: int
    """Global origin of the first window."""
    count: int
    """Number of windows."""

    def extent(self, window: int, stride: int) -> int:
        """Pixels spanned from the first window's origin to the last window's end."""
        return (self.count - 1) * stride + window


def window_span(
    start: int, stop: int, window: int, stride: int, *, size: int | None = None
) -> WindowSpan:
    """Return the lattice windows (origins ``k * stride``) overlapping ``[start, stop)``.

    With ``size`` (the scene's pixels along this axis), the windows that predict runs:
    border windows that :func:`scene_origins` leaves out are left out here too.

    Examples
    --------
    >>> window_span(0, 100, 64, 32)  # origins -32, 0, 32, 64, 96 (edges read mirrored pixels)
    WindowSpan(first=-32, count=5)
    >>> window_span(0, 98, 64, 32, size=98)  # the window at 96 covers 2 px at weight < 0.01
    WindowSpan(first=-32, count=4)
    """
    k_first = math.floor((start - window) / stride) + 1  # first origin > start - window
    k_last = math.ceil(stop / stride) - 1  # last origin < stop
    if size is not None:
        first, last = scene_origins(size, window, stride)
        k_first, k_last = max(k_first, first // stride), min(k_last, last // stride)
    return WindowSpan(first=k_first * stride, count=max(k_last - k_first + 1, 0))


def scene_origins(size: int, window: int, stride: int) -> tuple[int, int]:
    """First and last origin of the windows predict runs over a scene of ``size`` pixels.

    Every lattice window touching the scene, but for a border window whose 1-D blend
    weight stays below :data:`BORDER_WEIGHT` over the scene pixels it covers while its
    neighbour covers them too (it could only move them by that fraction of a weight).
    A rule of the scene's size alone, so every chunking runs the same windows.

    Examples
    --------
    >>> scene_origins(1024, 64, 48), scene_origins(1010, 64, 48)  # 1010: 1008 covers 2 px
    ((-48, 1008), (-48, 960))
    """
    profile = np.sin(np.pi * (np.arange(window) + 0.5) / window) ** 2  # blend_weights' 1-D
    first = (math.floor(-window / stride) + 1) * stride
    last = (math.ceil(size / stride) - 1) * stride
    # Leading window: covers scene pixels [0, first + window) at positions [-first, window).
    while first + stride <= 0 and profile[-first:].max() < BORDER_WEIGHT:
        first += stride
    # Trailing window: covers [last, size) at positions [0, size - last).
    while last - stride + window >= size and profile[: size - last].max() < BORDER_WEIGHT:
        last -= stride
    return first, last


def scene_windows(height: int, width: int, window: int, stride: int) -> int:
    """Windows predict runs over a ``height`` x ``width`` scene in one chunk (progress totals).

    Examples
    --------
    >>> scene_windows(1024, 1024, 64, 48), scene_windows(1010, 1010, 64, 48)
    (529, 484)
    """
    spans = (window_span(0, n, window, stride, size=n) for n in (height, width))
    return int(np.prod([s.count for s in spans]))


def blend_weights(window: int) -> np.ndarray:
    """Separable sine-squared (Hann) weights, strictly positive, shape (window, window).

    The weight falls smoothly to near zero at a window's border, so a window's
    edge, where the model sees the least context, hardly counts where another
    window covers the same pixel; it never reaches zero, so pixels covered only
    by window edges (image borders) still get a prediction.
    """
    i = np.arange(window, dtype=np.float64)
    h = np.sin(np.pi * (i + 0.5) / window) ** 2
    return np.outer(h, h).astype(np.float32)
