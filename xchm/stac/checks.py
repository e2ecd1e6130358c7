"""Argument checks of ``search`` that need no request (bbox lives in ``_common``)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from xchm.errors import InputError

__all__ = ["check_geometry", "check_collections", "positive_int", "check_options"]


def check_geometry(geometry: Any) -> dict[str, Any]:
    """Return ``intersects`` as a GeoJSON dict, refusing coordinates that are not degrees."""
    if hasattr(geometry, "__geo_interface__"):
        geometry = geometry.__geo_interface__
    if not isinstance(geometry, dict) or "type" not in geometry:
        raise InputError(
            "intersects must be a GeoJSON geometry dict ({'type': 'Polygon', 'coordinates': "
            f"...}}) or a shapely geometry, in degrees; got {type(geometry).__name__}"
        )
    numbers: list[float] = []

    def walk(value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            numbers.append(float(value))
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    walk(geometry.get("coordinates", geometry.get("geometries", [])))
    lons, lats = numbers[0::2], numbers[1::2]
    if not numbers or any(abs(v) > 180 for v in lons) or any(abs(v) > 90 for v in lats):
        raise InputError(
            "intersects must have coordinates in degrees (EPSG:4326 longitude, latitude); these "
            "look empty or like metres: reproject the geometry to EPSG:4326 first"
        )
    return dict(geometry)


def check_collections(collections: Any) -> list[str]:
    """Return collection ids as a non-empty list of strings."""
    if isinstance(collections, str):
        collections = [collections]
    if not isinstance(collections, Sequence) or not collections:
        raise InputError(
            "collections must name one or more collections, e.g. collections='naip'; "
            f"got {collections!r}"
        )
    if not all(isinstance(c, str) and c.strip() for c in collections):
        raise InputError(f"collections must be non-empty strings, got {collections!r}")
    return [c.strip() for c in collections]


def positive_int(value: Any, name: str, example: str) -> int:
    """Return ``value`` if it is a positive integer, else raise an ``InputError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer (e.g. {example}), got {value!r}")
    return value


def check_options(
    catalog: Any,
    max_cloud_cover: Any,
    missing_cloud_cover: Any,
    modifier: Any,
    on_overflow: Any,
    timeout: Any,
    retries: Any,
    backoff: Any,
) -> str:
    """Check the remaining options of ``search``; return the catalog URL without a final /."""
    if not isinstance(catalog, str) or not re.match(r"^https?://[^/\s]+", catalog):
        raise InputError(
            "catalog must be the http(s) URL of a STAC API, e.g. "
            f"'https://planetarycomputer.microsoft.com/api/stac/v1'; got {catalog!r}"
        )
    if max_cloud_cover is not None and (
        isinstance(max_cloud_cover, bool)
        or not isinstance(max_cloud_cover, int | float)
        or not 0 <= max_cloud_cover <= 100
    ):
        raise InputError(
            f"max_cloud_cover is a percentage in [0, 100] (e.g. 10), got {max_cloud_cover!r}"
        )
    if missing_cloud_cover not in (None, "keep", "drop"):
        raise InputError(
            "missing_cloud_cover must be 'keep' or 'drop' (what to do with items without "
            f"eo:cloud_cover), got {missing_cloud_cover!r}"
        )
    if modifier is not None and not callable(modifier):
        raise InputError(
            "modifier must be a callable that edits items in place, e.g. "
            f"planetary_computer.sign_inplace; got {modifier!r}"
        )
    if on_overflow not in ("error", "warn"):
        raise InputError(f"on_overflow must be 'error' or 'warn', got {on_overflow!r}")
    parts = timeout if isinstance(timeout, tuple) else (timeout,)
    if not parts or not all(
        isinstance(t, int | float) and not isinstance(t, bool) and t > 0 and math.isfinite(t)
        for t in parts
    ):
        raise InputError(
            f"timeout must be positive seconds (or a (connect, read) pair), got {timeout!r}"
        )
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InputError(f"retries must be an integer >= 0, got {retries!r}")
    if isinstance(backoff, bool) or not isinstance(backoff, int | float) or backoff < 0:
        raise InputError(f"backoff must be seconds >= 0 (e.g. 0.5), got {backoff!r}")
    return catalog.rstrip("/")
