"""Run state (training and pretraining): everything needed to continue a run exactly.

``checkpoints/last.pt`` holds the model and optimizer state, the scheduler, every
RNG state, the data position (epoch and batches done), the history and the
early-stopping state. It is written atomically and read with
``torch.load(weights_only=True)``: only tensors and plain Python containers, never
arbitrary pickled objects.
"""

from __future__ import annotations

import io
import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from xchm.errors import WeightsError
from xchm.storage import Location, PathOrURL, location

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

    from xchm.outputs import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(state, tmp))


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


def load_state(path: PathOrURL, *, expected_format: str = "xchm-train-state") -> dict[str, Any]:
    """Read a training state written by :func:`save_state` (no arbitrary unpickling).

    ``path`` is a local file or a URL (read whole into memory). ``expected_format`` is
    the state's ``format`` entry (``xchm-pretrain-state`` for :func:`xchm.pretrain`),
    so one kind of run never resumes from another's state.
    """
    import torch

    from xchm.outputs import shown

    loc = location(path)
    source = loc.path if loc.is_local else io.BytesIO(loc.read_bytes())
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise WeightsError(f"cannot read training checkpoint {shown(loc)}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != expected_format:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise WeightsError(f"{shown(loc)} is not an {expected_format} checkpoint (found {found!r})")
    return state


def open_run(
    output: PathOrURL,
    state_path: PathOrURL,
    config: dict[str, Any],
    *,
    job: dict[str, Any],
    resume: bool,
    rank: int,
    expected_format: str,
    config_type: type,
    kind: str = "training",
) -> dict[str, Any] | None:
    """Check and prepare a run directory; return the state to resume (None for a new run).

    The directory must be new, empty or a run of this ``kind`` (see
    :mod:`xchm.outputs`): nothing else in it is ever touched. A new run refuses a
    run that made progress (a checkpoint, metrics or a saved model) and replaces one
    killed before its first checkpoint. A resumed run needs its state, the very same
    config and the same job (:mod:`xchm.runs.job`: cube, model, weights, number
    of processes); whatever differs is named, before any work. Rank 0 creates and
    marks the directory and writes ``config.json``; the other ranks only read.

    Parameters
    ----------
    output
        The run directory: a local path or a URL (a key prefix of an object store).
    state_path
        Its training state (``checkpoints/last.pt``).
    config
        The run's config as a dict (``config.json``, compared on resume).
    job
        The fingerprint of this call's inputs (:func:`xchm.runs.job.fingerprint`).
    resume
        Continue the run in ``output``.
    rank
        This process's DDP rank.
    expected_format
        The state's ``format`` entry.
    config_type
        The config class (recognises runs written before output markers existed; its
        ``defaults()`` stand for fields a saved config lacks).
    kind
        ``"training"`` or ``"pretraining"``.

    Raises
    ------
    OutputExistsError
        ``output`` holds something other than a run of this kind, or (without
        ``resume``) a run with progress.
    PathNotFoundError
        ``resume`` without a state to resume.
    ResumeError
        The state belongs to another job (inputs or config differ).
    OutputError
        ``output`` cannot be created or written.
    """
    from xchm.errors import OutputError, OutputExistsError, PathNotFoundError
    from xchm.outputs import MARKER, output_kind, prepare_output_dir, shown

    label = f"{kind} run"
    folder, state_at = location(output), location(state_path)
    name = shown(folder)
    if folder.read_only:
        raise OutputError(
            f"cannot write a run to {name}: xchm only reads http(s) URLs; write it to a local "
            "path or an object store (s3://, gs://, az://)"
        )

    def legacy(found: Any) -> bool:  # runs before markers: on the local disk only
        return isinstance(found, Path) and _legacy_run(found, Path(state_at.path), config_type)

    is_dir = folder.is_dir()
    found = output_kind(folder) if is_dir else None
    if found is None and is_dir and folder.is_local and legacy(folder.path):
        found = label
    if found not in (None, label):
        raise OutputExistsError(
            f"{name} holds an xchm {found}, not a {label}; choose another output directory"
        )
    has_state = _is_file(state_at)
    progress = _progress(folder, state_at) if is_dir else []
    if resume and has_state:
        if found != label:
            raise OutputExistsError(
                f"{name} is not an xchm {label} (no {MARKER}, no config.json of a run); "
                "nothing in it is touched. Resume from the directory the run wrote"
            )
        state = load_state(state_at, expected_format=expected_format)
        defaults = config_type.defaults() if hasattr(config_type, "defaults") else {}
        check_resume(state, config, job, name, defaults=defaults)
        if rank == 0:
            prepare_output_dir(folder, label, exist_ok=True, legacy=legacy)  # marks a legacy run
        return state
    if resume and (found != label or progress):
        raise PathNotFoundError(
            f"nothing to resume: {shown(state_at)} does not exist; start a new run without "
            "resume=True (CLI: without --resume), in a new or empty output directory"
        )
    # A new run (or resume=True on a run killed before its first checkpoint).
    if rank == 0:
        hint = (
            "pass resume=True (CLI: --resume) to continue it, or choose another output directory"
            if has_state
            else f"it has no checkpoint to resume ({shown(state_at)} is missing) but holds "
            f"{', '.join(progress)}; choose another output directory"
        )
        prepare_output_dir(
            folder, label, overwrite=found == label and not progress, legacy=legacy, hint=hint
        )
        folder.join("config.json").write_bytes((json.dumps(config, indent=2) + "\n").encode())
    return None


def check_resume(
    state: dict[str, Any],
    config: dict[str, Any],
    job: dict[str, Any],
    output: PathOrURL,
    *,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Refuse (:class:`~xchm.errors.ResumeError`) a state of another job, naming what differs.

    A field missing from the saved config (added to the config class since the run
    started) counts as its value in ``defaults``: the run used what that means.
    """
    from xchm.errors import ResumeError, XCHMWarning
    from xchm.runs.job import differences

    found = []
    if state.get("job") is None:
        warnings.warn(
            f"{output} was written by an xchm that did not record its cube, model and weights: "
            "resuming without checking that this call gives the same ones",
            XCHMWarning,
            stacklevel=2,
        )
    else:
        found += differences(state["job"], job)
    saved = {**(defaults or {}), **state.get("config", {})}
    changed = sorted(k for k in set(config) | set(saved) if saved.get(k) != config.get(k))
    if changed:
        found.append(f"config: these differ: {changed}")
    if found:
        raise ResumeError(
            f"{output} is the run of another job; resume needs the run's own inputs and "
            f"config. {'; '.join(found)}. Pass what the run used, or start a new run in "
            "another output directory"
        )


def _progress(output: Location, state_path: Location) -> list[str]:
    """List what a run directory holds that a new run must not replace."""
    names = ["metrics.jsonl", "best", "backbone"]
    held = [state_path] + [output.join(n) for n in names]
    base = output.text.rstrip("/") + "/"
    return [
        str(p.path.relative_to(output.path)) if p.is_local else p.text.removeprefix(base)
        for p in held
        if p.exists()
    ]


def _is_file(place: Location) -> bool:
    return place.path.is_file() if place.is_local else place.exists() and not place.is_dir()


def _legacy_run(folder: Path, state_path: Path, config_type: Any) -> bool:
    """Recognise a run written before output markers: its config.json and state or metrics."""
    if not (state_path.is_file() or (folder / "metrics.jsonl").is_file()):
        return False
    try:
        data = json.loads((folder / "config.json").read_text())
        config_type.from_dict(data)
    except Exception:  # noqa: BLE001  (anything unreadable is simply not a run)
        return False
    return isinstance(data, dict) and {"epochs", "batch_size", "seed"} <= set(data)


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple | list) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
