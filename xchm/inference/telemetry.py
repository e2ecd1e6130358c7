"""What the block kernel reports: windows run and seconds per stage.

Every block reports twice, for two audiences:

* to Dask's Fine Performance Metrics (``distributed.metrics.context_meter``), so
  the dashboard shows windows and model time per worker and per ``span``. Outside
  a distributed worker this is a no-op.
* to a process-wide tally (:func:`collect`) that benchmarks and the local progress
  summary read. A tally, not a context variable: Dask's threaded scheduler runs
  tasks in pool threads that do not inherit the caller's context.

On CUDA each stage ends with a device synchronisation so that its seconds are the
GPU's, not the time to queue kernels (one sync per stage and block: negligible
next to a block of hundreds of windows).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["STAGES", "stage", "count_windows", "collect", "Tally"]

#: Kernel stages, in order: host-to-device copy, normalisation, model forward
#: passes, blending (weights, folding) and the device-to-host copy of the result.
STAGES = ("h2d", "normalise", "model", "blend")
#: Label prefix of xchm's metrics on the dashboard.
PREFIX = "xchm-"

_LOCK = threading.Lock()
_TALLIES: list[Tally] = []


class Tally(dict[str, float]):
    """Seconds per stage, windows run and all-nodata windows skipped, summed over blocks.

    Keys: the :data:`STAGES` (``"model"``...), ``"windows"`` and ``"windows_skipped"``.
    """

    def __missing__(self, key: str) -> float:
        return 0.0

    def seconds(self) -> float:
        """Total kernel seconds over all stages."""
        return sum(self[s] for s in STAGES)


def _report(label: str, value: float, unit: str) -> None:
    try:
        from distributed.metrics import context_meter
    except ImportError:  # pragma: no cover - distributed is a dependency
        pass
    else:
        context_meter.digest_metric(PREFIX + label, value, unit)
    with _LOCK:
        for tally in _TALLIES:
            tally[label] += value


@contextmanager
def stage(name: str, device: Any) -> Iterator[None]:
    """Time one kernel stage (synchronising CUDA at its end)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if getattr(device, "type", "cpu") == "cuda":
            import torch

            torch.cuda.synchronize(device)
        _report(name, time.perf_counter() - start, "seconds")


def count_windows(n: int, *, skipped: int = 0) -> None:
    """Report ``n`` windows run by the model and ``skipped`` all-nodata ones not run."""
    _report("windows", float(n), "windows")
    if skipped:
        _report("windows_skipped", float(skipped), "windows")


@contextmanager
def collect() -> Iterator[Tally]:
    """Tally what kernels in this process report while the block runs.

    Examples
    --------
    >>> with collect() as tally:
    ...     count_windows(3)
    >>> tally["windows"]
    3.0
    """
    tally = Tally()
    with _LOCK:
        _TALLIES.append(tally)
    try:
        yield tally
    finally:
        with _LOCK:
            _TALLIES.remove(tally)
