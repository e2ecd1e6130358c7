"""The download cache: files named by URL and SHA-256, fetched once per machine.

:func:`fetch_cached` keeps verified copies under :func:`default_cache_dir` keyed by
their digest (checkpoints named by URL use it); processes of one machine take turns on
a lock file, so each file is downloaded once. :func:`fetch_version` is for files named
by URL alone (backbone weights): it keys them by the version the store reports (ETag
or modification time, and size), downloads each version once, and returns its digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xchm.errors import InputError, OutputError
from xchm.storage.disk import atomic_write, locked, sync_dir
from xchm.storage.location import Location, PathOrURL, location

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BLOCK = 8 * 2**20


def default_cache_dir() -> Path:
    """Return the folder of xchm's download cache.

    Returns
    -------
    Path
        ``$XCHM_CACHE``, else ``$XDG_CACHE_HOME/xchm``, else ``~/.cache/xchm``.
    """
    if os.environ.get("XCHM_CACHE"):
        return Path(os.environ["XCHM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xchm"


def fetch_cached(
    url: PathOrURL,
    sha256: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Return a local copy of the file at ``url`` with SHA-256 ``sha256``, downloaded once.

    The copy lives at ``<cache_dir>/sha256/<digest>/<name>``. A present copy is returned
    without any request (copies are verified before they appear). Otherwise the file
    is streamed (one request) into a temporary file beside it, hashed, and renamed
    into place only if the digest matches; processes fetching the same file on one
    machine take turns on a lock file (``<cache_dir>/locks/``), so it is downloaded
    once. Local paths are copied into the cache too.

    Parameters
    ----------
    url
        Where the file is: a URL or a local path.
    sha256
        Its expected SHA-256, 64 hexadecimal digits.
    cache_dir
        The cache folder (default :func:`default_cache_dir`).
    storage_options
        Backend options for ``url`` (see :func:`location`).

    Returns
    -------
    Path
        The verified local file.

    Raises
    ------
    InputError
        If ``sha256`` is malformed or the file's digest differs (nothing is kept).
    PathNotFoundError
        If nothing is at ``url``.
    StorageError
        If the store refuses access or cannot be reached.
    """
    loc = location(url, storage_options)
    digest = sha256.strip().lower() if isinstance(sha256, str) else ""
    if not _SHA256.match(digest):
        raise InputError(f"sha256 for {loc.text!r} must be 64 hexadecimal digits, got {sha256!r}")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", loc.name).lstrip(".") or "file"
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "sha256" / digest / name
    if target.is_file():
        return target
    try:
        (root / "locks").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the download cache {str(root)!r}: {err}") from err
    with locked(root / "locks" / f"{digest}.lock"):
        if target.is_file():  # another process fetched it while we waited
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _download(loc, target, digest)
        finally:
            with contextlib.suppress(OSError):
                target.parent.rmdir()  # only if empty: nothing is left after a failure
    return target


def remote_version(loc: Location) -> str:
    """Return what identifies the version of a remote file: its ETag or time, and size.

    Raises
    ------
    PathNotFoundError
        If nothing is at ``loc``.
    """
    with loc._errors("check"):
        fs, path = loc.filesystem()
        fs.invalidate_cache(path)
        info = fs.info(path)
    keys = ("ETag", "etag", "LastModified", "last_modified", "mtime", "size")
    return "|".join(f"{k}={info[k]}" for k in keys if info.get(k) is not None)


def fetch_version(
    url: PathOrURL,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[Path, str]:
    """Return a local copy of the file at ``url`` as it is now, and its SHA-256.

    For files whose digest is not known in advance. The store's version of the file
    (ETag or modification time, and size) names a pointer to the content-addressed copy
    (``<cache_dir>/sha256/<digest>/<name>``, as :func:`fetch_cached`), so a version is
    downloaded once per machine and a changed file is downloaded again.

    Returns
    -------
    tuple of (Path, str)
        The local file and its SHA-256.

    Raises
    ------
    PathNotFoundError
        If nothing is at ``url``.
    StorageError
        If the store refuses access or cannot be reached.
    """
    loc = location(url, storage_options)
    key = hashlib.sha256(f"{loc.text}\n{remote_version(loc)}".encode()).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    pointer = root / "versions" / key
    if pointer.is_file():
        digest = pointer.read_text().strip()
        return fetch_cached(loc, digest, cache_dir=root), digest
    try:
        (root / "locks").mkdir(parents=True, exist_ok=True)
        pointer.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the download cache {str(root)!r}: {err}") from err
    with locked(root / "locks" / f"{key}.lock"):
        if not pointer.is_file():
            tmp = pointer.with_name(f".{key}.{secrets.token_hex(6)}.part")
            try:
                digest = _get(loc, tmp)
                name = re.sub(r"[^A-Za-z0-9._-]", "_", loc.name).lstrip(".") or "file"
                target = root / "sha256" / digest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
                sync_dir(target.parent)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            atomic_write(pointer, digest.encode())
    digest = pointer.read_text().strip()
    return fetch_cached(loc, digest, cache_dir=root), digest


def _get(loc: Location, tmp: Path) -> str:
    """Stream ``loc`` into ``tmp`` (one request), sync it and return its SHA-256."""
    with loc._errors("download"):
        if loc.is_local:
            shutil.copyfile(loc.path, tmp)
        else:
            fs, path = loc.filesystem()
            fs.get_file(path, str(tmp))
    hasher = hashlib.sha256()
    with open(tmp, "rb") as file:
        while block := file.read(_BLOCK):
            hasher.update(block)
        os.fsync(file.fileno())
    return hasher.hexdigest()


def _download(loc: Location, target: Path, digest: str) -> None:
    """Copy ``loc`` to ``target`` if its SHA-256 is ``digest`` (else keep nothing).

    The backend's ``get_file`` streams the file in one request (one GET for S3 and
    HTTP) into a temporary file beside ``target``, which is hashed, synced and renamed.
    """
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
    try:
        got = _get(loc, tmp)
        if got != digest:
            raise InputError(
                f"the file at {loc.text!r} has SHA-256 {got}, expected {digest}: it changed or "
                "was corrupted in transit; nothing was cached"
            )
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    sync_dir(target.parent)
