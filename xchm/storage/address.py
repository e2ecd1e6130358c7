"""Address: what a path or URL is, and how fsspec and GDAL reach it.

The base of :class:`~xchm.storage.Location` (which adds what is done there: files, zarr
stores): the text as typed and the backend options, the parts of the name (scheme,
backend, local path, name, parent, join), the fsspec filesystem and its options, GDAL's
name and configuration, and the translation of backend failures into xchm errors.
Nothing here reads or writes a file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from xchm.errors import (
    InputError,
    MissingDependencyError,
    OutputError,
    PathNotFoundError,
    StorageError,
    XCHMError,
)
from xchm.storage.schemes import (
    BACKEND_INSTALL,
    GDAL_PREFIX,
    SCHEMES,
    URL,
    describe,
    env_s3_endpoint,
    gdal_s3_options,
    is_storage_failure,
    scheme_of,
)


@dataclass(frozen=True, repr=False)
class Address:
    """A local path or a URL and its backend options: the base of :class:`Location`.

    Parameters
    ----------
    text
        The path or URL as the user typed it.
    storage_options
        fsspec options of the backend; they override the environment. Not shown by
        ``repr``.
    """

    text: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.text:
            raise InputError("an empty string is not a path or URL")
        scheme = scheme_of(self.text)
        if scheme and scheme not in SCHEMES:
            raise InputError(
                f"{self.text!r}: unsupported URL scheme {scheme!r}; xchm reads and writes "
                f"local paths and {', '.join(s + '://' for s in SCHEMES)}"
            )

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        # never the storage options: they may hold secrets
        return f"{type(self).__name__}({self.text!r})"

    def __truediv__(self, part: str) -> Self:
        return self.join(part)

    # -- what it is --------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        """The URL scheme in lower case (``"s3"``, ``"https"``...), ``""`` for a path."""
        return scheme_of(self.text)

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
    def parent(self) -> Self:
        """The location one level up (a bucket or a URL's host is its own parent)."""
        if not self.is_url:
            return type(self)(str(Path(self.text).parent), self.storage_options)
        head = self.text[: URL.match(self.text).end()]  # type: ignore[union-attr]
        rest = self.text[len(head) :].rstrip("/")
        if "/" not in rest:
            return self
        return type(self)(head + rest.rpartition("/")[0], self.storage_options)

    def join(self, *parts: str) -> Self:
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
        >>> from xchm.storage import location
        >>> str(location("s3://maps/ak//run").join("chm.zarr", "zarr.json"))
        's3://maps/ak//run/chm.zarr/zarr.json'
        """
        for part in parts:
            if not part or part.startswith("/") or URL.match(part):
                raise InputError(
                    f"cannot join {part!r} to {self.text!r}: give a relative name (no leading /)"
                )
        if not self.is_url:
            return type(self)(os.path.join(self.text, *parts), self.storage_options)
        text = self.text
        for part in parts:
            text = (text if text.endswith("/") else text + "/") + part
        return type(self)(text, self.storage_options)

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
                endpoint = env_s3_endpoint()
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
            hint = BACKEND_INSTALL.get(self.backend, f"pip install {self.backend}")
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
            if not is_storage_failure(err):
                raise
            failed: type[XCHMError] = OutputError if output else StorageError
            raise failed(f"cannot {doing} {self.text!r}: {describe(err)}{self._hint()}") from err

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
        >>> from xchm.storage import location
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
        rest = self.text[URL.match(self.text).end() :]  # type: ignore[union-attr]
        if self.backend == "azure":
            container, _, key = rest.partition("/")
            rest = container.partition("@")[0] + "/" + key
        return GDAL_PREFIX[self.backend] + rest

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
            options.update(gdal_s3_options(self.fsspec_options(), self.text))
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
