"""What makes a training or pretraining run one job: the fingerprint ``resume`` checks.

A run's state (``checkpoints/last.pt``) records, next to its config, the identity
of everything else that decides its result:

* ``cube``: the chip cube's content (a digest of its metadata, which records the
  inputs, the build time, the chip and split counts and the statistics, so a cube
  built again at the same path is another cube) and the selection of chips used
  (a digest of their positions); the path (or URL, as typed) is recorded for
  messages only, so a moved or copied cube still resumes, and a cube in an object
  store is known by the metadata read through the store like one on disk;
* ``model`` and ``weights``: a preset by name; an xchm checkpoint by the SHA-256 of
  its weights (from its ``card.json``, read through the store for a URL); any other
  file by its size and a SHA-256 of its first and last MiB (a weights file of
  gigabytes is not read whole); a folder (a Hugging Face snapshot) by the same for
  each of its files;
* ``decoder``: the new decoder of a preset (``"light"`` or a ``DecoderSpec``'s
  fields), when it is not the reference decoder (so runs without one keep their
  fingerprint);
* ``world_size``: the number of DDP processes (it decides which chips each batch
  holds).

:func:`differences` names, in words, what a resumed call changes; the run is
refused (:class:`~xchm.errors.ResumeError`) before any work if anything does.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from xchm.errors import InputError
from xchm.storage import Location, location

__all__ = [
    "fingerprint",
    "cube_identity",
    "source_identity",
    "decoder_identity",
    "differences",
]

#: Bytes read from each end of a weights file for its digest.
_EDGE = 1 << 20


def fingerprint(
    cube: Any,
    model: Any,
    weights: Any,
    world_size: int,
    *,
    backbone_weights: Any = None,
    decoder: Any = None,
) -> dict[str, Any]:
    """Return the identity of a run's inputs (plain JSON-able containers).

    Parameters
    ----------
    cube
        The :class:`~xchm.chips.ChipCube` (or selection of one) the run reads.
    model
        Preset name or xchm checkpoint directory the run starts from.
    weights
        Pretrained backbone weights (file, folder, xchm checkpoint) or None.
    world_size
        Number of DDP processes.
    backbone_weights
        The backbone file beside ``weights`` (CHMv2's), or None; only a given one is
        recorded, so runs without it keep their fingerprint.
    decoder
        ``decoder=`` of the run (None, ``"reference"``, ``"light"`` or a
        :class:`~xchm.models.DecoderSpec`); recorded unless it means the reference decoder.
    """
    job = {
        "cube": cube_identity(cube),
        "model": source_identity(model),
        "weights": source_identity(weights),
        "world_size": int(world_size),
    }
    if backbone_weights is not None:
        job["backbone_weights"] = source_identity(backbone_weights)
    chosen = decoder_identity(decoder)
    if chosen is not None:
        job["decoder"] = chosen
    return job


def decoder_identity(decoder: Any) -> dict[str, Any] | None:
    """Return the identity of ``decoder=`` (None for the reference decoder, the default).

    Examples
    --------
    >>> decoder_identity("light"), decoder_identity("reference")
    ({'name': 'light'}, None)
    """
    if decoder is None or decoder == "reference":
        return None
    to_dict = getattr(decoder, "to_dict", None)
    if callable(to_dict):  # a DecoderSpec
        return {"spec": to_dict()}
    return {"name": str(decoder)}


def cube_identity(cube: Any) -> dict[str, Any]:
    """Return a chip cube's identity: path, content digest, chips and selection digest.

    The content digest is of the attrs the cube was opened with (its group's
    ``zarr.json``, read through the store for a URL); the path is the absolute local
    path, or the URL exactly as typed.
    """
    meta = json.dumps(cube.attrs, sort_keys=True, default=str).encode()
    positions = np.ascontiguousarray(cube.index, dtype=np.int64)
    where = location(cube.path)
    return {
        "path": where.text if where.is_url else str(Path(where.text).expanduser().resolve()),
        "content": hashlib.sha256(meta).hexdigest(),
        "chips": len(cube),
        "selection": hashlib.sha256(positions.tobytes()).hexdigest(),
    }


def source_identity(value: str | os.PathLike[str] | Location | None) -> dict[str, Any] | None:
    """Return the identity of a model or weights argument (None for None).

    Examples
    --------
    >>> source_identity("test-tiny")
    {'name': 'test-tiny'}

    An xchm checkpoint by URL is known by its weights' SHA-256 (from its
    ``card.json``, read through the store), as one on disk is.
    """
    if value is None:
        return None
    from xchm.models.presets import PRESETS

    if isinstance(value, str) and value in PRESETS:
        return {"name": value}
    try:
        given = location(value)
    except InputError:  # not a path, nor a URL xchm reads: a name (load_model says more)
        return {"name": str(value)}
    if given.is_url:
        return _url_identity(given)
    path = Path(given.text).expanduser()
    if not path.exists():
        return {"name": str(value)}
    where = str(path.resolve())
    if path.is_file():
        return {"path": where, "file": _file_digest(path)}
    from xchm.models.api import is_checkpoint

    if is_checkpoint(path):
        from xchm.models.checkpoint import read_card

        _, meta = read_card(path)
        return {"path": where, "checkpoint": str(meta["weights"]["sha256"])}
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {"path": where, "files": {str(p.relative_to(path)): _file_digest(p) for p in files}}


def _url_identity(loc: Location) -> dict[str, Any]:
    """Identify a model or weights given by URL: an xchm checkpoint by its weights' digest.

    Anything else by URL is known by its name (xchm reads checkpoints by URL only).
    """
    from xchm.models.api import is_checkpoint

    if is_checkpoint(loc):
        from xchm.models.checkpoint import read_card

        _, meta = read_card(loc)
        return {"path": loc.text, "checkpoint": str(meta["weights"]["sha256"])}
    return {"name": loc.text}


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Name, in words, each part of the job that ``now`` changes from ``saved``."""
    found = []
    a, b = saved.get("cube") or {}, now["cube"]
    if _key(a) != _key(b):
        if a.get("content") != b["content"]:
            where = (
                f"the cube at {b['path']} changed since the run started (built again?)"
                if a.get("path") == b["path"]
                else f"the run trained on the cube {a.get('path')}, this call gives {b['path']}"
            )
            found.append(f"cube: {where}")
        else:
            found.append(
                f"cube: another selection of chips ({a.get('chips')} chips in the run, "
                f"{b['chips']} now)"
            )
    for part in ("model", "weights", "backbone_weights"):
        was, given = saved.get(part), now.get(part)
        if _key(was) == _key(given):
            continue
        if was is not None and given is not None and was.get("path", 0) == given.get("path"):
            found.append(f"{part}: {given['path']} changed since the run started")
        else:
            found.append(f"{part}: the run used {_show(was)}, this call gives {_show(given)}")
    was, given = saved.get("decoder"), now.get("decoder")
    if _key(was) != _key(given):
        found.append(
            f"decoder: the run used {_show_decoder(was)}, this call gives {_show_decoder(given)}"
        )
    if saved.get("world_size") != now["world_size"]:
        found.append(
            f"world_size: the run used {saved.get('world_size')} processes, this call "
            f"{now['world_size']} (launch torchrun with --nproc_per_node="
            f"{saved.get('world_size')})"
        )
    return found


def _key(identity: dict[str, Any] | None) -> Any:
    """Return the part of an identity that decides sameness (the path does not)."""
    if identity is None:
        return None
    return json.dumps({k: v for k, v in identity.items() if k != "path"}, sort_keys=True)


def _show_decoder(identity: dict[str, Any] | None) -> str:
    if identity is None:
        return "'reference' (the default)"
    if "spec" in identity:
        return f"DecoderSpec {identity['spec']}"
    return repr(identity["name"])


def _show(identity: dict[str, Any] | None) -> str:
    if identity is None:
        return "none"
    if "name" in identity:
        return repr(identity["name"])
    if "checkpoint" in identity:
        return f"checkpoint {identity['path']} (weights sha256 {identity['checkpoint'][:12]})"
    if "file" in identity:
        return f"{identity['path']} ({identity['file']['size']} bytes)"
    return f"folder {identity['path']} ({len(identity.get('files', {}))} files)"


def _file_digest(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(_EDGE))
        if size > 2 * _EDGE:
            f.seek(size - _EDGE)
        digest.update(f.read(_EDGE))
    return {"size": size, "sha256_ends": digest.hexdigest()}
