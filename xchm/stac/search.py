"""``xchm.stac.search``: find scenes in a STAC API; checked first, retried, never cut silently.

Built on pystac-client. What it adds, each for a trap measured with pystac-client 0.9.1
and real servers (``../shared/docs/FINDINGS.md``):

- Every argument is checked before the first request, and a bad one raises
  :class:`~xchm.errors.InputError` saying what to pass instead (pystac-client raises a
  bare ``Exception`` for a bad datetime, and servers answer many mistakes with nothing).
- Servers answer an unknown collection with zero items: each collection is looked up
  first, and a missing one is an error listing the ones that exist.
- One datetime interval per request: month windows over several years (July-August
  of 2019-2024) become one search per year, merged and de-duplicated.
- Cloud cover is filtered on the server with CQL2 when the catalog advertises the filter
  extension (and ``cql2-json``), and always checked again here; items without
  ``eo:cloud_cover`` (NAIP has none) are kept or dropped by an explicit option, never
  dropped silently by a ``<=`` filter.
- pystac-client retries no POST and never backs off: a urllib3 ``Retry`` (429/5xx,
  connection errors and timeouts, all methods, exponential backoff) is mounted on its
  session, and there is always a timeout.
- ``max_items`` is always set (some servers repeat the same next link); more matches
  than that is an error, or a warning with ``on_overflow="warn"``, never a silent cut.
- Server and transport failures become :class:`~xchm.errors.StacSearchError` with the
  URL and the HTTP status.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from xchm._optional import require
from xchm.errors import InputError, StacSearchError, XCHMWarning
from xchm.stac._common import check_bbox, import_pystac, item_time_range
from xchm.stac.checks import check_collections, check_geometry, check_options, positive_int
from xchm.stac.dates import DEFAULT_MONTHS, stamp, time_windows

if TYPE_CHECKING:
    import pystac

__all__ = ["search", "time_windows", "DEFAULT_MONTHS", "RETRY_STATUS"]

logger = logging.getLogger(__name__)

#: HTTP statuses that are retried (with backoff) before giving up.
RETRY_STATUS = (429, 500, 502, 503, 504)


# -- requests ----------------------------------------------------------------------------
def _retry(retries: int, backoff: float) -> Any:
    """urllib3 Retry: 429/5xx, connection errors and timeouts, every method, with backoff."""
    from urllib3.util.retry import Retry

    class CappedRetry(Retry):  # a server's Retry-After is obeyed, up to backoff_max
        def get_retry_after(self, response: Any) -> float | None:
            after = super().get_retry_after(response)
            return None if after is None else min(after, self.backoff_max)

    return CappedRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=retries,
        backoff_factor=backoff,
        backoff_max=30.0,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,  # also POST: searches and their next pages are POSTs
        raise_on_status=False,  # the last response comes back, so its status is reported
        respect_retry_after_header=True,
    )


def _failure(
    err: BaseException, url: str, what: str, retries: int, hint_4xx: str | None = None
) -> StacSearchError:
    status = getattr(err, "status_code", None)
    text = " ".join(str(err).split())[:400] or type(err).__name__
    if status is None:
        return StacSearchError(
            f"{what} at {url} failed with no HTTP response (after {retries} retries with "
            f"backoff): {text}; check that the URL is right and the server is reachable, or "
            "raise timeout=/retries="
        )
    if status == 429:
        hint = "the server is rate-limiting: wait, then retry with a larger backoff="
    elif status >= 500:
        hint = "the server failed: try again later"
    else:
        hint = hint_4xx or "the server rejected the request: check the collections, bbox, datetime"
    tried = f" after {retries} retries" if status in RETRY_STATUS else ""
    return StacSearchError(f"{what} at {url} failed with HTTP {status}{tried}: {text}; {hint}")


def _open(url: str, modifier: Any, timeout: Any, retries: int, backoff: float) -> Any:
    pystac_client = require("pystac_client")
    from pystac.errors import STACError, STACTypeError
    from pystac_client.errors import ClientTypeError
    from pystac_client.stac_api_io import StacApiIO
    from pystac_client.warnings import NoConformsTo

    stac_io = StacApiIO(timeout=timeout, max_retries=_retry(retries, backoff))
    try:
        with warnings.catch_warnings():  # pystac-client warns without conformsTo; we raise
            warnings.simplefilter("ignore", NoConformsTo)
            client = pystac_client.Client.open(
                url, modifier=modifier, stac_io=stac_io, timeout=timeout
            )
            searchable = client.conforms_to("ITEM_SEARCH")
    except pystac_client.exceptions.APIError as err:
        hint = "check the catalog URL: the API root, e.g. .../api/stac/v1"
        raise _failure(err, url, "opening the STAC API", retries, hint) from err
    except (ValueError, KeyError, TypeError, STACError, STACTypeError, ClientTypeError) as err:
        raise StacSearchError(
            f"{url} did not answer with a STAC API landing page ({type(err).__name__}: "
            f"{err}); check the catalog URL (it ends in the API root, e.g. .../api/stac/v1)"
        ) from err
    if not searchable:
        raise StacSearchError(
            f"{url} does not conform to STAC API - Item Search (no /search): it may be a static "
            "catalog; open it with pystac.Catalog.from_file and pass its items to xchm.stac.load"
        )
    return client


def _check_exist(client: Any, collections: list[str], url: str, retries: int) -> None:
    from pystac_client.exceptions import APIError

    missing = []
    for cid in collections:
        try:
            found = client.get_collection(cid)  # None for a 404
        except APIError as err:
            raise _failure(err, url, f"looking up collection {cid!r}", retries) from err
        if found is None or found.id != cid:  # (without /collections it scans the children)
            missing.append(cid)
    if missing:
        try:
            known = sorted(c.id for _, c in zip(range(60), client.get_collections(), strict=False))
        except APIError:
            known = []
        listing = ", ".join(known) if known else "(could not list them)"
        raise InputError(
            f"collection(s) {', '.join(map(repr, missing))} not found at {url} (a search would "
            f"silently return nothing); collections there include: {listing}"
        )


def _server_filter(client: Any, max_cloud_cover: float | None, keep_missing: bool) -> Any:
    if max_cloud_cover is None:
        return None
    conforms = client.get_conforms_to()
    if not client.conforms_to("FILTER") or not any("cql2-json" in c for c in conforms):
        logger.info("%s has no CQL2 filter: cloud cover is checked here only", client.self_href)
        return None
    below = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, float(max_cloud_cover)]}
    if not keep_missing:
        return below
    missing = {"op": "isNull", "args": [{"property": "eo:cloud_cover"}]}
    return {"op": "or", "args": [below, missing]}


def _items(found: Any, url: str, retries: int) -> Iterator[pystac.Item]:
    from pystac_client.exceptions import APIError

    try:
        yield from found.items()
    except APIError as err:
        raise _failure(err, url, "the search", retries) from err


def search(
    bbox: Sequence[float] | None = None,
    *,
    collections: str | Sequence[str],
    catalog: str,
    intersects: Any = None,
    datetime: Any = None,
    years: int | Iterable[int] | None = None,
    months: Iterable[int] | None = DEFAULT_MONTHS,
    max_cloud_cover: float | None = None,
    missing_cloud_cover: Literal["keep", "drop"] | None = None,
    modifier: Callable[[Any], Any] | None = None,
    max_items: int = 1000,
    on_overflow: Literal["error", "warn"] = "error",
    page_size: int = 100,
    timeout: float | tuple[float, float] = 30.0,
    retries: int = 5,
    backoff: float = 0.5,
) -> pystac.ItemCollection:
    """Search a STAC API for scenes over an area, by year, month and cloud cover.

    Parameters
    ----------
    bbox
        (west, south, east, north) in degrees (EPSG:4326). Give ``bbox`` or ``intersects``.
    collections
        Collection id(s), e.g. ``"naip"``; each is checked to exist first.
    catalog
        URL of the STAC API root, e.g. ``"https://planetarycomputer.microsoft.com/api/stac/v1"``.
    intersects
        A GeoJSON geometry dict (or shapely geometry) in degrees, instead of ``bbox``.
    datetime
        An interval: ``"2019/2024"``, ``"2023-06-01/2023-09-30"``, ``"2023"``, a
        ``datetime``, a ``(start, end)`` pair (``".."`` or ``None`` for an open end).
    years
        Year(s) to search instead of ``datetime``: ``2023``, ``range(2019, 2025)``.
    months
        Months of each year to keep, default ``(7, 8)`` (leaf-on); ``None`` for every
        date of ``datetime``. Each year's run of months is one search.
    max_cloud_cover
        Keep items with ``eo:cloud_cover`` at most this percentage (server-side CQL2
        filter when the API supports it, always re-checked here).
    missing_cloud_cover
        Items without ``eo:cloud_cover``: ``"keep"`` or ``"drop"``. The default drops
        them when ``max_cloud_cover`` is set, with an ``XCHMWarning`` saying how many.
    modifier
        Called on every item and collection, e.g. ``planetary_computer.sign_inplace``
        (xchm does not depend on it).
    max_items
        The most items fetched; more matches is an error (or a warning, see
        ``on_overflow``), never a silent cut.
    on_overflow
        ``"error"`` (default) raises :class:`StacSearchError`; ``"warn"`` keeps the
        ``max_items`` newest with an ``XCHMWarning``.
    page_size
        Items per page (the API's ``limit``).
    timeout
        Seconds to wait for the server (or a (connect, read) pair).
    retries
        Retries of a request after a 429/5xx, a connection error or a timeout.
    backoff
        Backoff factor in seconds: waits of 0, 2x, 4x, ... this (at most 30 s; a
        server's Retry-After is obeyed up to 30 s).

    Returns
    -------
    pystac.ItemCollection
        The items, newest first, de-duplicated. Only metadata: no pixel is read.

    Raises
    ------
    InputError
        A bad argument (before any request), or a collection that does not exist.
    StacSearchError
        The server failed (the message has the URL and HTTP status), or more items
        match than ``max_items``.

    Examples
    --------
    >>> import xchm.stac
    >>> items = xchm.stac.search(  # doctest: +SKIP
    ...     (-72.20, 42.52, -72.16, 42.55), collections="naip", years=range(2018, 2024),
    ...     catalog="https://planetarycomputer.microsoft.com/api/stac/v1",
    ...     modifier=planetary_computer.sign_inplace)
    >>> xchm.stac.search((500000, 4700000, 501000, 4701000), collections="naip",
    ...                  catalog="https://example.com/stac", years=2023)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xchm.errors.InputError: bbox=(500000, 4700000, 501000, 4701000) looks like metres ...
    """
    if (bbox is None) == (intersects is None):
        raise InputError(
            "give exactly one of bbox=(west, south, east, north) in degrees or intersects="
            "<GeoJSON geometry>" + ("" if bbox is None else ", not both")
        )
    box = check_bbox(bbox) if bbox is not None else None
    geometry = check_geometry(intersects) if intersects is not None else None
    ids = check_collections(collections)
    windows = time_windows(datetime, years, months)
    max_items = positive_int(max_items, "max_items", "1000")
    page_size = positive_int(page_size, "page_size", "100")
    url = check_options(
        catalog,
        max_cloud_cover,
        missing_cloud_cover,
        modifier,
        on_overflow,
        timeout,
        retries,
        backoff,
    )

    client = _open(url, modifier, timeout, retries, backoff)
    _check_exist(client, ids, url, retries)
    keep_missing = missing_cloud_cover != "drop"
    flt = _server_filter(client, max_cloud_cover, keep_missing)
    found: dict[tuple[str | None, str], pystac.Item] = {}
    overflow = False
    for window in windows:
        query = client.search(
            collections=ids,
            bbox=list(box) if box else None,
            intersects=geometry,
            datetime=stamp(window),
            limit=page_size,
            max_items=max_items + 1,
            filter=flt,
            filter_lang="cql2-json" if flt else None,
        )
        count, distinct = 0, set()
        for item in _items(query, query.url, retries):
            count += 1
            distinct.add((item.collection_id, item.id))
            found.setdefault((item.collection_id, item.id), item)
        if count > max_items and len(distinct) < count:
            raise StacSearchError(
                f"{query.url} returned the same items again on later pages ({count} items, "
                f"{len(distinct)} distinct): its next links loop; report it to the catalog's "
                "maintainers (a larger page_size= may avoid paging)"
            )
        logger.info("%d items from %s for %s", count, query.url, stamp(window) or "all dates")
        if count > max_items or len(found) > max_items:
            overflow = True
            break
    items = sorted(found.values(), key=lambda i: (item_time_range(i)[0], i.id), reverse=True)
    if overflow:
        message = (
            f"more than max_items={max_items} items match in {', '.join(ids)} at {url}; narrow "
            "the search (a smaller bbox, fewer years or months, max_cloud_cover=) or raise "
            "max_items"
        )
        if on_overflow == "error":
            raise StacSearchError(message)
        warnings.warn(f"{message}; keeping the {max_items} newest", XCHMWarning, stacklevel=2)
        items = items[:max_items]
    items = _cloud_check(items, max_cloud_cover, missing_cloud_cover)
    return import_pystac().ItemCollection(items)


def _cloud_check(
    items: list[pystac.Item], max_cloud_cover: float | None, missing: str | None
) -> list[pystac.Item]:
    """Client-side cloud check (servers may lack or ignore the filter); keeps the order."""
    keep_lacking = missing == "keep" or (missing is None and max_cloud_cover is None)
    kept, lacking, cloudy = [], [], 0
    for item in items:
        cover = item.properties.get("eo:cloud_cover")
        if cover is None:
            lacking.append(item)
            if keep_lacking:
                kept.append(item)
        elif max_cloud_cover is not None and float(cover) > max_cloud_cover:
            cloudy += 1
        else:
            kept.append(item)
    if cloudy:
        logger.info("dropped %d items above max_cloud_cover=%s", cloudy, max_cloud_cover)
    if lacking and not keep_lacking and missing is None:
        warnings.warn(
            f"dropped {len(lacking)} of {len(items)} items that have no eo:cloud_cover (e.g. "
            f"{lacking[0].id!r}); pass missing_cloud_cover='keep' (xchm predict: --missing-cloud "
            "keep) to keep them (NAIP and most aerial imagery have none) or 'drop' to drop them "
            "without this warning",
            XCHMWarning,
            stacklevel=3,
        )
    return kept
