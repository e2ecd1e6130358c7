"""Rich Jupyter displays: the one HTML helper behind every ``_repr_html_`` in xchm.

:class:`~xchm.models.ModelCard`, :class:`~xchm.chips.ChipCube`, the run results and
:class:`~xchm.evaluation.EvaluationResult` show in a notebook as a compact table, as
xarray shows a DataArray: a title line, then one row per field, with small sub-tables
(bands, history, metrics) where a field has rows of its own.

Written here rather than taken from a library: xarray's HTML formatter is private and
shaped for arrays, and a templating library (jinja2) would be a dependency for a
dozen lines. Every piece of text passes through :func:`html.escape` exactly once, so a
band name or a path holding ``<script>`` is shown, never run; only HTML built by this
module (:class:`Markup`) goes through unescaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Markup", "html_table", "html_grid", "text"]

#: Rows of a sub-table shown before the rest are summarised ("... 40 more rows").
MAX_ROWS = 30
#: Characters of one cell's text shown before it is cut ("...").
MAX_CHARS = 300

_STYLE = (
    "<style>"
    ".xchm-repr{font-family:var(--jp-code-font-family,monospace);font-size:12px;"
    "line-height:1.4}"
    ".xchm-repr .xchm-title{font-weight:bold;margin:0 0 4px 0}"
    ".xchm-repr .xchm-title span+span{font-weight:normal;margin-left:0.6em}"
    ".xchm-repr table{border-collapse:collapse;margin:0}"
    ".xchm-repr th,.xchm-repr td{text-align:left;vertical-align:top;padding:1px 8px 1px 0;"
    "border:none}"
    ".xchm-repr th{font-weight:normal;color:var(--jp-content-font-color2,#555)}"
    ".xchm-repr table table th{font-weight:bold}"
    "</style>"
)


class Markup(str):
    """HTML built by this module: inserted as is, never escaped again."""

    __slots__ = ()


def text(value: Any, digits: int = 4) -> str:
    """Return ``value`` as short plain text (before escaping).

    Floats get ``digits`` significant digits (NaN and infinities spelled as Python
    does); sequences are comma-separated; mappings are ``key: value`` pairs.

    Examples
    --------
    >>> text(3.14159265), text(float("nan")), text(("nir", "red")), text({"a": 1})
    ('3.142', 'nan', 'nir, red', 'a: 1')
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {text(v, digits)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(text(v, digits) for v in value)
    return str(value)


def _cell(value: Any) -> str:
    if isinstance(value, Markup):
        return value
    shown = text(value)
    if len(shown) > MAX_CHARS:  # a run's whole config in a card's provenance
        shown = shown[: MAX_CHARS - 3] + "..."
    return html.escape(shown)


def html_grid(columns: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> Markup:
    """Return a sub-table: a header of ``columns`` (None: none), then ``rows``.

    At most :data:`MAX_ROWS` rows are shown, then how many more there are.

    Examples
    --------
    >>> html_grid(["band", "mean"], [["<b>", 0.5]])
    '<table><tr><th>band</th><th>mean</th></tr><tr><td>&lt;b&gt;</td><td>0.5</td></tr></table>'
    """
    rows = list(rows)
    width = len(columns) if columns else max((len(r) for r in rows), default=1)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns or ())
    head = f"<tr>{head}</tr>" if head else ""
    body = [
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows[:MAX_ROWS]
    ]
    if len(rows) > MAX_ROWS:
        body.append(f'<tr><td colspan="{width}">... {len(rows) - MAX_ROWS} more</td></tr>')
    return Markup(f"<table>{head}{''.join(body)}</table>")


def html_table(title: str, rows: Iterable[tuple[str, Any]], *, subtitle: Any = "") -> str:
    """Return the HTML of an object: ``title`` (and ``subtitle``), then one row per field.

    Parameters
    ----------
    title
        The object's kind, e.g. ``"xchm.ModelCard"``.
    rows
        ``(label, value)`` pairs; a value is shown with :func:`text` and escaped, or
        inserted as is when it is :class:`Markup` (a :func:`html_grid`).
    subtitle
        What the object is (a path, a preset name), shown after the title.

    Examples
    --------
    >>> out = html_table("xchm.Thing", [("bands", ("<script>", "red"))])
    >>> "<script>" in out, "&lt;script&gt;" in out
    (False, True)
    """
    head = f"<span>{html.escape(title)}</span>"
    if subtitle != "":
        head += f"<span>{html.escape(text(subtitle))}</span>"
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in rows)
    return (
        f'<div class="xchm-repr">{_STYLE}<div class="xchm-title">{head}</div>'
        f"<table>{body}</table></div>"
    )
