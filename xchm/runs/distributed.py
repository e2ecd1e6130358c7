"""Distributed data parallel (DDP) set-up under ``torchrun``.

``torchrun --nproc_per_node=N -m xchm train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; the process group is created here on first use (NCCL with CUDA,
gloo on the CPU) and destroyed when the process exits (only a group xchm created:
one the caller made stays the caller's). A single process needs nothing.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["Place", "place", "process_group", "resolve_device", "all_reduce_sum", "wrap"]


@dataclass(frozen=True)
class Place:
    """Where this process runs: its DDP rank, the number of processes and its device."""

    rank: int
    world: int
    device: Any


def place(device: str | None = None) -> Place:
    """Join the process group (if launched by ``torchrun``) and choose the device.

    Raises
    ------
    DeviceError
        ``device`` is not a torch device or is unavailable here.

    Examples
    --------
    >>> place("cpu")
    Place(rank=0, world=1, device=device(type='cpu'))
    """
    rank, world, local = process_group()
    return Place(rank, world, resolve_device(device, local))


def process_group() -> tuple[int, int, int]:
    """Return ``(rank, world_size, local_rank)``, initialising the group if launched so."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        # Torch warns (NCCL) when a group is left to the interpreter's teardown; at exit,
        # not after each run, so that a script may run several in one launch.
        atexit.register(_destroy)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), local


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(device: str | None, local_rank: int) -> Any:
    """Return the torch device a run uses: ``device``, else this process's GPU, else the CPU.

    Raises
    ------
    DeviceError
        ``device`` is not a torch device name, or names CUDA where there is none.
    """
    import torch

    from xchm.inference.runtime import choose_device

    if device is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return choose_device(device)


def all_reduce_sum(values: list[float], device: Any) -> list[float]:
    """Sum ``values`` over all processes (identity in a single process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def wrap(net: Any, device: Any) -> Any:
    """Wrap the model in DDP over its trainable parameters (itself in one process)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not (dist.is_available() and dist.is_initialized()):
        return net
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)
