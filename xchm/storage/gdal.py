"""GDAL configuration for reading locations: :func:`gdal_env`.

GDAL (rasterio, rioxarray) opens a location by its GDAL name
(:meth:`Location.gdal_path <xchm.storage.Location.gdal_path>`: ``/vsis3/bucket/key``...)
and reads its endpoint and credentials from GDAL configuration options, not from the
AWS variables fsspec reads (GDAL ignores ``AWS_ENDPOINT_URL``). :func:`gdal_env` sets the
options of the given locations (:meth:`Location.gdal_options
<xchm.storage.Location.gdal_options>`) for the block it wraps.

Lazy rasters (rioxarray with ``chunks=``) are read later, by Dask tasks, possibly in
another process, outside any such block: :func:`gdal_environment` writes GDAL's names
for the environment's S3 endpoint into the process environment instead, where GDAL
reads them at every open (xchm does it where it opens a raster URL, and on every
worker of a ``distributed`` cluster it uses: :mod:`xchm.cluster`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

from xchm.errors import InputError
from xchm.storage.location import Location, PathOrURL, location
from xchm.storage.schemes import env_s3_endpoint, gdal_s3_options

#: GDAL options that rasterio.Env refuses as keyword arguments.
_GDAL_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


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
    try:
        with rasterio.Env(**merged):
            if credentials:
                rasterio.env.setenv(**credentials)
            yield {**merged, **credentials}
    finally:
        _forget_mirrored(merged)


def _forget_mirrored(keys: Iterable[str]) -> None:
    """Drop GDAL config options that rasterio restored from environment variables.

    Leaving its outermost ``Env``, rasterio sets each option back to what GDAL reported
    before, and GDAL reports an environment variable when no option is set: the
    variable's value became a process-wide option that outlives the variable (and,
    in tests, the S3 server it named). Such mirrors are removed; GDAL reads the
    variable itself while it exists.
    """
    from rasterio._env import del_gdal_config, get_gdal_config

    for key in keys:
        if key in os.environ and get_gdal_config(key, normalize=False) == os.environ[key]:
            del_gdal_config(key)


def gdal_environment() -> dict[str, str]:
    """Put GDAL's names for the environment's S3 endpoint into ``os.environ``, where unset.

    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (which GDAL ignores) become
    ``AWS_S3_ENDPOINT``, ``AWS_HTTPS`` and ``AWS_VIRTUAL_HOSTING``; variables already
    set are left as they are (the user's word wins), and nothing happens without an
    endpoint (GDAL then talks to AWS itself). Credentials are never copied: GDAL reads
    ``AWS_ACCESS_KEY_ID``... from the environment itself.

    Returns
    -------
    dict of str to str
        The variables it added.
    """
    endpoint = env_s3_endpoint()
    if not endpoint:
        return {}
    wanted = gdal_s3_options({"endpoint_url": endpoint}, "AWS_ENDPOINT_URL")
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    return added
