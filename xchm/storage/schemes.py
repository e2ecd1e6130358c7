"""The URL schemes xchm understands: the backend behind each, and what it needs.

Facts and translations on plain values (no :class:`~xchm.storage.Location` here): which
backend serves a scheme and how to install it, GDAL's virtual file system prefix of
each backend, the S3 endpoint of the environment and GDAL's options for S3, and which
exceptions are failures of a storage backend (network, access, service).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from xchm.errors import InputError

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
BACKEND_INSTALL = {
    "s3": "pip install s3fs",
    "gcs": "pip install 'xchm[gcs]' (gcsfs)",
    "azure": "pip install 'xchm[azure]' (adlfs)",
    "http": "pip install aiohttp",
}

#: GDAL's virtual file system prefix of each backend.
GDAL_PREFIX = {"s3": "/vsis3/", "gcs": "/vsigs/", "azure": "/vsiaz/", "http": "/vsicurl/"}

#: Top-level packages whose exceptions are storage failures (network, access, service).
_BACKEND_MODULES = frozenset(
    {"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "google", "azure", "fsspec"}
)

#: The ``scheme://`` head of a URL.
URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def scheme_of(text: str) -> str:
    """Return the URL scheme of ``text`` in lower case, ``""`` for a path."""
    match = URL.match(text)
    return match.group(1).lower() if match else ""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def env_s3_endpoint() -> str | None:
    """Return the S3 endpoint of the environment (``AWS_ENDPOINT_URL_S3``, then ``_URL``)."""
    if _truthy(os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")):
        return None
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def gdal_s3_options(options: Mapping[str, Any], text: str) -> dict[str, str]:
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


def is_storage_failure(err: BaseException) -> bool:
    """Whether ``err`` is a network, access or service failure of a storage backend."""
    if isinstance(err, OSError | TimeoutError):
        return True
    return any(t.__module__.split(".")[0] in _BACKEND_MODULES for t in type(err).__mro__[:-2])


def describe(err: BaseException) -> str:
    """Return the message of ``err`` (its type if it has none), cut at 500 characters."""
    text = str(err) or type(err).__name__
    return text if len(text) < 500 else text[:500] + "..."
