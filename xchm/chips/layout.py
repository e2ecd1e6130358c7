"""The chip cube's on-disk layout: array names, chunking, codecs, the attrs schema.

One Zarr v3 group (see docs/chip-cube-format.md). Readers and writers share these
constants so that the format is defined in one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xchm.errors import InputError
from xchm.storage import Location, location

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CHIPS_PER_CHUNK",
    "CHIPS_PER_SHARD",
    "CHIP_ARRAYS",
    "BAND_ARRAY",
    "CRS_ARRAY",
    "SPLITS",
    "compressors",
    "cube_attrs",
    "cube_location",
    "cube_store",
    "store_path",
]

FORMAT_NAME = "xchm-chip-cube"
FORMAT_VERSION = 1
#: Chips per Zarr chunk (the unit a streaming reader decodes) ...
CHIPS_PER_CHUNK = 256
#: ... and per shard (the unit stored as one file): 10 chunks, few files per cube.
CHIPS_PER_SHARD = 2560
#: Per-chip coordinate arrays (1-D along the chip dimension) and their dtypes.
CHIP_ARRAYS: dict[str, str] = {
    "scene": "str",
    "crs": "str",
    "origin_x": "float64",
    "origin_y": "float64",
    "date": "datetime64[D]",
    "split": "str",
    "block": "int64",
}
#: The band names (along ``band``), a coordinate of ``image`` in a plain ``xr.open_zarr``.
BAND_ARRAY = "band"
#: The CRS variable (0-d, CF grid-mapping attrs as rioxarray writes them) of a cube whose
#: chips share one CRS; ``image`` and ``height`` name it in ``grid_mapping``.
CRS_ARRAY = "spatial_ref"
#: Split labels, in the order fractions are given.
SPLITS = ("train", "val", "test")


def compressors() -> Any:
    """Use zstd level 3: a good ratio at fast decoding for chips (FINDINGS.md)."""
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=3)


def store_path(store: str | Path) -> Path:
    """Return the local directory of a cube given by path (``~`` expanded).

    A cube named by URL has no local directory: use :func:`cube_location`.
    """
    loc = cube_location(store)
    if not loc.is_local:
        raise InputError(f"{loc.text!r} is a {loc.backend} URL, not a local directory")
    return loc.path


def cube_location(
    store: str | os.PathLike[str] | Location, storage_options: Mapping[str, Any] | None = None
) -> Location:
    """Return the :class:`~xchm.storage.Location` of a cube: a local path or a URL.

    A local path has ``~`` expanded (and is otherwise kept as given); a URL
    (``s3://``, ``gs://``, ``az://``, ``file://``, ``memory://``, ``https://`` to read)
    is kept exactly as typed, with ``storage_options`` for its backend.

    Examples
    --------
    >>> cube_location("s3://chips/ak//v1.zarr").text
    's3://chips/ak//v1.zarr'
    >>> cube_location("~/chips.zarr").text.startswith("~")
    False
    """
    if isinstance(store, Location):
        return location(store, storage_options)
    if not isinstance(store, str | os.PathLike):
        raise InputError(f"a chip cube is a directory path or a URL, got {type(store).__name__}")
    loc = location(store, storage_options)
    if loc.is_local and not loc.is_url:
        return location(Path(loc.text).expanduser(), storage_options)
    return loc


def cube_store(loc: Location, *, read_only: bool = False) -> Any:
    """Return the zarr store of a cube's location, with nothing remembered of it.

    fsspec filesystems are shared within a process and remember listings (s3fs
    answers ``exists`` and even the size of an object it reads from a listing it
    made earlier); a cube replaced since, by this process through another client or
    by another process, would be seen as it was. So the store's listing cache is
    dropped whenever a cube is opened for writing or reading.
    """
    store = loc.zarr_store(read_only=read_only)
    fs = getattr(store, "fs", None)
    if fs is not None and hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    return store


def cube_attrs(group: Any, name: str | None = None) -> dict[str, Any]:
    """Return the group's ``xchm`` attrs, checked to be a chip cube of a known version.

    ``name`` is how messages name the cube (default: the group's store).
    """
    meta = dict(group.attrs).get("xchm")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        where = group.store if name is None else name
        raise InputError(f"{where} is not an xchm chip cube (no 'xchm' group attrs)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"chip cube format version {meta.get('format_version')} is not supported by this "
            f"xchm (reads version {FORMAT_VERSION}); upgrade xchm or rebuild the cube"
        )
    return meta
