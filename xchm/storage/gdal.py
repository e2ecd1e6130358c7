"""GDAL configuration for reading locations: :func:`gdal_env`.

GDAL (rasterio, rioxarray) opens a location by its GDAL name
(:meth:`Location.gdal_path <xchm.storage.Location.gdal_path>`: ``/vsis3/bucket/key``...)
and reads its endpoint and credentials from GDAL configuration options, not from the
AWS variables fsspec reads (GDAL ignores ``AWS_ENDPOINT_URL``). :func:`gdal_env` sets the
options of the given locations (:meth:`Location.gdal_options
<xchm.storage.Location.gdal_options>`) for the block it wraps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from xchm.errors import InputError
from xchm.storage.location import Location, PathOrURL, location

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
    with rasterio.Env(**merged):
        if credentials:
            rasterio.env.setenv(**credentials)
        yield {**merged, **credentials}
