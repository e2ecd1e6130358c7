"""Where xchm writes: one rule for every output folder and file.

An output *folder* (training or pretraining run, chip cube, prediction store, demo,
report) must be new, empty, or one xchm made. xchm recognises its own folders by a
small marker file, :data:`MARKER`, written before anything else goes in; the marker
names the kind of output (``"training run"``, ``"chip cube"`` ...); a folder that holds
only its marker counts as empty. A folder that
holds anything else is refused, with or without ``overwrite``: xchm never deletes
or overwrites what it did not write. ``overwrite=True`` replaces only a folder of
the same kind; a folder of another kind is refused too (a chip cube is never
replaced by a training run). Folders written before the marker existed are
recognised by a per-kind test (``legacy=``).

An output *file* (a COG) may be replaced only with ``overwrite=True``; its parent
folder must exist and be writable, checked before any work.

Written by hand because no library states this policy; the checks are a few
``os`` calls.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from xchm.errors import OutputError, OutputExistsError

__all__ = [
    "MARKER",
    "prepare_output_dir",
    "prepare_output_file",
    "output_kind",
    "mark",
    "write_atomic",
]

#: File that marks a folder as an xchm output; JSON ``{"kind": ..., "xchm": version}``.
MARKER = ".xchm-output.json"


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """Return the kind of xchm output ``path`` holds (None: no marker)."""
    marker = Path(path) / MARKER
    try:
        kind = json.loads(marker.read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def mark(path: str | os.PathLike[str], kind: str) -> None:
    """Write the marker into the existing folder ``path`` (atomically)."""
    from xchm._version import __version__

    folder = Path(path)
    text = json.dumps({"kind": kind, "xchm": __version__}) + "\n"
    try:
        write_atomic(folder / MARKER, lambda tmp: tmp.write_text(text))
    except OSError as err:
        raise OutputError(f"cannot write to {folder}: {err.strerror or err}") from err


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    A reader never sees half a file and a crash leaves the previous ``path`` (the
    temporary file is removed on error). The file gets the permissions of a normal
    new file (some writers, safetensors for one, create owner-only files).
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def prepare_output_dir(
    path: str | os.PathLike[str],
    kind: str,
    *,
    overwrite: bool = False,
    exist_ok: bool = False,
    legacy: Callable[[Path], bool] | None = None,
    hint: str = "pass overwrite=True (CLI: --overwrite) to replace it",
) -> bool:
    """Make ``path`` ready to take an xchm output of ``kind``; return True if it existed.

    Parameters
    ----------
    path
        The output folder.
    kind
        What goes there, in words (``"training run"``, ``"chip cube"`` ...).
    overwrite
        Replace an existing output of the same kind (its content is deleted).
    exist_ok
        Keep an existing output of the same kind as it is (the caller resumes it);
        without it (and without ``overwrite``) such a folder is refused.
    legacy
        Recognises an output of this kind written before markers existed.
    hint
        What the refusal of an existing output of this kind tells the user to do.

    Returns
    -------
    bool
        True when ``path`` already held an output of this kind that was kept
        (``exist_ok``); False when the folder is new, was empty or was replaced.

    Raises
    ------
    OutputExistsError
        ``path`` is a file, holds files xchm did not write, holds another kind of
        output, or holds this kind without ``overwrite``/``exist_ok``.
    OutputError
        ``path`` cannot be created or written (permissions, read-only disk).
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} is a file, not a folder; choose another output path")
    existing = _existing_kind(folder, legacy, kind)
    if existing == kind and _only_marker(folder):
        existing = None  # marked but still empty (e.g. creation cut off): as good as new
    if existing is not None:
        if existing != kind:
            raise OutputExistsError(
                f"{folder} holds an xchm {existing}, not a {kind}; choose another output path"
            )
        if exist_ok and not overwrite:
            mark(folder, kind)  # a legacy output gets its marker
            return True
        if not overwrite:
            raise OutputExistsError(f"{folder} holds an xchm {kind}; {hint}")
        _clear(folder)
    elif folder.is_dir() and not _only_marker(folder):
        raise OutputExistsError(
            f"{folder} is not empty and was not written by xchm; nothing in it is touched. "
            "Choose a new or empty folder"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create {folder}: {err.strerror or err}") from err
    mark(folder, kind)
    return False


def prepare_output_file(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    suffixes: tuple[str, ...] = (),
) -> Path:
    """Check that the file ``path`` may be written; return it as a ``Path``.

    Its parent folder must exist and be writable; an existing file is replaced only
    with ``overwrite`` and a folder never.

    Raises
    ------
    OutputExistsError
        ``path`` exists (without ``overwrite``) or is a folder.
    OutputError
        The parent folder is missing or not writable, or the suffix is not one of
        ``suffixes``.
    """
    out = Path(path)
    if suffixes and out.suffix.lower() not in suffixes:
        raise OutputError(f"{out} must end in one of {', '.join(suffixes)}")
    if out.is_dir():
        raise OutputExistsError(f"{out} is a folder; give a file name")
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {out}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out}: folder {parent} is not writable")
    return out


def _existing_kind(folder: Path, legacy: Callable[[Path], bool] | None, kind: str) -> str | None:
    if not folder.is_dir():
        return None
    found = output_kind(folder)
    if found is None and legacy is not None and legacy(folder):
        return kind
    return found


def _only_marker(folder: Path) -> bool:
    return all(child.name == MARKER for child in folder.iterdir())


def _clear(folder: Path) -> None:
    """Delete the content of an xchm output folder (the marker last)."""
    try:
        for child in folder.iterdir():
            if child.name == MARKER:
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    except OSError as err:
        raise OutputError(f"cannot clear {folder}: {err.strerror or err}") from err
