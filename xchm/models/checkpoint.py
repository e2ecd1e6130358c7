"""xchm checkpoints: a directory with ``model.safetensors`` and ``card.json``.

``card.json`` holds the model card, the decoder's kind and widths and the SHA-256 of the
weights file, so a card and weights from different runs are never mixed silently.
Files are written to a temporary name and renamed, so an interrupted save leaves
the previous checkpoint intact.

This module is the file format only: it reads and writes tensors and the card and
never builds a network (:func:`xchm.models.network.load_checkpoint` does), so the
network module can import it without a cycle.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xchm.errors import (
    InputError,
    ModelNotFoundError,
    OutputExistsError,
    PathNotFoundError,
    WeightsError,
    XCHMError,
)
from xchm.models.card import ModelCard
from xchm.models.presets import DecoderSpec, get_preset
from xchm.outputs import write_atomic
from xchm.storage import Location, PathOrURL, fetch_cached, location

if TYPE_CHECKING:
    import torch

__all__ = [
    "save_checkpoint",
    "read_checkpoint",
    "read_card",
    "is_checkpoint",
    "CARD_FILE",
    "WEIGHTS_FILE",
]

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
_FORMAT = "xchm-checkpoint"
_FORMAT_VERSION = 1
# Non-persistent in timm, but Meta's values differ from timm's recomputation.
_PERIODS_KEY = "backbone.rope.periods"


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(model: Any, directory: PathOrURL) -> Path | Location:
    """Save ``model`` to ``directory`` (a local folder or a URL); return where it went.

    The return value is the folder's ``Path`` for a local folder, else its
    :class:`~xchm.storage.Location`.

    ``model`` is a :class:`~xchm.models.network.CanopyHeightModel` (anything with its
    ``state_dict()``, ``card``, ``decoder_spec`` and ``backbone.rope``).

    ``directory`` must be new, empty or an xchm checkpoint (whose two files are
    replaced, atomically each); a folder holding anything else is refused untouched.
    The weights are written first and ``card.json`` last, so a reader never finds a
    card whose weights are missing or older.
    """
    from safetensors.torch import save_file

    where = _where(directory)
    if where.exists() and not where.is_dir():
        raise WeightsError(f"cannot save a checkpoint to {str(where)!r}: it is a file")
    if where.is_dir() and where.listdir() and not _is_checkpoint(where):
        raise OutputExistsError(
            f"cannot save a checkpoint to {str(where)!r}: it is not empty and not an xchm "
            "checkpoint; nothing in it is touched. Choose a new or empty folder"
        )
    where.mkdir()
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors[_PERIODS_KEY] = model.backbone.rope.periods.detach().cpu().contiguous()
    weights = where.join(WEIGHTS_FILE)
    if where.is_local:
        write_atomic(
            weights.path, lambda p: save_file(tensors, str(p), metadata={"format": _FORMAT})
        )
        digest = file_sha256(weights.path)
    else:  # stage locally, then stream the upload (object stores show it only when whole)
        with tempfile.TemporaryDirectory(prefix="xchm-save-") as tmp:
            staged = Path(tmp) / WEIGHTS_FILE
            save_file(tensors, str(staged), metadata={"format": _FORMAT})
            digest = file_sha256(staged)
            with staged.open("rb") as src, weights.open("wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
    meta = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "card": model.card.to_dict(),
        "decoder": model.decoder_spec.to_dict(),
        "weights": {"file": WEIGHTS_FILE, "sha256": digest},
    }
    where.join(CARD_FILE).write_bytes((json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return where.path if where.is_local else where


def _where(directory: PathOrURL) -> Location:
    """Return the location of a checkpoint folder (local paths with ``~`` expanded)."""
    where = location(directory)
    if where.is_local and not where.is_url:
        return location(Path(where.text).expanduser(), where.storage_options)
    return where


def _is_checkpoint(directory: Location) -> bool:
    """Tell whether ``directory`` holds an xchm checkpoint (which a save may replace)."""
    try:
        meta = json.loads(directory.join(CARD_FILE).read_bytes())
    except (OSError, ValueError, XCHMError):
        return False
    return isinstance(meta, dict) and meta.get("format") == _FORMAT


def is_checkpoint(directory: PathOrURL) -> bool:
    """Whether ``directory`` (a local folder or a URL) holds a ``card.json``."""
    try:
        return _where(directory).join(CARD_FILE).exists()
    except (OSError, XCHMError):
        return False


def read_card(directory: PathOrURL) -> tuple[ModelCard, dict[str, Any]]:
    """Read and validate ``card.json``; return the card and the whole JSON object.

    The returned object has a valid ``decoder`` and ``weights.sha256`` too, so callers
    may index them.

    Raises
    ------
    ModelNotFoundError
        If ``directory`` does not exist.
    WeightsError
        If ``card.json`` is missing, not JSON, or not a valid xchm card; the message
        names the file and the field.
    """
    where = _where(directory)
    card_path = where.join(CARD_FILE)
    # A URL's folder cannot always be listed (https): its card says whether it is there.
    if where.is_local and not where.is_dir():
        raise ModelNotFoundError(f"checkpoint directory {str(where)!r} does not exist")
    if not card_path.exists():
        if where.is_url and not where.exists():
            raise ModelNotFoundError(f"checkpoint {str(where)!r} does not exist")
        raise WeightsError(
            f"{str(where)!r} is not an xchm checkpoint: {CARD_FILE} is missing. If it holds "
            "backbone weights (Meta, Hugging Face, timm), pass it as weights= with a preset name"
        )
    expected = f"expected the JSON object that model.save() writes (format {_FORMAT!r})"
    try:
        meta = json.loads(card_path.read_bytes())
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        raise WeightsError(f"{str(card_path)!r} is not valid JSON ({err}); {expected}") from err
    except PathNotFoundError as err:
        raise WeightsError(f"{str(where)!r} lost its {CARD_FILE} while reading it") from err
    except OSError as err:
        raise WeightsError(f"cannot read {str(card_path)!r}: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise WeightsError(f"{str(card_path)!r} is not an xchm card; {expected}")
    if meta.get("format_version") != _FORMAT_VERSION:
        raise WeightsError(
            f"{str(card_path)!r} has format version {meta.get('format_version')!r}; this xchm "
            f"reads version {_FORMAT_VERSION}: upgrade xchm"
        )
    try:
        card = ModelCard.from_dict(meta.get("card", {}))
    except WeightsError as err:
        raise WeightsError(f"{str(card_path)!r}: {err}") from err
    try:
        get_preset(card.preset)
        DecoderSpec.from_dict(meta["decoder"])
        sha = meta["weights"]["sha256"]
    except (ModelNotFoundError, KeyError, TypeError, ValueError) as err:
        what = f"missing field {err}" if isinstance(err, KeyError) else str(err)
        raise WeightsError(f"invalid {str(card_path)!r}: {what}; {expected}") from err
    if not isinstance(sha, str) or len(sha) != 64:
        raise WeightsError(
            f"invalid {str(card_path)!r}: weights.sha256 is {sha!r}, not a SHA-256 hex digest"
        )
    return card, meta


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint directory holds, verified: the card, the decoder spec, tensors."""

    directory: Location
    card: ModelCard
    decoder_spec: DecoderSpec
    tensors: dict[str, torch.Tensor]
    #: RoPE periods as saved (Meta's values; timm recomputes others), if present.
    rope_periods: torch.Tensor | None


def read_checkpoint(directory: PathOrURL) -> Checkpoint:
    """Read a directory written by :func:`save_checkpoint`, checking the weights' SHA-256.

    Raises
    ------
    ModelNotFoundError
        If ``directory`` does not exist.
    WeightsError
        If the card or the weights are missing, corrupt or from different checkpoints.
    """
    from safetensors.torch import load_file

    where = _where(directory)
    card, meta = read_card(where)
    digest = meta["weights"]["sha256"]
    if where.is_local:
        weights = where.join(WEIGHTS_FILE).path
        if not weights.is_file():
            raise WeightsError(f"{str(where)!r} has a card but no {WEIGHTS_FILE}")
        if file_sha256(weights) != digest:
            raise WeightsError(
                f"{WEIGHTS_FILE} in {str(where)!r} does not match its {CARD_FILE} (SHA-256 "
                "differs): the file is corrupt or comes from another checkpoint"
            )
    else:  # fetched once per machine into the digest-keyed cache, verified there
        try:
            weights = fetch_cached(where.join(WEIGHTS_FILE), digest)
        except PathNotFoundError as err:
            raise WeightsError(f"{str(where)!r} has a card but no {WEIGHTS_FILE}") from err
        except InputError as err:  # the digest differs
            raise WeightsError(
                f"{WEIGHTS_FILE} in {str(where)!r} does not match its {CARD_FILE} (SHA-256 "
                "differs): the file is corrupt or comes from another checkpoint"
            ) from err
    try:
        tensors = load_file(str(weights), device="cpu")
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # SafetensorError, OSError...
        raise WeightsError(
            f"cannot read {str(weights)!r} ({type(err).__name__}: {err}); expected the "
            "safetensors file that model.save() writes"
        ) from err
    periods = tensors.pop(_PERIODS_KEY, None)
    return Checkpoint(where, card, DecoderSpec.from_dict(meta["decoder"]), tensors, periods)
