"""Where a chip cube may be written: the rule of :mod:`xchm.outputs` for chip cubes.

A chip cube folder must be new, empty, or a chip cube (replaced with ``overwrite``).
A cube under construction carries the :data:`xchm.outputs.MARKER` file; a finished one
is recognised by its own ``zarr.json`` attrs (Zarr warns about foreign files in a
group, so the writer removes the marker at the end).
"""

from __future__ import annotations

import json
from pathlib import Path

from xchm.chips.layout import FORMAT_NAME
from xchm.outputs import mark, output_kind, prepare_output_dir

__all__ = ["KIND", "is_chip_cube", "check_store", "prepare_store"]

#: The output kind of a chip cube in :mod:`xchm.outputs` markers.
KIND = "chip cube"


def is_chip_cube(path: Path) -> bool:
    """Tell whether ``path`` is a Zarr group with xchm chip cube attrs (complete or not).

    Reads ``zarr.json`` directly: cheap, and a foreign or broken store is simply
    not a chip cube.
    """
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
        xchm = meta["attributes"]["xchm"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(xchm, dict) and xchm.get("format") == FORMAT_NAME


def _holds_cube(path: Path) -> bool:
    kind = output_kind(path)
    return kind == KIND or (kind is None and is_chip_cube(path))


def _hint(path: Path) -> str:
    """Return what the refusal of an existing cube at ``path`` tells the user to do."""
    try:
        complete = json.loads((path / "zarr.json").read_text())["attributes"]["xchm"]["complete"]
    except (OSError, ValueError, KeyError, TypeError):
        complete = False
    if complete is True:
        return "pass overwrite=True (CLI: --overwrite) to replace it"
    return (
        "its build did not finish (interrupted or failed); pass overwrite=True "
        "(CLI: --overwrite) to build it again"
    )


def check_store(path: Path, overwrite: bool) -> None:
    """Raise now, changing nothing, what :class:`ChipWriter` would raise for ``path``.

    For importers, which read many files before the writer starts.
    """
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir() and (not any(path.iterdir()) or (overwrite and _holds_cube(path))):
        return
    # Anything else is refused before prepare_output_dir changes anything (one rule,
    # one wording), except a folder holding only a chip cube's marker, which it takes
    # as new (it only rewrites the marker).
    prepare_output_dir(path, KIND, overwrite=overwrite, legacy=is_chip_cube, hint=_hint(path))


def prepare_store(path: Path, overwrite: bool) -> None:
    """Make ``path`` new, empty, or a chip cube replaced (``overwrite``); see xchm.outputs."""
    if overwrite and path.is_dir() and output_kind(path) is None and is_chip_cube(path):
        # A finished cube has no marker file; mark it first so that a kill while it
        # is being cleared leaves a folder still recognised as ours.
        mark(path, KIND)
    prepare_output_dir(path, KIND, overwrite=overwrite, legacy=is_chip_cube, hint=_hint(path))
