"""Checks shared by search, load and publish: bounding boxes, item lists, datetimes."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from xchm.errors import InputError, MissingDependencyError

if TYPE_CHECKING:
    from types import ModuleType

    import pystac

__all__ = ["check_bbox", "as_items", "item_time_range", "to_utc", "isoformat", "import_pystac"]


def import_pystac() -> ModuleType:
    """Import pystac or raise :class:`MissingDependencyError` naming the ``stac`` extra."""
    try:
        import pystac
    except ImportError as err:
        raise MissingDependencyError(
            f"'pystac' is needed for xchm.stac but could not be imported ({err}); install it "
            "with: pip install 'xchm[stac]'"
        ) from err
    return pystac


_BBOX_HINT = "pass bbox=(west, south, east, north) in degrees (EPSG:4326 longitude/latitude)"


def check_bbox(bbox: Any, name: str = "bbox") -> tuple[float, float, float, float]:
    """Return ``bbox`` as four floats (W, S, E, N) in degrees or raise :class:`InputError`.

    Examples
    --------
    >>> check_bbox([-72.3, 42.5, -72.1, 42.6])
    (-72.3, 42.5, -72.1, 42.6)
    >>> check_bbox((500000, 4700000, 501000, 4701000))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xchm.errors.InputError: bbox=(500000, 4700000, 501000, 4701000) looks like metres ...
    """
    if isinstance(bbox, str | bytes) or not isinstance(bbox, Sequence):
        raise InputError(f"{name} must be a sequence of 4 numbers, got {bbox!r}; {_BBOX_HINT}")
    values = tuple(bbox)
    if len(values) != 4:
        raise InputError(f"{name} has {len(values)} numbers, expected 4: {_BBOX_HINT}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise InputError(f"{name} must hold numbers, got {values!r}; {_BBOX_HINT}")
    w, s, e, n = (float(v) for v in values)
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise InputError(f"{name}={values!r} has a NaN or infinite value; {_BBOX_HINT}")
    if any(abs(v) > 180 for v in (w, e)) or any(abs(v) > 90 for v in (s, n)):
        raise InputError(
            f"{name}={values!r} looks like metres or another projected CRS, not degrees; "
            f"{_BBOX_HINT}; convert with rasterio.warp.transform_bounds(crs, 'EPSG:4326', ...)"
        )
    if s > n:
        raise InputError(
            f"{name}={values!r}: south {s} is north of north {n}; the order is "
            "(west, south, east, north), e.g. (-72.3, 42.5, -72.1, 42.6)"
        )
    if w > e:
        raise InputError(
            f"{name}={values!r}: west {w} is east of east {e}; the order is (west, south, east, "
            "north); for an area across the antimeridian search each side separately"
        )
    return (w, s, e, n)


def as_items(items: Any, what: str = "items") -> list[pystac.Item]:
    """Return a list of ``pystac.Item`` from an ItemCollection, Items or item dicts."""
    stac = import_pystac()

    if isinstance(items, stac.Item):
        items = [items]
    if isinstance(items, str | bytes | dict) or not isinstance(items, Iterable):
        raise InputError(
            f"{what} must be a pystac.ItemCollection or a list of pystac.Item (what "
            f"xchm.stac.search returns), got {type(items).__name__}"
        )
    out: list[pystac.Item] = []
    for item in items:
        if isinstance(item, dict):
            item = stac.Item.from_dict(item)
        if not isinstance(item, stac.Item):
            raise InputError(f"{what} must hold pystac.Item objects, got {type(item).__name__}")
        out.append(item)
    if not out:
        raise InputError(
            f"no {what}: the search found nothing; widen bbox or datetime, raise "
            "max_cloud_cover, pass missing_cloud_cover='keep', or check the collection"
        )
    return out


def to_utc(value: dt.datetime) -> dt.datetime:
    """Return ``value`` as an aware UTC datetime (naive values are taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def isoformat(value: dt.datetime) -> str:
    """RFC 3339 with a ``Z``: ``2023-07-01T00:00:00Z``."""
    text = to_utc(value).isoformat()
    return text.replace("+00:00", "Z")


def item_time_range(item: pystac.Item) -> tuple[dt.datetime, dt.datetime]:
    """(start, end) of an item: its ``datetime``, or ``start_datetime``/``end_datetime``."""
    from pystac.utils import str_to_datetime

    props = item.properties
    start = props.get("start_datetime")
    end = props.get("end_datetime")
    if item.datetime is not None:
        moment = to_utc(item.datetime)
        first = to_utc(str_to_datetime(start)) if start else moment
        last = to_utc(str_to_datetime(end)) if end else moment
        return first, last
    if start and end:
        return to_utc(str_to_datetime(start)), to_utc(str_to_datetime(end))
    raise InputError(f"item {item.id!r} has neither datetime nor start_datetime/end_datetime")
