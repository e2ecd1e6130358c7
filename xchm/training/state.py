"""Training checkpoints: everything needed to continue a run exactly.

``checkpoints/last.pt`` holds the model and optimizer state, the scheduler, every
RNG state, the data position (epoch and batches done), the history and the
early-stopping state. It is written atomically and read with
``torch.load(weights_only=True)``: only tensors and plain Python containers, never
arbitrary pickled objects.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np

from xchm.errors import WeightsError

__all__ = ["capture_rng", "restore_rng", "save_state", "load_state"]


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as plain containers and tensors."""
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": [kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    import torch

    random.setstate(_to_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file + rename)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_state(path: Path, *, expected_format: str = "xchm-train-state") -> dict[str, Any]:
    """Read a training state written by :func:`save_state` (no arbitrary unpickling).

    ``expected_format`` is the state's ``format`` entry (``xchm-pretrain-state`` for
    :func:`xchm.pretrain`), so one kind of run never resumes from another's state.
    """
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise WeightsError(f"cannot read training checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != expected_format:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise WeightsError(f"{path} is not an {expected_format} checkpoint (found {found!r})")
    return state


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
