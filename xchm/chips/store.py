"""Where a chip cube may be written: the rule of :mod:`xchm.outputs` for chip cubes.

A chip cube folder must be new, empty, or a chip cube (replaced with ``overwrite``).
A cube under construction carries the :data:`xchm.outputs.MARKER` file; a finished one
is recognised by its own ``zarr.json`` attrs (Zarr warns about foreign files in a
group, so the writer removes the marker at the end).

The folder is a local directory or a key prefix on an object store (``s3://``...);
both go through :class:`xchm.storage.Location`, and the rule is the same: a prefix
holding objects xchm did not write is refused, untouched.
"""

from __future__ import annotations

import json
import os
from typing import Any

from xchm.chips.layout import FORMAT_NAME, cube_location
from xchm.errors import PathNotFoundError, StorageError
from xchm.outputs import mark, output_kind, prepare_output_dir
from xchm.storage import Location

__all__ = ["KIND", "is_chip_cube", "check_store", "prepare_store"]

#: The output kind of a chip cube in :mod:`xchm.outputs` markers.
KIND = "chip cube"

Place = str | os.PathLike[str] | Location


def _xchm_attrs(place: Place) -> dict[str, Any] | None:
    """Return the ``xchm`` attrs of the group's ``zarr.json`` at ``place`` (None: none there).

    Raises
    ------
    StorageError
        An object store could not be asked: an unknown answer is not "no cube".
    """
    meta_file = cube_location(place).join("zarr.json")
    try:
        meta = json.loads(meta_file.read_bytes())
        attrs = meta["attributes"]["xchm"]
    except StorageError:
        raise
    except (OSError, ValueError, KeyError, TypeError, PathNotFoundError):
        return None
    return attrs if isinstance(attrs, dict) else None


def is_chip_cube(path: Place) -> bool:
    """Tell whether ``path`` is a Zarr group with xchm chip cube attrs (complete or not).

    Reads ``zarr.json`` directly (through the store for a URL): cheap, and a foreign
    or broken store is simply not a chip cube.
    """
    attrs = _xchm_attrs(path)
    return attrs is not None and attrs.get("format") == FORMAT_NAME


def _holds_cube(loc: Location) -> bool:
    kind = output_kind(_place(loc))
    return kind == KIND or (kind is None and is_chip_cube(loc))


def _hint(loc: Location) -> str:
    """Return what the refusal of an existing cube at ``loc`` tells the user to do."""
    attrs = _xchm_attrs(loc) or {}
    if attrs.get("complete") is True:
        return "pass overwrite=True (CLI: --overwrite) to replace it"
    return (
        "its build did not finish (interrupted or failed); pass overwrite=True "
        "(CLI: --overwrite) to build it again"
    )


def _place(loc: Location) -> Any:
    """Return what :mod:`xchm.outputs` gets: a ``Path`` on the local disk, else the Location."""
    return loc.path if loc.is_local else loc


def _fresh(loc: Location) -> Location:
    """Drop what the location's filesystem remembers of listings, before the rule asks.

    s3fs answers ``exists``/``isdir`` from listings it made earlier, and forgets
    them per path only, by its own idea of a parent (``a//k``'s parent is ``a/``,
    while ``a/`` was listed as ``a``): a cube replaced or removed since would be
    judged as it was.
    """
    if not loc.is_local:
        fs, _ = loc.filesystem()
        fs.invalidate_cache()
    return loc


def check_store(path: Place, overwrite: bool) -> None:
    """Raise now, changing nothing, what :class:`ChipWriter` would raise for ``path``.

    For importers, which read many files before the writer starts.
    """
    loc = _fresh(cube_location(path))
    if not loc.exists():
        return
    if loc.is_dir() and (not loc.listdir() or (overwrite and _holds_cube(loc))):
        return
    # Anything else is refused before prepare_output_dir changes anything (one rule,
    # one wording), except a folder holding only a chip cube's marker, which it takes
    # as new (it only rewrites the marker).
    prepare_output_dir(_place(loc), KIND, overwrite=overwrite, legacy=is_chip_cube, hint=_hint(loc))


def prepare_store(path: Place, overwrite: bool) -> None:
    """Make ``path`` new, empty, or a chip cube replaced (``overwrite``); see xchm.outputs."""
    loc = _fresh(cube_location(path))
    place = _place(loc)
    if overwrite and loc.is_dir() and output_kind(place) is None and is_chip_cube(loc):
        # A finished cube has no marker file; mark it first so that a kill while it
        # is being cleared leaves a folder still recognised as ours.
        mark(place, KIND)
    prepare_output_dir(place, KIND, overwrite=overwrite, legacy=is_chip_cube, hint=_hint(loc))
