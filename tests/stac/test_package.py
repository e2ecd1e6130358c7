"""xchm.stac without a server: light imports, missing extras, time windows, the mosaic."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pystac
import pytest

from tests.stac import data
from xchm.errors import MissingDependencyError
from xchm.stac import load, search
from xchm.stac.dates import time_windows
from xchm.stac.load import _mosaic


def test_import__xchm_stac_imports_neither_pystac_client_nor_odc_stac():
    code = (
        "import sys, xchm.stac; print(','.join(m for m in ('pystac_client', 'odc.stac', 'torch') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_search__without_pystac_client_names_the_stac_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pystac_client", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'xchm\[stac\]'"):
        search(data.ZONE18, collections="c", catalog="http://127.0.0.1:9", years=2023)


def test_load__without_odc_stac_names_the_stac_extra(monkeypatch):
    item = pystac.Item("a", None, None, pystac.utils.str_to_datetime("2023-07-20T00:00:00Z"), {})
    bands = [{"name": b, "common_name": b} for b in ("nir", "red", "green")]
    item.add_asset("image", pystac.Asset("file:///x.tif", extra_fields={"eo:bands": bands}))
    monkeypatch.setitem(sys.modules, "odc.stac", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'xchm\[stac\]'"):
        load([item])


def test_time_windows__open_end_with_months_runs_to_today():
    windows = time_windows("2024-06-01/..", months=(7,))
    assert windows[-1][0].isoformat() == "2024-07-01T00:00:00+00:00"
    assert all(start.month == 7 for start, _ in windows)


def test_time_windows__clips_the_months_to_the_interval():
    ((start, end),) = time_windows("2023-07-15/2023-09-30")
    assert (start.isoformat(), end.date().isoformat()) == (
        "2023-07-15T00:00:00+00:00",
        "2023-08-31",
    )


def test_time_windows__no_dates_at_all_without_months():
    assert time_windows(months=None) == [(None, None)]


def test_mosaic__first_takes_the_newest_pixel_valid_in_every_band():
    newest = np.array([[[1.0, np.nan]], [[1.0, 1.0]]])  # (band, y, x): x=1 misses band 0
    older = np.array([[[2.0, 2.0]], [[2.0, 2.0]]])
    block = np.stack([newest, older], axis=1)  # (band, time, y, x), newest first
    out = _mosaic(block, "first")
    np.testing.assert_array_equal(out, [[[1.0, 2.0]], [[1.0, 2.0]]])  # bands never mixed


def test_mosaic__mean_and_median_of_valid_dates_and_nan_where_none():
    block = np.array([[[[1.0, np.nan]], [[3.0, np.nan]], [[8.0, np.nan]]]])  # 1 band, 3 dates
    np.testing.assert_array_equal(_mosaic(block, "mean"), [[[4.0, np.nan]]])
    np.testing.assert_array_equal(_mosaic(block, "median"), [[[3.0, np.nan]]])
    np.testing.assert_array_equal(_mosaic(block, "first"), [[[1.0, np.nan]]])
