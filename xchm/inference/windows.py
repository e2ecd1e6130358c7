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

__all__ = ["WindowSpan", "window_span", "blend_weights"]


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


def window_span(start: int, stop: int, window: int, stride: int) -> WindowSpan:
    """Return the lattice windows (origins ``k * stride``) overlapping ``[start, stop)``.

    Examples
    --------
    >>> window_span(0, 100, 64, 32)  # origins -32, 0, 32, 64, 96 (edges read mirrored pixels)
    WindowSpan(first=-32, count=5)
    """
    k_first = math.floor((start - window) / stride) + 1  # first origin > start - window
    k_last = math.ceil(stop / stride) - 1  # last origin < stop
    return WindowSpan(first=k_first * stride, count=k_last - k_first + 1)


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
