"""xchm.stac.search against the real STAC API on loopback (and a fault proxy before it)."""

from __future__ import annotations

import functools
import json
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pystac
import pytest

from tests.stac import data
from xchm.errors import InputError, StacSearchError, XCHMWarning
from xchm.stac import search

FAST = {"retries": 2, "backoff": 0.01, "timeout": 10.0}


def dates(items) -> set[str]:
    return {i.id[-10:] for i in items}


def run(url: str, bbox=data.ZONE18, **kwargs):
    kwargs.setdefault("collections", data.COLLECTION)
    return search(bbox, catalog=url, **{**FAST, **kwargs})


def test_search__finds_every_date_of_a_zone_newest_first(stac):
    items = run(stac.url, months=None)
    assert isinstance(items, pystac.ItemCollection)
    assert len(items) == 10
    assert {i.id for i in items} == {i for i in stac.ids() if i.startswith("z32618")}
    stamps = [i.datetime for i in items]
    assert stamps == sorted(stamps, reverse=True)


def test_search__pages_beyond_one_page(stac, faulty):
    items = run(faulty.url, bbox=data.BOTH, months=None, page_size=3)
    assert {i.id for i in items} == stac.ids()
    assert len(faulty.seen("POST", "/search")) >= 7  # 20 items, 3 per page


def test_search__summer_months_one_search_per_year(faulty):
    items = run(faulty.url, years=range(2021, 2024))  # months=(7, 8) by default
    assert dates(items) == {"2021-07-15", "2022-08-10", "2023-07-20"}
    bodies = [r.body for r in faulty.seen("POST", "/search")]
    assert [b["datetime"][:7] for b in bodies] == ["2023-07", "2022-07", "2021-07"]


def test_search__winter_months_across_the_new_year(faulty):
    items = run(faulty.url, years=2022, months=(12, 1, 2))
    assert dates(items) == {"2022-01-20", "2022-12-18"}
    assert len(faulty.seen("POST", "/search")) == 2  # Jan-Feb and December


def test_search__datetime_interval_keeps_the_months(stac):
    items = run(stac.url, datetime="2021-01-01/2022-12-31")
    assert dates(items) == {"2021-07-15", "2022-08-10"}


def test_search__merges_and_deduplicates_across_years(faulty):
    # The item's start/end range spans August 2022 to July 2023: both summers find it.
    items = run(faulty.url, collections=data.RANGE, years=[2022, 2023])
    assert [i.id for i in items] == ["range-1"]
    assert len(faulty.seen("POST", "/search")) == 2


def test_search__cloud_filter_runs_on_the_server_and_keeps_missing(faulty):
    items = run(faulty.url, months=None, max_cloud_cover=10, missing_cloud_cover="keep")
    assert dates(items) == {"2021-07-15", "2022-01-20", "2022-08-10"}
    (body,) = [r.body for r in faulty.seen("POST", "/search")]
    assert body["filter-lang"] == "cql2-json"
    assert body["filter"]["op"] == "or"
    assert body["filter"]["args"][1] == {"op": "isNull", "args": [{"property": "eo:cloud_cover"}]}


def test_search__missing_cloud_cover_dropped_with_a_warning(stac):
    with pytest.warns(XCHMWarning, match=r"2 of 6 items .*no eo:cloud_cover.*'keep'"):
        items = run(stac.url, months=None, max_cloud_cover=10)
    assert dates(items) == {"2021-07-15", "2022-01-20"}


def test_search__missing_cloud_cover_drop_is_silent_and_filtered_on_the_server(faulty):
    items = run(faulty.url, months=None, max_cloud_cover=10, missing_cloud_cover="drop")
    assert dates(items) == {"2021-07-15", "2022-01-20"}
    (body,) = [r.body for r in faulty.seen("POST", "/search")]
    assert body["filter"]["op"] == "<="


def test_search__catalog_without_filter_is_filtered_here(faulty):
    faulty.hide_filter = True
    items = run(faulty.url, months=None, max_cloud_cover=10, missing_cloud_cover="keep")
    assert dates(items) == {"2021-07-15", "2022-01-20", "2022-08-10"}
    assert all("filter" not in r.body for r in faulty.seen("POST", "/search"))


def test_search__more_than_max_items_is_an_error(stac):
    with pytest.raises(StacSearchError, match=r"more than max_items=5 .*raise max_items"):
        run(stac.url, months=None, max_items=5)


def test_search__more_than_max_items_can_warn_and_keep_the_newest(stac):
    with pytest.warns(XCHMWarning, match="keeping the 5 newest"):
        items = run(stac.url, months=None, max_items=5, on_overflow="warn")
    assert len(items) == 5
    assert dates(items) <= {"2023-07-20", "2022-12-18", "2022-08-10"}


def test_search__a_paging_loop_is_an_error_not_a_hang(faulty):
    faulty.loop_pages = True
    with pytest.raises(StacSearchError, match=r"same items again on later pages .*loop"):
        run(faulty.url, months=None, page_size=3, max_items=12)
    assert len(faulty.seen("POST", "/search")) == 5  # 13 items of 3 per page, then it stops


def test_search__modifier_signs_every_item(stac):
    def sign(obj):  # what planetary_computer.sign_inplace does, for local files
        features = obj.get("features", []) if isinstance(obj, dict) else []
        if isinstance(obj, pystac.Item):
            features = [obj]
        for feature in features:
            assets = feature.assets if isinstance(feature, pystac.Item) else feature["assets"]
            for asset in assets.values():
                if isinstance(asset, dict):
                    asset["href"] += "?sig=1"
                else:
                    asset.href += "?sig=1"

    items = run(stac.url, months=None, modifier=sign)
    assert len(items) == 10
    assert all(i.assets["image"].href.endswith("?sig=1") for i in items)


def test_search__intersects_a_geometry(stac):
    w, s, e, n = data.ZONE19
    polygon = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    items = run(stac.url, bbox=None, intersects=polygon, months=None)
    assert {i.id[:6] for i in items} == {"z32619"}


def test_search__unknown_collection_lists_the_known_ones(stac):
    with pytest.raises(InputError, match=r"'nope' not found .*xchm-test"):
        run(stac.url, collections="nope", months=None)


def test_search__retries_a_post_after_503(faulty):
    faulty.fail("POST", "/search", times=2, status=503)
    items = run(faulty.url, months=None)
    assert len(items) == 10
    assert [r.status for r in faulty.seen("POST", "/search")] == [503, 503, 200]


def test_search__retries_the_landing_page_after_429(faulty):
    faulty.fail("GET", "/", times=1, status=429)
    assert len(run(faulty.url, months=None)) == 10
    assert faulty.records[0].status == 429 and faulty.records[1].status == 200


def test_search__gives_up_with_the_url_and_status(faulty):
    faulty.fail("POST", "/search", times=10, status=503)
    with pytest.raises(StacSearchError, match=rf"{faulty.url}/search .*HTTP 503 after 2 retries"):
        run(faulty.url, months=None)
    assert len(faulty.seen("POST", "/search")) == 3  # the first try and 2 retries


def test_search__client_errors_are_not_retried(faulty):
    faulty.fail("POST", "/search", times=1, status=400)
    with pytest.raises(StacSearchError, match=r"HTTP 400: .*rejected"):
        run(faulty.url, months=None)
    assert len(faulty.seen("POST", "/search")) == 1


def test_search__a_timeout_is_retried(faulty):
    """The first search is held for 6 s; a client that waited would get its items too,
    so the test asserts the retry itself: a second POST /search that arrived while the
    first was still held, and a result well before the held answer came."""
    delay = 6.0
    faulty.delay("POST", "/search", times=1, seconds=delay)
    start = time.monotonic()
    items = run(faulty.url, months=None, timeout=0.5)
    elapsed = time.monotonic() - start
    assert len(items) == 10
    assert faulty.faults[0].times == 0  # the first search was the held one
    posts = faulty.arrived("POST", "/search")
    assert len(posts) >= 2, "the client waited for the slow answer instead of retrying"
    assert posts[1].time - posts[0].time < delay  # retried while the first was held
    assert elapsed < delay, f"the search took {elapsed:.1f} s: it waited out the delay"


def test_search__stopped_server_is_a_stac_search_error(closed_url):
    with pytest.raises(StacSearchError, match=rf"{closed_url} failed with no HTTP response"):
        run(closed_url, months=None, retries=1)


@pytest.fixture
def static_site(tmp_path):
    """A plain web server with a static catalog (no /search), like Maxar Open Data."""
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "static", "links": []}
    (tmp_path / "catalog.json").write_text(json.dumps({**catalog, "description": "static"}))
    (tmp_path / "other.json").write_text(json.dumps({"hello": "world"}))

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    site = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield f"http://127.0.0.1:{site.server_address[1]}"
    site.shutdown()
    site.server_close()


def test_search__static_catalog_is_refused(static_site):
    with pytest.raises(StacSearchError, match=r"does not conform to STAC API - Item Search"):
        run(f"{static_site}/catalog.json", months=None)


def test_search__wrong_catalog_url_says_so(static_site):
    with pytest.raises(StacSearchError, match=r"HTTP 404: .*check the catalog URL"):
        run(f"{static_site}/api/stac/v1", months=None)


@pytest.mark.parametrize("path", ["", "/other.json"], ids=["html-page", "json-not-stac"])
def test_search__not_a_stac_api_says_so(static_site, path):
    with pytest.raises(StacSearchError, match=r"did not answer with a STAC API landing page"):
        run(static_site + path, months=None)


BAD = {
    "bbox-3-numbers": ({"bbox": [1.0, 2.0, 3.0]}, r"3 numbers, expected 4"),
    "bbox-string": ({"bbox": "-72,42,-71,43"}, r"sequence of 4 numbers"),
    "bbox-metres": ({"bbox": [721664, 4712960, 722176, 4713216]}, r"looks like metres"),
    "bbox-south-north-swapped": ({"bbox": [-72.3, 42.6, -72.1, 42.5]}, r"south .* north"),
    "bbox-west-east-swapped": ({"bbox": [-72.1, 42.5, -72.3, 42.6]}, r"west .* east"),
    "bbox-nan": ({"bbox": [float("nan"), 42.5, -72.1, 42.6]}, r"NaN"),
    "bbox-and-intersects": (
        {"intersects": {"type": "Point", "coordinates": [-72.2, 42.5]}},
        r"exactly one of bbox.*not both",
    ),
    "neither-bbox-nor-intersects": ({"bbox": None}, r"exactly one of bbox"),
    "intersects-metres": (
        {"bbox": None, "intersects": {"type": "Point", "coordinates": [721664, 4712960]}},
        r"degrees",
    ),
    "datetime-unreadable": ({"datetime": "last summer"}, r"cannot read 'last summer'"),
    "datetime-reversed": ({"datetime": "2023/2021", "months": None}, r"ends before it starts"),
    "datetime-and-years": ({"datetime": "2023", "years": 2023}, r"datetime= or years=, not both"),
    "months-13": ({"years": 2023, "months": (7, 13)}, r"months must be calendar months 1-12"),
    "months-without-dates": ({}, r"needs a time range: pass years="),
    "months-outside-datetime": (
        {"datetime": "2023-03-01/2023-04-30"},
        r"contains none of months=\(7, 8\).*months=None",
    ),
    "years-not-years": ({"years": ["2023"]}, r"years must be 4-digit years"),
    "cloud-above-100": ({"months": None, "max_cloud_cover": 150}, r"percentage in \[0, 100\]"),
    "cloud-negative": ({"months": None, "max_cloud_cover": -1}, r"percentage in \[0, 100\]"),
    "missing-cloud-option": ({"months": None, "missing_cloud_cover": "yes"}, r"'keep' or 'drop'"),
    "max-items-zero": ({"months": None, "max_items": 0}, r"max_items must be a positive"),
    "page-size-float": ({"months": None, "page_size": 2.5}, r"page_size must be a positive"),
    "collections-empty": ({"months": None, "collections": []}, r"collections must name"),
    "modifier-not-callable": ({"months": None, "modifier": "sign"}, r"modifier must be a callable"),
    "overflow-option": ({"months": None, "on_overflow": "ignore"}, r"'error' or 'warn'"),
    "timeout-zero": ({"months": None, "timeout": 0}, r"timeout must be positive"),
    "retries-negative": ({"months": None, "retries": -1}, r"retries must be an integer >= 0"),
    "backoff-negative": ({"months": None, "backoff": -0.5}, r"backoff must be seconds >= 0"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_search__rejects_bad_input_before_any_request(faulty, case):
    kwargs, match = case
    kwargs = {"bbox": data.ZONE18, "collections": data.COLLECTION, **kwargs}
    with pytest.raises(InputError, match=match):
        search(kwargs.pop("bbox"), catalog=faulty.url, **kwargs)
    assert faulty.records == []


def test_search__catalog_must_be_a_url():
    with pytest.raises(InputError, match=r"http\(s\) URL of a STAC API"):
        search(data.ZONE18, collections=data.COLLECTION, catalog="planetarycomputer", years=2023)
