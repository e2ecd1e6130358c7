"""Location: a local path or a URL, and the file operations xchm does there.

:class:`Location` adds to :class:`~xchm.storage.address.Address` (what the path or URL
is, how fsspec and GDAL reach it) what is done there: test, list, open, read, write,
create and remove files and folders, and open zarr v3 stores; each on the local disk
directly, elsewhere through the backend's fsspec filesystem. :func:`location` makes one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from xchm.errors import PathNotFoundError
from xchm.storage.address import Address
from xchm.storage.disk import atomic_write


@dataclass(frozen=True, repr=False)
class Location(Address):
    """A local path or a URL, with the options of its storage backend.

    Make one with :func:`location`. ``str(loc)`` is the path or URL exactly as typed.
    What it is (``scheme``, ``backend``, ``path``, ``name``, ``parent``, ``join``...),
    its fsspec filesystem and its GDAL name and options come from
    :class:`~xchm.storage.address.Address`; the file operations are defined here.

    Parameters
    ----------
    text
        The path or URL as the user typed it.
    storage_options
        fsspec options of the backend (``key``, ``secret``, ``endpoint_url``,
        ``anon``...); they override the environment. Not shown by ``repr``.
    """

    # -- queries -----------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether a file or folder (an object or a key prefix) is there.

        Returns
        -------
        bool
            Object stores are asked afresh (no listing cache).
        """
        if self.is_local:
            return self.path.exists()
        with self._errors("check"):
            fs, path = self.filesystem()
            fs.invalidate_cache(path)
            return bool(fs.exists(path))

    def is_dir(self) -> bool:
        """Whether it is a folder (on object stores: a bucket or a prefix with keys).

        Returns
        -------
        bool
            ``False`` when nothing is there.
        """
        if self.is_local:
            return self.path.is_dir()
        with self._errors("check"):
            fs, path = self.filesystem()
            fs.invalidate_cache(path)
            return bool(fs.isdir(path))

    def listdir(self) -> list[str]:
        """List the names directly inside this folder, sorted.

        Returns
        -------
        list of str
            Names only (not paths); sub-folders (prefixes) included. On an object store,
            keys that go on with another ``/`` (``run//x`` under ``run``) are listed as
            ``"/"``, so that a folder holding only them does not look empty.

        Raises
        ------
        PathNotFoundError
            If nothing is there.
        """
        if self.is_local:
            with self._errors("list"):
                return sorted(p.name for p in self.path.iterdir())
        with self._errors("list"):
            fs, path = self.filesystem()
            fs.invalidate_cache(path)
            if not fs.isdir(path):
                if fs.exists(path):
                    raise NotADirectoryError(path)
                raise FileNotFoundError(path)
            prefix = path.rstrip("/") + "/"
            names = set()
            for entry in fs.ls(path, detail=True):
                name = str(entry["name"]).removeprefix(prefix).rstrip("/")
                if name:
                    names.add(name)
                elif entry.get("type") == "directory":  # keys like <folder>//x
                    names.add("/")
                # else: the empty "folder" object consoles create (<folder>/): not content
            return sorted(names)

    # -- reading and writing -----------------------------------------------------------

    def open(self, mode: str = "rb") -> IO[Any]:
        """Open the file (a file object to use in ``with``).

        Parameters
        ----------
        mode
            ``"rb"``, ``"wb"``... Writes to an object store become visible, whole,
            when the file is closed; a ``with`` block that raises drops the upload
            instead (no partial object). Local writes are not atomic (use
            :meth:`write_bytes`).

        Returns
        -------
        IO
            A file object.
        """
        output = any(c in mode for c in "wax+")
        if output:
            self._writable("write")
        with self._errors("write" if output else "read", output=output):
            if self.is_local:
                return open(self.path, mode)  # the caller closes it
            fs, path = self.filesystem()
            file: IO[Any] = fs.open(path, mode)
            return _Upload(file) if output else file  # type: ignore[return-value]

    def read_bytes(self) -> bytes:
        """Read the whole file.

        Returns
        -------
        bytes
            Its content.
        """
        with self._errors("read"):
            if self.is_local:
                return self.path.read_bytes()
            fs, path = self.filesystem()
            return bytes(fs.cat_file(path))

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file at once, so that readers see the old or the new content.

        Locally a temporary file in the same folder is written, synced and renamed onto
        the target; on an object store the object is sent in one request (a multipart
        upload above about 50 MB), and stores make it visible only when complete.

        Parameters
        ----------
        data
            The content.

        Raises
        ------
        OutputError
            If the folder or bucket does not exist, or the location is read-only.
        """
        self._writable("write")
        with self._errors("write", output=True):
            if self.is_local:
                atomic_write(self.path, bytes(data))
                return
            fs, path = self.filesystem()
            fs.pipe_file(path, bytes(data))

    def mkdir(self) -> None:
        """Create the folder and its parents (object stores have no folders: no-op)."""
        self._writable("create")
        if self.is_local:
            with self._errors("create", output=True):
                self.path.mkdir(parents=True, exist_ok=True)

    def remove(self, *, missing_ok: bool = False) -> None:
        """Remove the file, or the folder with everything under it.

        Parameters
        ----------
        missing_ok
            Do nothing when nothing is there (else :class:`PathNotFoundError`).
        """
        self._writable("remove")
        if not self.exists():
            if missing_ok:
                return
            raise PathNotFoundError(f"cannot remove {self.text!r}: it does not exist")
        with self._errors("remove", output=True):
            if self.is_local:
                path = self.path
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                return
            fs, path_ = self.filesystem()
            fs.rm(path_, recursive=True)
            fs.invalidate_cache(path_)

    def zarr_store(self, *, read_only: bool = False) -> Any:
        """Return a zarr v3 store here: ``LocalStore`` on disk, ``FsspecStore`` elsewhere.

        Parameters
        ----------
        read_only
            Open it read only (always so for http(s) URLs).

        Returns
        -------
        zarr.abc.store.Store
            For ``zarr.open_group``, ``xr.open_zarr`` and ``Dataset.to_zarr``.
        """
        import zarr.storage

        if not read_only:
            self._writable("write a zarr store at")
        if self.is_local:
            return zarr.storage.LocalStore(self.path, read_only=read_only)
        with self._errors("open a zarr store at", output=not read_only):
            options = self.fsspec_options()
            self.filesystem()  # a missing backend package raises MissingDependencyError
            return zarr.storage.FsspecStore.from_url(
                self.text, storage_options=options, read_only=read_only or self.read_only
            )


#: What functions taking a place accept: a local path, a URL or a :class:`Location`.
PathOrURL = str | os.PathLike[str] | Location


def location(path_or_url: PathOrURL, storage_options: Mapping[str, Any] | None = None) -> Location:
    """Make the :class:`Location` of a local path or URL.

    Parameters
    ----------
    path_or_url
        A local path (``str`` or ``os.PathLike``) or a URL: ``s3://``, ``gs://``,
        ``az://``/``abfs://``, ``http(s)://`` (read only), ``file://``, ``memory://``.
        A :class:`Location` is returned as is (with ``storage_options`` added).
    storage_options
        fsspec options of the backend (``key``, ``secret``, ``endpoint_url``, ``anon``,
        ``client_kwargs``...), overriding the environment.

    Returns
    -------
    Location
        ``str()`` of it is ``path_or_url`` exactly as typed.

    Raises
    ------
    InputError
        For an empty string or an unsupported URL scheme.
    InputTypeError
        For anything that is not a path, a URL or a Location.

    Examples
    --------
    >>> loc = location("s3://maps/ak//chm.zarr")
    >>> str(loc), loc.is_url, loc.is_local
    ('s3://maps/ak//chm.zarr', True, False)
    >>> location("out/chm.tif").path
    PosixPath('out/chm.tif')
    """
    from xchm.errors import InputTypeError

    if isinstance(path_or_url, Location):
        if not storage_options:
            return path_or_url
        return Location(path_or_url.text, {**path_or_url.storage_options, **storage_options})
    if not isinstance(path_or_url, str | os.PathLike):
        raise InputTypeError(
            f"expected a path or URL (str or os.PathLike), got {type(path_or_url).__name__}"
        )
    text = os.fspath(path_or_url)
    if not isinstance(text, str):
        raise InputTypeError(f"expected a text path, got bytes {text!r}")
    return Location(text, dict(storage_options or {}))


class _Upload:
    """An fsspec file being written, whose ``with`` block commits only on success.

    fsspec's own ``__exit__`` closes the file, and closing commits what was written,
    even when the block raised: a partial object would appear. This one discards the
    upload (aborting a multipart upload) instead.
    """

    def __init__(self, file: Any) -> None:
        self._file = file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def __enter__(self) -> _Upload:
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if kind is None:
            self._file.close()
            return
        discard = getattr(self._file, "discard", None)
        if discard is not None:
            with contextlib.suppress(Exception):
                discard()
        self._file.closed = True  # never commit on close (or when garbage-collected)
