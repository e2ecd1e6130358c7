"""What :func:`xchm.evaluate` and :func:`xchm.evaluate_raster` return.

An :class:`EvaluationResult` is the metrics dict those functions have always
returned (so ``result["mae"]``, ``"scenes" in result``, ``json.dumps(result)`` and
``dict(result)`` keep working), with the metrics as attributes (``result.mae``) and
:meth:`~EvaluationResult.to_dict` for the plain, JSON-ready dict that a report's
``metrics.json`` holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xchm._html import text
from xchm.evaluation.report import jsonable
from xchm.storage import location

__all__ = ["EvaluationResult"]


class EvaluationResult(dict[str, Any]):
    """Accuracy of a canopy height model: metrics as attributes and as dict keys.

    The keys are those of :func:`~xchm.evaluation.metrics.height_metrics` (``mae``,
    ``rmse``, ``bias``, ``r2``, ``pearson_r2``, ``n_pixels``, ``classes``) plus what
    was scored: for :func:`xchm.evaluate` ``model``, ``cube``, ``split``, ``n_chips``,
    ``baseline_source``, ``baseline`` (and ``scenes``, ``report`` when asked for); for
    :func:`xchm.evaluate_raster` ``pred``, ``reference``, ``shape``, ``crs`` (and
    ``report``). Attributes of keys a result lacks are None.

    Examples
    --------
    >>> result = EvaluationResult({"mae": 1.5, "rmse": 2.0, "r2": float("nan")})
    >>> result.mae, result["rmse"], result.baseline
    (1.5, 2.0, None)
    >>> result.to_dict()
    {'mae': 1.5, 'rmse': 2.0, 'r2': None}
    >>> result
    EvaluationResult(mae=1.5, rmse=2.0, r2=nan)
    """

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a plain, JSON-ready dict (NaN and inf as None).

        What a report's ``metrics.json`` holds; ``json.dumps(result.to_dict(),
        allow_nan=False)`` works.
        """
        return dict(jsonable(dict(self)))

    def __repr__(self) -> str:
        shown = [k for k in ("mae", "rmse", "bias", "r2", "n_pixels") if k in self]
        more = ", ..." if len(self) > len(shown) else ""
        return f"{type(self).__name__}({', '.join(f'{k}={self[k]!r}' for k in shown)}{more})"

    def _repr_html_(self) -> str:
        """Show the result as a compact table in Jupyter (as the text report; escaped).

        The metrics of all pixels, each height class, the baseline and each scene,
        then what was scored.
        """
        from xchm._html import html_grid, html_table

        columns = ["", "pixels", "MAE", "RMSE", "bias", "R2", "Pearson r2"]
        keys = ("n_pixels", "mae", "rmse", "bias", "r2", "pearson_r2")
        named = [("all", dict(self))]
        named += [(f"{c['class']} m", c) for c in self.classes]
        if self.baseline is not None:
            named.append((f"baseline ({text(self.baseline.get('height'))} m)", self.baseline))
        named += [(f"scene {s}", m) for s, m in (self.scenes or {}).items()]
        grid = html_grid(columns, [[name, *(m.get(k, "") for k in keys)] for name, m in named])
        scored = [
            (k.replace("_", " "), self[k])
            for k in ("model", "cube", "split", "n_chips", "pred", "reference", "shape", "crs")
            if k in self
        ]
        if "report" in self:
            scored.append(("report", self.report))
        return html_table(f"xchm.{type(self).__name__}", [("metrics", grid), *scored])

    @property
    def mae(self) -> float:
        """Mean absolute error, metres."""
        return float(self["mae"])

    @property
    def rmse(self) -> float:
        """Root mean squared error, metres."""
        return float(self["rmse"])

    @property
    def bias(self) -> float:
        """Mean error (prediction - reference), metres; negative: heights too low."""
        return float(self["bias"])

    @property
    def r2(self) -> float:
        """Coefficient of determination, 1 - SSres / SStot (NaN if the reference is flat)."""
        return float(self["r2"])

    @property
    def pearson_r2(self) -> float:
        """Squared Pearson correlation of prediction and reference."""
        return float(self["pearson_r2"])

    @property
    def n_pixels(self) -> int:
        """Pixels scored (finite in both prediction and reference)."""
        return int(self["n_pixels"])

    @property
    def classes(self) -> list[dict[str, Any]]:
        """The metrics by reference height class, one dict per class."""
        return list(self.get("classes", []))

    @property
    def baseline(self) -> dict[str, Any] | None:
        """:func:`xchm.evaluate`: the metrics of predicting one constant ``height``."""
        return self.get("baseline")

    @property
    def scenes(self) -> dict[str, Any] | None:
        """:func:`xchm.evaluate` with ``per_scene``: the metrics of each scene."""
        return self.get("scenes")

    @property
    def report(self) -> Path | str | None:
        """The report folder written (``output=``): a ``Path``, a URL as typed, or None."""
        folder = self.get("report")
        if folder is None:
            return None
        return str(folder) if location(str(folder)).is_url else Path(folder)
