"""Datetime arguments of ``search``: parsing, and the per-year month windows to search.

A STAC request holds one datetime interval, so "July-August of 2019-2024" is six
intervals, one per year (and per run of months: ``(12, 1, 2)`` is two per year).
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

from xchm.errors import InputError
from xchm.stac._common import isoformat, to_utc

__all__ = ["DEFAULT_MONTHS", "Window", "time_windows", "stamp"]

#: Leaf-on months searched by default (northern-hemisphere summer).
DEFAULT_MONTHS = (7, 8)
_TIME_HINT = (
    "use RFC 3339 ('2023-07-01T00:00:00Z'), a date ('2023-07-01'), a month ('2023-07'), a "
    "year ('2023') or an interval of those ('2023-06-01/2023-08-31', '..' for an open end)"
)
_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$")
Window = tuple[dt.datetime | None, dt.datetime | None]
_EPOCH = dt.datetime(1, 1, 1, tzinfo=dt.UTC)


def _moment(value: Any, *, end: bool) -> dt.datetime | None:
    """One end of an interval; a year, month or day stands for its first or last instant."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "..")):
        return None
    if isinstance(value, dt.datetime):
        return to_utc(value)
    if isinstance(value, dt.date):
        day = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
        return day + dt.timedelta(days=1, microseconds=-1) if end else day
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:04d}"
    if not isinstance(value, str):
        raise InputError(f"cannot read {value!r} as a date or time; {_TIME_HINT}")
    text = value.strip()
    match = _PARTIAL.match(text)
    try:
        if match:
            year = int(match.group(1))
            month, mday = (int(g) if g else None for g in match.groups()[1:])
            if month is None:
                first, last = dt.datetime(year, 1, 1), dt.datetime(year, 12, 31)
            elif mday is None:
                first = dt.datetime(year, month, 1)
                last = dt.datetime(year, month, calendar.monthrange(year, month)[1])
            else:
                first = last = dt.datetime(year, month, mday)
            if end:
                return to_utc(last) + dt.timedelta(days=1, microseconds=-1)
            return to_utc(first)
        return to_utc(dt.datetime.fromisoformat(text))
    except ValueError:
        raise InputError(f"cannot read {value!r} as a date or time; {_TIME_HINT}") from None


def _interval(value: Any) -> Window:
    if isinstance(value, str) and "/" in value:
        parts = value.split("/")
        if len(parts) != 2:
            raise InputError(f"datetime {value!r} has {len(parts) - 1} '/'; {_TIME_HINT}")
        start, end = _moment(parts[0], end=False), _moment(parts[1], end=True)
    elif isinstance(value, tuple | list):
        if len(value) != 2:
            raise InputError(f"a datetime interval needs 2 values, got {value!r}; {_TIME_HINT}")
        start, end = _moment(value[0], end=False), _moment(value[1], end=True)
    else:
        start, end = _moment(value, end=False), _moment(value, end=True)
        if start is None:
            raise InputError(f"datetime {value!r} is empty; {_TIME_HINT}")
    if start is not None and end is not None and start > end:
        raise InputError(f"datetime {value!r} ends before it starts; swap the two ends")
    return start, end


def _month_runs(months: Iterable[int]) -> list[tuple[int, int]]:
    """Contiguous runs of calendar months: (12, 1, 2) -> [(1, 2), (12, 12)]."""
    runs: list[tuple[int, int]] = []
    for m in sorted(set(months)):
        if runs and runs[-1][1] == m - 1:
            runs[-1] = (runs[-1][0], m)
        else:
            runs.append((m, m))
    return runs


def time_windows(
    datetime: Any = None, years: Any = None, months: Any = DEFAULT_MONTHS
) -> list[Window]:
    """Return the datetime intervals to search, newest first (one per year and month run).

    Parameters
    ----------
    datetime
        An interval (``"2019-01-01/2024-12-31"``, ``"2023"``, ``(start, end)``...).
    years
        A year or years (``2023``, ``range(2019, 2025)``); instead of ``datetime``.
    months
        Months of each year to keep (default July-August); ``None`` for all dates.

    Returns
    -------
    list of (start, end)
        Aware UTC datetimes; ``None`` is an open end.

    Raises
    ------
    InputError
        An unreadable datetime, bad years or months, both datetime and years, or months
        without a time range.

    Examples
    --------
    >>> for start, end in time_windows(years=[2022, 2023]):
    ...     print(isoformat(start), isoformat(end))
    2023-07-01T00:00:00Z 2023-08-31T23:59:59.999999Z
    2022-07-01T00:00:00Z 2022-08-31T23:59:59.999999Z
    >>> len(time_windows("2021/2023", months=(12, 1, 2)))  # Jan-Feb and Dec of each year
    6
    >>> time_windows("2023-06-01/2023-09-30", months=None)[0][0].isoformat()
    '2023-06-01T00:00:00+00:00'
    """
    if months is not None:
        if isinstance(months, int) and not isinstance(months, bool):
            months = (months,)
        months = tuple(months)
        if not months or not all(
            isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= 12 for m in months
        ):
            raise InputError(
                f"months must be calendar months 1-12, e.g. (7, 8) for July-August, or None "
                f"for all dates; got {months!r}"
            )
    if years is not None:
        if datetime is not None:
            raise InputError("pass datetime= or years=, not both")
        if isinstance(years, int) and not isinstance(years, bool):
            years = (years,)
        years = tuple(years)
        if not years or not all(
            isinstance(y, int) and not isinstance(y, bool) and 1800 <= y <= 2200 for y in years
        ):
            raise InputError(f"years must be 4-digit years, e.g. range(2019, 2025); got {years!r}")
        spans: list[Window] = [_interval(f"{y:04d}") for y in sorted(set(years))]
    elif datetime is not None:
        spans = [_interval(datetime)]
    elif months is None:
        return [(None, None)]
    else:
        raise InputError(
            f"months={months!r} needs a time range: pass years= (e.g. range(2019, 2025)) or "
            "datetime= (e.g. '2019/2024'), or months=None to search all dates"
        )
    if months is None:
        return spans[::-1]  # one interval, or whole years in increasing order
    windows: list[Window] = []
    for start, end in spans:
        if start is None:
            raise InputError(
                f"datetime={datetime!r} has an open start, which months={months!r} cannot split "
                "into years; give a start date, or months=None"
            )
        end = end or dt.datetime.now(dt.UTC)
        for year in range(start.year, end.year + 1):
            for first, last in _month_runs(months):
                lo = dt.datetime(year, first, 1, tzinfo=dt.UTC)
                days = calendar.monthrange(year, last)[1]
                hi = dt.datetime(year, last, days, tzinfo=dt.UTC) + dt.timedelta(
                    days=1, microseconds=-1
                )
                lo, hi = max(lo, start), min(hi, end)
                if lo <= hi:
                    windows.append((lo, hi))
    if not windows:
        raise InputError(
            f"datetime={datetime!r} contains none of months={months!r}; widen datetime, change "
            "months, or pass months=None to search the whole interval"
        )
    return sorted(windows, key=lambda w: w[0] or _EPOCH, reverse=True)


def stamp(window: Window) -> str | None:
    """Return the STAC ``datetime`` parameter of a window (``None``: no time filter)."""
    start, end = window
    if start is None and end is None:
        return None
    return f"{isoformat(start) if start else '..'}/{isoformat(end) if end else '..'}"
