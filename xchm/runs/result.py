"""RunResult: what a run returns, as a frozen dataclass that also converts to plain JSON."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

__all__ = ["RunResult", "jsonable"]


def jsonable(value: Any) -> Any:
    """Return ``value`` in plain JSON types: paths as strings, NaN and infinities as None.

    NumPy scalars become Python numbers. The one JSON conversion of run results,
    evaluation results and reports.

    Examples
    --------
    >>> from pathlib import Path
    >>> jsonable({"best": Path("runs/a/best"), "loss": float("nan"), "epochs": (1, 2)})
    {'best': 'runs/a/best', 'loss': None, 'epochs': [1, 2]}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN (a validation with no labelled pixel gives one)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Base of :class:`~xchm.training.TrainResult` and :class:`~xchm.pretraining.PretrainResult`."""

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON (``json.dumps(result.to_dict(), allow_nan=False)`` works).

        Examples
        --------
        >>> from pathlib import Path
        >>> from xchm.pretraining import PretrainResult
        >>> PretrainResult(backbone=Path("ssl/backbone"), history=[{"loss": 9.5}]).to_dict()
        {'backbone': 'ssl/backbone', 'history': [{'loss': 9.5}]}
        """
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def _repr_html_(self) -> str:
        """Show the result as a compact table in Jupyter: each field, the history as rows."""
        from xchm._html import html_grid, html_table

        rows: list[tuple[str, Any]] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "history":
                columns = list(dict.fromkeys(k for row in value for k in row))
                value = html_grid(columns, [[r.get(k, "") for k in columns] for r in value])
            rows.append((f.name.replace("_", " "), value))
        return html_table(f"xchm.{type(self).__name__}", rows)
