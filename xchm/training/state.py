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

__all__ = ["capture_rng", "restore_rng", "save_state", "load_state", "open_run"]


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


def save_model_dir(net: Any, dest: Path) -> None:
    """Save ``net`` (``net.save(dir)``) to ``dest``, replacing it only once complete.

    A crash mid-save leaves the previous ``dest`` (or, between the two renames, its
    copy ``.<name>.old``), never a half-written directory.
    """
    import shutil

    tmp, old = dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    net.save(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


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


def open_run(
    output: Path,
    state_path: Path,
    config: dict[str, Any],
    *,
    resume: bool,
    rank: int,
    expected_format: str,
    kind: str = "training",
) -> dict[str, Any] | None:
    """Check a run directory; return the state to resume (None for a new run).

    A new run refuses a directory that already holds one; a resumed run needs its
    state and the very same config (the changed fields are named). Rank 0 creates
    the directory and writes ``config.json``.
    """
    import json

    from xchm.errors import InputError

    if resume:
        if not state_path.exists():
            raise FileNotFoundError(f"nothing to resume: {state_path} does not exist")
        state = load_state(state_path, expected_format=expected_format)
        if state["config"] != config:
            changed = sorted(k for k, v in config.items() if state["config"].get(k) != v)
            raise InputError(f"resume needs the run's own config; these differ: {changed}")
        return state
    if state_path.exists():
        raise FileExistsError(
            f"{output} holds a {kind} run; pass resume=True to continue it or choose "
            "another output directory"
        )
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return None


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
