"""Where xchm writes: one rule for every output folder and file, local or in a store.

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
folder (on an object store: its bucket) must exist and be writable, checked before
any work.

Every place is a local path or a URL (``s3://``, ``gs://``, ``az://``, ``file://``,
``memory://``), reached through :mod:`xchm.storage`; on an object store a "folder" is
a key prefix (it exists once something is under it) and the rule is the same. Messages
name a local path as :class:`pathlib.Path` prints it and a URL exactly as typed.

Written by hand because no library states this policy; the checks are a few
:class:`~xchm.storage.Location` calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xchm.errors import OutputError, OutputExistsError, PathNotFoundError
from xchm.storage import Location, PathOrURL, location
from xchm.storage.disk import atomic_write

__all__ = [
    "MARKER",
    "prepare_output_dir",
    "prepare_output_file",
    "output_kind",
    "mark",
    "write_atomic",
    "upload_file",
    "shown",
]

#: File that marks a folder as an xchm output; JSON ``{"kind": ..., "xchm": version}``.
MARKER = ".xchm-output.json"


def shown(place: PathOrURL) -> str:
    """Return how messages name ``place``: a local path as ``Path`` prints it, a URL as typed.

    Examples
    --------
    >>> shown("out//run/"), shown("s3://maps/ak//run/")
    ('out/run', 's3://maps/ak//run/')
    """
    loc = location(place)
    return str(loc.path) if loc.is_local and not loc.is_url else loc.text


def output_kind(path: PathOrURL) -> str | None:
    """Return the kind of xchm output ``path`` holds (None: no marker).

    Raises
    ------
    StorageError
        An object store could not be asked (network, access): an unknown answer is
        not taken for "no marker".
    """
    marker = location(path).join(MARKER)
    try:
        text = marker.path.read_bytes() if marker.is_local else marker.read_bytes()
        kind = json.loads(text).get("kind")
    except (OSError, ValueError, AttributeError) as err:
        if marker.is_local or isinstance(err, PathNotFoundError | ValueError | AttributeError):
            return None
        raise
    return kind if isinstance(kind, str) else None


def mark(path: PathOrURL, kind: str) -> None:
    """Write the marker into the existing folder ``path`` (atomically)."""
    from xchm._version import __version__

    folder = location(path)
    text = (json.dumps({"kind": kind, "xchm": __version__}) + "\n").encode()
    if not folder.is_local:
        folder.join(MARKER).write_bytes(text)  # one PUT; OutputError names the URL
        return
    try:
        atomic_write(folder.path / MARKER, text)
    except OSError as err:
        raise OutputError(f"cannot write to {shown(folder)}: {err.strerror or err}") from err


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    A reader never sees half a file and a crash leaves the previous ``path`` (the
    temporary file is removed on error). The file gets the permissions of a normal
    new file (some writers, safetensors for one, create owner-only files).

    This is the storage layer's atomic write (``xchm/storage/disk.py``, also behind
    :meth:`Location.write_bytes <xchm.storage.Location.write_bytes>`): one
    implementation in the package. Local files only; to put a finished local file
    onto an object store, see :func:`upload_file`.
    """
    target = Path(path)
    atomic_write(target, write)
    return target


def upload_file(staged: Path, target: PathOrURL, *, overwrite: bool = False) -> Location:
    """Stream the finished local file ``staged`` to ``target``: whole, or not at all.

    On an object store the upload is one request, or a multipart upload (8 MiB parts,
    larger past 70 GiB) for large files, which the store makes visible only when
    complete; on any failure the upload is aborted (its parts are deleted) and no
    object appears. Memory holds a few parts, whatever the file's size. Locally, the file is
    copied through a temporary file renamed into place. ``staged`` is left as it is.

    Parameters
    ----------
    staged
        The local file.
    target
        Where it goes (a local path or a URL).
    overwrite
        Replace an existing file (checked again just before the upload).

    Returns
    -------
    Location
        ``target``.

    Raises
    ------
    OutputExistsError
        ``target`` exists and ``overwrite`` is not set.
    OutputError
        The upload failed (the bucket or folder is missing, access refused...).
    """
    loc = location(target)
    if loc.exists() and not overwrite:
        raise OutputExistsError(
            f"{shown(loc)} exists; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    if loc.is_local:
        try:
            atomic_write(loc.path, lambda tmp: shutil.copyfile(staged, tmp))
        except OSError as err:
            raise OutputError(f"cannot write {shown(loc)}: {err.strerror or err}") from err
        return loc
    size = staged.stat().st_size
    with loc._errors("write", output=True):  # backend failures: OutputError naming the URL
        fs, key = loc.filesystem()
        file = fs.open(key, "wb", block_size=_part_size(size))
        try:
            with open(staged, "rb") as src:
                shutil.copyfileobj(src, file, 1 << 20)
            file.close()  # the last part, then the completion: the object appears whole
        except BaseException:
            _abort(file)
            raise
        fs.invalidate_cache(key)
        if fs.size(key) != size:
            raise OutputError(f"cannot write {loc.text!r}: the store holds another size than sent")
    return loc


#: The smallest upload part (S3's minimum is 5 MiB), and the most parts of one upload.
_MIN_PART, _MAX_PARTS = 8 << 20, 9_000


def _part_size(size: int) -> int:
    """Return the upload part size for a file of ``size`` bytes, in whole MiB.

    Memory holds a few parts at a time (the one being sent, copies the HTTP client
    makes), so parts are small: 8 MiB, larger only where a file would need more than
    9,000 of them (S3 allows 10,000 per upload; 8 MiB parts go to 70 GiB).
    """
    part = max(_MIN_PART, -(-size // _MAX_PARTS))
    return -(-part // (1 << 20)) * (1 << 20)


def _abort(file: Any) -> None:
    """Drop an fsspec file being written: abort its multipart upload, never commit it.

    Closing an fsspec file commits what was written (``with`` does so on an error too),
    so a failed upload is discarded and the file marked closed instead. A failure to
    abort is left to the store's lifecycle rules (the parts are invisible).
    """
    with contextlib.suppress(Exception):
        discard = getattr(file, "discard", None)
        if discard is not None:
            discard()  # s3fs: AbortMultipartUpload; gcsfs: cancels the resumable upload
    file.closed = True  # no commit from close() or __del__


def _legacy_arg(loc: Location) -> Any:
    """Return what a ``legacy`` test gets: a ``Path`` on the local disk, else the Location."""
    return loc.path if loc.is_local else loc


def prepare_output_dir(
    path: PathOrURL,
    kind: str,
    *,
    overwrite: bool = False,
    exist_ok: bool = False,
    legacy: Callable[[Any], bool] | None = None,
    hint: str = "pass overwrite=True (CLI: --overwrite) to replace it",
) -> bool:
    """Make ``path`` ready to take an xchm output of ``kind``; return True if it existed.

    Parameters
    ----------
    path
        The output folder: a local path or a URL (on an object store, a key prefix).
    kind
        What goes there, in words (``"training run"``, ``"chip cube"`` ...).
    overwrite
        Replace an existing output of the same kind (its content is deleted).
    exist_ok
        Keep an existing output of the same kind as it is (the caller resumes it);
        without it (and without ``overwrite``) such a folder is refused.
    legacy
        Recognises an output of this kind written before markers existed. It gets a
        ``pathlib.Path`` for a folder on the local disk, else the
        :class:`~xchm.storage.Location`.
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
        ``path`` cannot be created or written (permissions, read-only disk, missing
        bucket).
    """
    folder = location(path)
    name = shown(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{name} is a file, not a folder; choose another output path")
    existing = _existing_kind(folder, legacy, kind)
    if existing == kind and _only_marker(folder):
        existing = None  # marked but still empty (e.g. creation cut off): as good as new
    if existing is not None:
        if existing != kind:
            raise OutputExistsError(
                f"{name} holds an xchm {existing}, not a {kind}; choose another output path"
            )
        if exist_ok and not overwrite:
            mark(folder, kind)  # a legacy output gets its marker
            return True
        if not overwrite:
            raise OutputExistsError(f"{name} holds an xchm {kind}; {hint}")
        _clear(folder)
    elif folder.is_dir() and not _only_marker(folder):
        raise OutputExistsError(
            f"{name} is not empty and was not written by xchm; nothing in it is touched. "
            "Choose a new or empty folder"
        )
    if folder.is_local:
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create {name}: {err.strerror or err}") from err
    mark(folder, kind)
    return False


def prepare_output_file(
    path: PathOrURL,
    *,
    overwrite: bool = False,
    suffixes: tuple[str, ...] = (),
) -> Path | Location:
    """Check that the file ``path`` may be written; return it.

    Its parent folder must exist and be writable (on an object store: its bucket must
    exist); an existing file is replaced only with ``overwrite`` and a folder never.

    Returns
    -------
    pathlib.Path or Location
        A ``Path`` for a file on the local disk, else the
        :class:`~xchm.storage.Location`.

    Raises
    ------
    OutputExistsError
        ``path`` exists (without ``overwrite``) or is a folder.
    OutputError
        The parent folder (bucket) is missing or not writable, or the suffix is not
        one of ``suffixes``.
    """
    loc = location(path)
    name = shown(loc)
    suffix = Path(loc.name).suffix.lower()
    if suffixes and suffix not in suffixes:
        raise OutputError(f"{name} must end in one of {', '.join(suffixes)}")
    if loc.is_dir():
        raise OutputExistsError(f"{name} is a folder; give a file name")
    if loc.exists() and not overwrite:
        raise OutputExistsError(
            f"{name} exists; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    if not loc.is_local:
        bucket = _bucket(loc)
        if bucket is not None and not bucket.exists():
            raise OutputError(
                f"cannot write {name}: its bucket {bucket.text} does not exist; create it first"
            )
        if loc.read_only:
            raise OutputError(
                f"cannot write {name}: xchm only reads http(s) URLs; write to a local path "
                "or an object store (s3://, gs://, az://)"
            )
        return loc
    out = loc.path
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(
            f"cannot write {name}: folder {shown(loc.parent)} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {name}: folder {shown(loc.parent)} is not writable")
    return out


def _bucket(loc: Location) -> Location | None:
    """Return the bucket (container) of an object-store URL; None for other backends."""
    if loc.backend not in ("s3", "gcs", "azure"):
        return None
    top = loc
    while top.parent.text != top.text:
        top = top.parent
    return top


def _existing_kind(folder: Location, legacy: Callable[[Any], bool] | None, kind: str) -> str | None:
    if not folder.is_dir():
        return None
    found = output_kind(folder)
    if found is None and legacy is not None and legacy(_legacy_arg(folder)):
        return kind
    return found


def _only_marker(folder: Location) -> bool:
    return all(name == MARKER for name in folder.listdir())


def _clear(folder: Location) -> None:
    """Delete the content of an xchm output folder (the marker last: it stays)."""
    if not folder.is_local:
        names = folder.listdir()
        if "/" in names:  # keys <folder>//...: xchm never writes them
            raise OutputExistsError(
                f"{shown(folder)} holds keys beginning {folder.text.rstrip('/')}//, which xchm "
                "did not write; nothing in it is touched. Move them, or choose another output path"
            )
        for name in names:
            if name != MARKER:
                folder.join(name).remove(missing_ok=True)  # OutputError names the URL
        return
    try:
        for child in folder.path.iterdir():
            if child.name == MARKER:
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    except OSError as err:
        raise OutputError(f"cannot clear {shown(folder)}: {err.strerror or err}") from err
