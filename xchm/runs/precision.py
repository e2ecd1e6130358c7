"""Numeric precision of a run: bf16 autocast on CUDA when the config asks for it."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

__all__ = ["autocast"]


def autocast(device: Any, mixed_precision: bool) -> Any:
    """bf16 autocast on a CUDA device when asked for, else a no-op context.

    Examples
    --------
    >>> import torch
    >>> with autocast(torch.device("cpu"), mixed_precision=True):  # a no-op on the CPU
    ...     (torch.ones(2) * 2).dtype
    torch.float32
    """
    import torch

    if device.type == "cuda" and mixed_precision:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
