"""The chip cube's on-disk layout: array names, chunking, codecs, the attrs schema.

One Zarr v3 group (see docs/chip-cube-format.md). Readers and writers share these
constants so that the format is defined in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xchm.errors import InputError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CHIPS_PER_CHUNK",
    "CHIPS_PER_SHARD",
    "CHIP_ARRAYS",
    "SPLITS",
    "compressors",
    "cube_attrs",
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
#: Split labels, in the order fractions are given.
SPLITS = ("train", "val", "test")


def compressors() -> Any:
    """Use zstd level 3: a good ratio at fast decoding for chips (FINDINGS.md)."""
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=3)


def store_path(store: str | Path) -> Path:
    """Return the cube's directory; only local directories are supported for now."""
    if not isinstance(store, str | Path):
        raise InputError(f"store must be a directory path, got {type(store).__name__}")
    return Path(store).expanduser()


def cube_attrs(group: Any) -> dict[str, Any]:
    """Return the group's ``xchm`` attrs, checked to be a chip cube of a known version."""
    meta = dict(group.attrs).get("xchm")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise InputError(f"{group.store} is not an xchm chip cube (no 'xchm' group attrs)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"chip cube format version {meta.get('format_version')} is not supported by this "
            f"xchm (reads version {FORMAT_VERSION}); upgrade xchm or rebuild the cube"
        )
    return meta
