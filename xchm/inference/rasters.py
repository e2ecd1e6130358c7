"""Open imagery lazily from a local path or a URL: :func:`open_image`.

The one place xchm opens an image file it is given by name (``xchm predict``,
``merge_scenes``, raster evaluation). GeoTIFFs/COGs go through rioxarray and GDAL:
a URL becomes GDAL's name for it (``/vsis3/``, ``/vsicurl/``...; see
:mod:`xchm.storage`), read under the options its location needs, and the process
environment gets GDAL's names for the S3 endpoint (:func:`xchm.storage.gdal_environment`)
because the lazy reads happen later, in Dask tasks, outside any configuration block
(workers of a ``distributed`` cluster get the same from :mod:`xchm.cluster`). Zarr
stores open with xarray through the location's zarr store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import xarray as xr

from xchm.errors import InputError, PathNotFoundError, StorageError
from xchm.inference.predict import DEFAULT_CHUNK
from xchm.storage import Location, PathOrURL, gdal_env, gdal_environment, location

__all__ = ["open_image"]

#: GDAL's words for "nothing there" (local files, S3, HTTP).
_MISSING = ("No such file", "does not exist", "404", "NoSuchKey")


def _zarr(loc: Location) -> bool:
    if loc.name.rstrip("/").endswith(".zarr"):
        return True
    return loc.is_local and loc.path.is_dir()


def open_image(
    source: PathOrURL,
    *,
    chunks: int = DEFAULT_CHUNK,
    masked: bool = False,
    what: str = "input",
) -> xr.DataArray | xr.Dataset:
    """Open a GeoTIFF/COG or a Zarr store lazily, from a local path or a URL.

    Parameters
    ----------
    source
        A local path, a URL (``s3://``, ``gs://``, ``az://``, ``https://``,
        ``file://``) or a :class:`~xchm.storage.Location` (with its storage options).
    chunks
        Dask chunk side in pixels (all bands in one chunk).
    masked
        Read the file's nodata value as NaN (rioxarray's ``masked=True``).
    what
        How messages name the file (``"input"``, ``"scene"``...).

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        A (band, y, x) DataArray; from a Zarr store its one 3-D array, or the Dataset
        when it holds band variables.

    Raises
    ------
    PathNotFoundError
        Nothing is at ``source``.
    InputError
        It is not an image GDAL or Zarr can read.
    StorageError
        The store refused access or could not be reached.
    """
    loc = location(source)
    if loc.is_local and not loc.is_url:  # absolute: a resumed store knows the file however typed
        loc = location(Path(loc.text).expanduser().resolve(), loc.storage_options)
    if not loc.exists():
        raise PathNotFoundError(f"{what} {str(source)!r} does not exist")
    if _zarr(loc):
        return _open_zarr(loc, source)
    import rioxarray
    from rasterio.errors import RasterioIOError

    name = loc.gdal_path() if loc.is_url else str(loc.path)
    if loc.is_url:
        from xchm.cluster import active_client

        gdal_environment()  # for the lazy reads, which run outside the block below
        active_client()  # and on a distributed client's workers (its plugin does the same)
    try:
        with gdal_env(loc):
            opened: Any = rioxarray.open_rasterio(
                name, chunks={"band": -1, "y": chunks, "x": chunks}, lock=False, masked=masked
            )
    except RasterioIOError as err:
        text = str(err)
        if any(word in text for word in _MISSING):
            raise PathNotFoundError(f"{what} {str(source)!r} does not exist ({text})") from None
        if loc.is_url and "not recognized" not in text:
            raise StorageError(f"cannot read {what} {str(source)!r}: {text}") from None
        raise InputError(
            f"cannot read {what} {str(source)!r} as an image ({text}); give a GeoTIFF/COG "
            "(or a Zarr store) with one band per model band"
        ) from None
    if not isinstance(opened, xr.DataArray):
        raise InputError(f"{what} {str(source)!r} holds several subdatasets; pass one DataArray")
    return opened


def _open_zarr(loc: Location, source: PathOrURL) -> xr.DataArray | xr.Dataset:
    store: Any = os.fspath(loc.path) if loc.is_local else loc.zarr_store(read_only=True)
    try:
        try:
            ds = xr.open_zarr(store, decode_coords="all", consolidated=True)
        except (KeyError, ValueError, FileNotFoundError):  # no consolidated metadata
            ds = xr.open_zarr(store, decode_coords="all", consolidated=False)
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise InputError(
            f"cannot read {str(source)!r} as a Zarr store ({type(err).__name__}: {err}); give "
            "a GeoTIFF/COG or a Zarr store of a (band, y, x) array"
        ) from None
    arrays = [v for v in ds.data_vars.values() if v.ndim == 3]
    return arrays[0] if len(arrays) == 1 else ds
