"""Local-disk primitives of the storage layer: atomic writes, synced folders, locks.

Used by :meth:`Location.write_bytes <xchm.storage.Location.write_bytes>` and
:func:`xchm.outputs.write_atomic` (atomic writes: one implementation for the package)
and by the download cache (:func:`~xchm.storage.fetch_cached`: a lock between
processes, synced renames).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_write(path: Path, data: bytes | Callable[[Path], object]) -> None:
    """Write ``path`` through a synced temporary file in its folder, renamed onto it.

    xchm's one atomic local write (:meth:`Location.write_bytes
    <xchm.storage.Location.write_bytes>` and :func:`xchm.outputs.write_atomic` use it):
    a reader sees the old content or the new one, never half a file, and a failure
    (or a crash) leaves the old file and no temporary one.

    Parameters
    ----------
    path
        The file to write; its folder must exist (else ``FileNotFoundError``).
    data
        The content, or a function that writes the file it is given (the temporary
        file, ``.NAME.RANDOM.tmp`` beside ``path``; it exists, empty). The file gets
        the permissions of a normal new file (the umask's), whatever the function
        does (safetensors, for one, creates owner-only files).
    """
    if not path.parent.is_dir():
        raise FileNotFoundError(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 lets the umask decide the mode, as a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            if isinstance(data, bytes | bytearray | memoryview):
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        if callable(data):
            data(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
            with open(tmp, "rb") as written:
                os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    sync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename in it) to disk, where the platform allows."""
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock between processes of this machine (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent fetches download twice, still atomically
        yield
        return
    with open(path, "a") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
