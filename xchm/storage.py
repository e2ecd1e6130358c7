"""One storage layer for every path xchm reads or writes: local paths and URLs.

A :class:`Location` is made by :func:`location` from a local path or a URL and is what
the rest of the package uses to test, list, read, write and remove files, to open zarr
v3 stores and to hand rasters to GDAL (rasterio, rioxarray). It prints back exactly
what the user typed (``s3://b/a//k`` stays ``s3://b/a//k``: object keys are strings,
and ``//`` in them is never collapsed).

Schemes
-------
- local paths and ``file://`` URLs: the local disk (writes of :meth:`Location.write_bytes`
  are atomic: a temporary file in the same folder, then a rename);
- ``s3://`` (and ``s3a://``): Amazon S3 or an S3-compatible store (MinIO, Ceph...)
  through s3fs;
- ``gs://`` / ``gcs://``: Google Cloud Storage through gcsfs (``pip install 'xchm[gcs]'``);
- ``az://``, ``abfs://``, ``abfss://``: Azure Blob Storage through adlfs
  (``pip install 'xchm[azure]'``);
- ``http://`` / ``https://``: read only (range requests), through fsspec's HTTP
  filesystem and GDAL's ``/vsicurl/``;
- ``memory://``: fsspec's in-process memory filesystem (tests, scratch).

Credentials and endpoints come from the standard environment of each backend, read
in the process that does the work (so a Dask worker uses its own environment, never
the client's): for S3 ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` and
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (an on-premises store); for Google
``GOOGLE_APPLICATION_CREDENTIALS``; for Azure ``AZURE_STORAGE_CONNECTION_STRING`` or
``AZURE_STORAGE_ACCOUNT`` + ``AZURE_STORAGE_KEY``/``AZURE_STORAGE_SAS_TOKEN``. The
``storage_options=`` of :func:`location` (fsspec's options of that backend: ``key``,
``secret``, ``endpoint_url``, ``anon``...) override the environment; they travel with
the :class:`Location`, so they are pickled into Dask graphs: prefer the environment
for secrets on a cluster.

GDAL does not read ``AWS_ENDPOINT_URL``: :meth:`Location.gdal_options` and
:func:`gdal_env` translate it (and the ``storage_options``) into GDAL's configuration
(``AWS_S3_ENDPOINT``, ``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING``...).

Zarr stores are zarr v3's ``LocalStore`` on the local disk and ``FsspecStore``
elsewhere. Files named by URL and a SHA-256 (checkpoints) are fetched once per
machine into a cache keyed by the digest with :func:`fetch_cached`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from xchm.errors import (
    InputError,
    MissingDependencyError,
    OutputError,
    PathNotFoundError,
    StorageError,
    XCHMError,
)

__all__ = [
    "Location",
    "location",
    "gdal_env",
    "fetch_cached",
    "default_cache_dir",
    "PathOrURL",
    "SCHEMES",
]

#: URL schemes xchm understands, and the backend behind each.
SCHEMES: dict[str, str] = {
    "file": "local",
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "http": "http",
    "https": "http",
    "memory": "memory",
}

#: How to install each backend's fsspec filesystem.
_BACKEND_INSTALL = {
    "s3": "pip install s3fs",
    "gcs": "pip install 'xchm[gcs]' (gcsfs)",
    "azure": "pip install 'xchm[azure]' (adlfs)",
    "http": "pip install aiohttp",
}

#: GDAL's virtual file system prefix of each backend.
_GDAL_PREFIX = {"s3": "/vsis3/", "gcs": "/vsigs/", "azure": "/vsiaz/", "http": "/vsicurl/"}

#: GDAL options that rasterio.Env refuses as keyword arguments.
_GDAL_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

#: Top-level packages whose exceptions are storage failures (network, access, service).
_BACKEND_MODULES = frozenset(
    {"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "google", "azure", "fsspec"}
)

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_BLOCK = 8 * 2**20


def _scheme(text: str) -> str:
    match = _URL.match(text)
    return match.group(1).lower() if match else ""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, repr=False)
class Location:
    """A local path or a URL, with the options of its storage backend.

    Make one with :func:`location`. ``str(loc)`` is the path or URL exactly as typed.

    Parameters
    ----------
    text
        The path or URL as the user typed it.
    storage_options
        fsspec options of the backend (``key``, ``secret``, ``endpoint_url``,
        ``anon``...); they override the environment. Not shown by ``repr``.
    """

    text: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.text:
            raise InputError("an empty string is not a path or URL")
        scheme = _scheme(self.text)
        if scheme and scheme not in SCHEMES:
            raise InputError(
                f"{self.text!r}: unsupported URL scheme {scheme!r}; xchm reads and writes "
                f"local paths and {', '.join(s + '://' for s in SCHEMES)}"
            )

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Location({self.text!r})"  # never the storage options: they may hold secrets

    def __truediv__(self, part: str) -> Location:
        return self.join(part)

    # -- what it is --------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        """The URL scheme in lower case (``"s3"``, ``"https"``...), ``""`` for a path."""
        return _scheme(self.text)

    @property
    def backend(self) -> str:
        """``"local"``, ``"s3"``, ``"gcs"``, ``"azure"``, ``"http"`` or ``"memory"``."""
        return SCHEMES[self.scheme] if self.scheme else "local"

    @property
    def is_url(self) -> bool:
        """Whether it was given as a URL (``file://`` URLs included)."""
        return bool(self.scheme)

    @property
    def is_local(self) -> bool:
        """Whether it is on the local disk (a path or a ``file://`` URL)."""
        return self.backend == "local"

    @property
    def read_only(self) -> bool:
        """Whether xchm may only read it (``http://`` and ``https://`` URLs)."""
        return self.backend == "http"

    @property
    def path(self) -> Path:
        """The local path (``file://`` URLs decoded).

        Raises
        ------
        InputError
            For a URL that is not on the local disk.
        """
        if not self.is_local:
            raise InputError(f"{self.text!r} is a {self.backend} URL, not a local path")
        if not self.scheme:
            return Path(self.text)
        parts = urlsplit(self.text)
        if parts.netloc not in ("", "localhost"):
            raise InputError(f"{self.text!r}: file:// URLs of another host are not supported")
        return Path(unquote(parts.path))

    @property
    def name(self) -> str:
        """The last component (``"k.tif"`` for ``s3://b/a/k.tif``; trailing ``/`` ignored)."""
        if not self.is_url:
            return Path(self.text).name
        return self.text.rstrip("/").rpartition("/")[2]

    @property
    def parent(self) -> Location:
        """The location one level up (a bucket or a URL's host is its own parent)."""
        if not self.is_url:
            return Location(str(Path(self.text).parent), self.storage_options)
        head = self.text[: _URL.match(self.text).end()]  # type: ignore[union-attr]
        rest = self.text[len(head) :].rstrip("/")
        if "/" not in rest:
            return self
        return Location(head + rest.rpartition("/")[0], self.storage_options)

    def join(self, *parts: str) -> Location:
        """Return the location of ``parts`` under this one (``/`` between, none collapsed).

        Parameters
        ----------
        *parts
            Relative names; each may hold ``/``. Absolute or empty parts are refused.

        Returns
        -------
        Location
            With the same storage options.

        Examples
        --------
        >>> str(location("s3://maps/ak//run").join("chm.zarr", "zarr.json"))
        's3://maps/ak//run/chm.zarr/zarr.json'
        """
        for part in parts:
            if not part or part.startswith("/") or _URL.match(part):
                raise InputError(
                    f"cannot join {part!r} to {self.text!r}: give a relative name (no leading /)"
                )
        if not self.is_url:
            return Location(os.path.join(self.text, *parts), self.storage_options)
        text = self.text
        for part in parts:
            text = (text if text.endswith("/") else text + "/") + part
        return Location(text, self.storage_options)

    # -- backends ----------------------------------------------------------------------

    def fsspec_options(self) -> dict[str, Any]:
        """Return the fsspec options: from the environment, then ``storage_options``.

        For S3 the endpoint (``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL``) and
        ``AWS_REGION`` are made explicit (botocore reads only ``AWS_DEFAULT_REGION``);
        credentials stay with botocore, which reads the environment itself.

        Returns
        -------
        dict
            Keyword arguments of the backend's fsspec filesystem.
        """
        options = dict(self.storage_options)
        if self.backend == "s3":
            client = dict(options.get("client_kwargs") or {})
            if not (options.get("endpoint_url") or client.get("endpoint_url")):
                endpoint = _env_s3_endpoint()
                if endpoint:
                    options["endpoint_url"] = endpoint
            region = os.environ.get("AWS_REGION")
            if region and not (client.get("region_name") or os.environ.get("AWS_DEFAULT_REGION")):
                client["region_name"] = region
            if client:
                options["client_kwargs"] = client
        return options

    def filesystem(self) -> tuple[Any, str]:
        """Return the fsspec filesystem and the path inside it.

        Returns
        -------
        tuple
            ``(fs, path)``; ``path`` keeps every ``/`` of the URL.

        Raises
        ------
        MissingDependencyError
            If the backend's package (gcsfs, adlfs...) is not installed.
        """
        import fsspec.core

        if self.is_local:
            return fsspec.filesystem("file"), str(self.path)
        try:
            fs, path = fsspec.core.url_to_fs(self.text, **self.fsspec_options())
            return fs, str(path)
        except ImportError as err:
            hint = _BACKEND_INSTALL.get(self.backend, f"pip install {self.backend}")
            raise MissingDependencyError(
                f"{self.text!r} needs a package that could not be imported ({err}); install "
                f"it with: {hint}"
            ) from err

    @contextlib.contextmanager
    def _errors(self, doing: str, *, output: bool = False) -> Iterator[None]:
        """Turn backend failures into xchm errors that name the location as typed."""
        try:
            yield
        except XCHMError:
            raise
        except FileNotFoundError as err:
            if output:
                raise OutputError(
                    f"cannot {doing} {self.text!r}: its bucket or parent folder does not exist"
                ) from err
            raise PathNotFoundError(f"cannot {doing} {self.text!r}: it does not exist") from err
        except (IsADirectoryError, NotADirectoryError) as err:
            kind = "a folder" if isinstance(err, IsADirectoryError) else "not a folder"
            wrong: type[XCHMError] = OutputError if output else InputError
            raise wrong(f"cannot {doing} {self.text!r}: it is {kind}") from err
        except Exception as err:
            if not _is_storage_failure(err):
                raise
            failed: type[XCHMError] = OutputError if output else StorageError
            raise failed(f"cannot {doing} {self.text!r}: {_describe(err)}{self._hint()}") from err

    def _hint(self) -> str:
        if self.backend == "s3":
            endpoint = self.fsspec_options().get("endpoint_url") or "AWS's default"
            return (
                f" (S3 endpoint {endpoint}; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                "AWS_PROFILE, and AWS_ENDPOINT_URL for a store that is not AWS)"
            )
        if self.backend == "gcs":
            return " (check GOOGLE_APPLICATION_CREDENTIALS)"
        if self.backend == "azure":
            return " (check AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT + key)"
        return ""

    def _writable(self, doing: str) -> None:
        if self.read_only:
            raise OutputError(
                f"cannot {doing} {self.text!r}: xchm only reads http(s) URLs; write to a "
                "local path or an object store (s3://, gs://, az://)"
            )

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
            Names only (not paths); sub-folders (prefixes) included.

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
            names = {e[len(prefix) :] if e.startswith(prefix) else e for e in fs.ls(path, False)}
            return sorted(n.rstrip("/") for n in names if n.rstrip("/"))

    # -- reading and writing -----------------------------------------------------------

    def open(self, mode: str = "rb") -> IO[Any]:
        """Open the file (a file object to use in ``with``).

        Parameters
        ----------
        mode
            ``"rb"``, ``"wb"``... Writes to an object store become visible, whole,
            when the file is closed; local writes are not atomic (use
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
            return file

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
                _atomic_write(self.path, bytes(data))
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

    # -- GDAL --------------------------------------------------------------------------

    def gdal_path(self) -> str:
        """Return the name GDAL (rasterio, rioxarray) opens: ``/vsis3/bucket/key``...

        Returns
        -------
        str
            The local path, or ``/vsis3/``, ``/vsigs/``, ``/vsiaz/`` + bucket/key, or
            ``/vsicurl/`` + the http(s) URL. Use it inside :func:`gdal_env`.

        Examples
        --------
        >>> location("s3://imagery/ak//scene.tif").gdal_path()
        '/vsis3/imagery/ak//scene.tif'
        >>> location("https://example.org/a.tif").gdal_path()
        '/vsicurl/https://example.org/a.tif'
        """
        if self.is_local:
            return self.text if not self.scheme else str(self.path)
        if self.backend == "http":
            return "/vsicurl/" + self.text
        if self.backend == "memory":
            raise InputError(f"{self.text!r}: GDAL cannot read fsspec's memory:// filesystem")
        rest = self.text[_URL.match(self.text).end() :]  # type: ignore[union-attr]
        if self.backend == "azure":
            container, _, key = rest.partition("/")
            rest = container.partition("@")[0] + "/" + key
        return _GDAL_PREFIX[self.backend] + rest

    def gdal_options(self) -> dict[str, str]:
        """GDAL configuration options to read this location (see :func:`gdal_env`).

        From the environment: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` becomes
        ``AWS_S3_ENDPOINT`` (host:port), ``AWS_HTTPS`` (from its scheme) and
        ``AWS_VIRTUAL_HOSTING=FALSE`` (path-style requests, which on-premises stores
        need), ``AWS_REGION`` is passed on. From ``storage_options``: ``key``,
        ``secret``, ``token``, ``profile``, ``anon``, ``requester_pays``, ``endpoint_url``
        (S3); ``token`` (a file), ``anon`` (GCS); ``account_name``, ``account_key``,
        ``sas_token``, ``connection_string``, ``anon`` (Azure). For every URL,
        ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` saves a listing request per file
        opened (GDAL then looks for no side-car files). GDAL reads the credentials of
        the environment itself.

        Returns
        -------
        dict of str to str
            Empty for a local path.
        """
        if self.is_local or self.backend == "memory":
            return {}
        options = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
        given = dict(self.storage_options)
        if self.backend == "s3":
            options.update(_gdal_s3(self.fsspec_options(), self.text))
        elif self.backend == "gcs":
            token = given.get("token")
            if given.get("anon") or token == "anon":
                options["GS_NO_SIGN_REQUEST"] = "YES"
            elif isinstance(token, str | os.PathLike) and token not in ("google_default", "cloud"):
                options["GOOGLE_APPLICATION_CREDENTIALS"] = os.fspath(token)
        elif self.backend == "azure":
            names = {
                "account_name": "AZURE_STORAGE_ACCOUNT",
                "account_key": "AZURE_STORAGE_ACCESS_KEY",
                "sas_token": "AZURE_STORAGE_SAS_TOKEN",
                "connection_string": "AZURE_STORAGE_CONNECTION_STRING",
            }
            options.update({gdal: str(given[k]) for k, gdal in names.items() if given.get(k)})
            host = urlsplit(self.text).netloc.partition("@")[2]
            if host and "AZURE_STORAGE_ACCOUNT" not in options:
                options["AZURE_STORAGE_ACCOUNT"] = host.split(".")[0]
            if given.get("anon"):
                options["AZURE_NO_SIGN_REQUEST"] = "YES"
        return options


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


@contextlib.contextmanager
def gdal_env(*locations: PathOrURL, **options: str) -> Iterator[dict[str, str]]:
    """Configure GDAL (a ``rasterio.Env``) to read these locations and S3 of the environment.

    Parameters
    ----------
    *locations
        Paths, URLs or :class:`Location` s to read; their :meth:`Location.gdal_options`
        are merged. With none, the S3 endpoint of the environment is translated.
    **options
        More GDAL configuration options (they win).

    Yields
    ------
    dict of str to str
        The options in force.

    Raises
    ------
    InputError
        If two locations need different values of one option (two S3 endpoints).

    Notes
    -----
    rasterio (1.4) applies these options process-wide while the block runs, so Dask's
    threaded scheduler inside the block sees them; a distributed worker, which runs
    elsewhere, must be given them itself (its environment, or this context around its
    reads).

    Examples
    --------
    >>> with gdal_env("s3://imagery/scene.tif", AWS_S3_ENDPOINT="minio:9000") as config:
    ...     config["AWS_S3_ENDPOINT"]
    'minio:9000'
    """
    import rasterio
    import rasterio.env

    merged: dict[str, str] = {}
    locs = [location(loc) for loc in locations] or [Location("s3://environment")]
    for loc in locs:
        for key, value in loc.gdal_options().items():
            if merged.get(key, value) != value:
                raise InputError(
                    f"{loc.text!r} needs GDAL option {key}={value!r} but another location "
                    f"needs {merged[key]!r}; read them in separate gdal_env blocks"
                )
            merged[key] = value
    merged.update(options)
    # rasterio.Env refuses AWS credentials as options (it wants boto3 sessions); set
    # them in the environment it made, which drops them on exit.
    credentials = {k: merged.pop(k) for k in _GDAL_CREDENTIALS if k in merged}
    with rasterio.Env(**merged):
        if credentials:
            rasterio.env.setenv(**credentials)
        yield {**merged, **credentials}


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
    with _locked(root / "locks" / f"{digest}.lock"):
        if target.is_file():  # another process fetched it while we waited
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _download(loc, target, digest)
        finally:
            with contextlib.suppress(OSError):
                target.parent.rmdir()  # only if empty: nothing is left after a failure
    return target


# -- helpers -------------------------------------------------------------------------------


def _env_s3_endpoint() -> str | None:
    if _truthy(os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")):
        return None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _gdal_s3(options: Mapping[str, Any], text: str) -> dict[str, str]:
    """GDAL's S3 options from resolved fsspec options (see ``Location.fsspec_options``)."""
    out: dict[str, str] = {}
    client = options.get("client_kwargs") or {}
    endpoint = options.get("endpoint_url") or client.get("endpoint_url")
    if endpoint:
        parts = urlsplit(str(endpoint))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputError(
                f"cannot read {text!r}: the S3 endpoint {endpoint!r} is not an http(s) URL "
                "(set AWS_ENDPOINT_URL like http://host:9000)"
            )
        out["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        out["AWS_HTTPS"] = "YES" if parts.scheme == "https" else "NO"
        if not parts.hostname or not parts.hostname.endswith("amazonaws.com"):
            out["AWS_VIRTUAL_HOSTING"] = "FALSE"
    region = (
        client.get("region_name")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )
    if region:
        out["AWS_REGION"] = str(region)
    names = {
        "key": "AWS_ACCESS_KEY_ID",
        "secret": "AWS_SECRET_ACCESS_KEY",
        "token": "AWS_SESSION_TOKEN",
        "profile": "AWS_PROFILE",
    }
    out.update({gdal: str(options[k]) for k, gdal in names.items() if options.get(k)})
    if options.get("anon"):
        out["AWS_NO_SIGN_REQUEST"] = "YES"
    if options.get("requester_pays"):
        out["AWS_REQUEST_PAYER"] = "requester"
    return out


def _is_storage_failure(err: BaseException) -> bool:
    """Whether ``err`` is a network, access or service failure of a storage backend."""
    if isinstance(err, OSError | TimeoutError):
        return True
    return any(t.__module__.split(".")[0] in _BACKEND_MODULES for t in type(err).__mro__[:-2])


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) < 500 else text[:500] + "..."


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file renamed onto it."""
    if not path.parent.is_dir():
        raise FileNotFoundError(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 lets the umask decide the mode, as a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_dir(path.parent)


def _sync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
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


def _download(loc: Location, target: Path, digest: str) -> None:
    """Copy ``loc`` to ``target`` if its SHA-256 is ``digest`` (else keep nothing).

    The backend's ``get_file`` streams the file in one request (one GET for S3 and
    HTTP) into a temporary file beside ``target``, which is hashed, synced and renamed.
    """
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.part")
    try:
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
        got = hasher.hexdigest()
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
    _sync_dir(target.parent)
