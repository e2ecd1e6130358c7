"""Accuracy metrics of canopy height predictions: pure NumPy, streaming and mergeable.

Everything here works on sufficient statistics: per group of pixels (all pixels,
then each height class) nine float64 sums, ``n``, ``sum p``, ``sum r``,
``sum p^2``, ``sum r^2``, ``sum p*r``, ``sum (p - r)``, ``sum |p - r|`` and
``sum (p - r)^2``. Batches, Dask blocks, scenes and DDP ranks each fill their own
:class:`MetricAccumulator`; adding the sums (:meth:`~MetricAccumulator.merge`, or
``torch.distributed.all_reduce`` on :meth:`~MetricAccumulator.to_array`) gives the
metrics of all the data, equal to :func:`height_metrics` on the concatenated
pixels up to float rounding. Errors are summed directly (not derived from the
power sums), so MAE, RMSE, bias and R2 stay accurate however close the prediction
is; the variances in R2 and Pearson r squared come from power sums, which is exact
enough for heights in metres (variance not tiny compared with the squared mean).

Two "R2"s, both reported:

``r2``
    The coefficient of determination, ``1 - SS_res / SS_tot`` with
    ``SS_res = sum (p - r)^2`` and ``SS_tot = sum (r - mean r)^2``: the share of the
    reference's variance the prediction explains. Any bias or wrong scale lowers it;
    it is negative when the prediction is worse than predicting the mean.
``pearson_r2``
    The squared Pearson correlation of prediction and reference: how well a
    straight line through the predictions would fit. It ignores bias and scale
    (``p = 2 r + 1`` has ``pearson_r2 = 1``). The reference project reported this
    number as "R2" (0.728); compare like with like.

Height classes group pixels by the **reference** (lidar) height ``r``, as
``lo <= r < hi``, never by the prediction: a class then holds the same pixels for
every model, and under- or over-estimation of tall trees shows up as the bias of
the tall classes. Pixels with a negative reference height fall in no default
class (they still count in the overall metrics).

Empty data, or a class without pixels, give NaN metrics and ``n_pixels`` 0 (no
warnings); ``r2`` is NaN when the reference is constant, ``pearson_r2`` when
either side is ("constant": a spread below about 1e-6 of the values' RMS, which is
float32 rounding noise, not signal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from xchm.errors import InputError

__all__ = [
    "DEFAULT_CLASSES",
    "HistogramAccumulator",
    "MetricAccumulator",
    "class_label",
    "height_metrics",
]

#: Default height classes in metres, by reference height: ``lo <= ref < hi``.
DEFAULT_CLASSES: tuple[tuple[float, float], ...] = (
    (0.0, 2.0),
    (2.0, 5.0),
    (5.0, 10.0),
    (10.0, 20.0),
    (20.0, math.inf),
)

_SUMS = ("n", "p", "r", "pp", "rr", "pr", "e", "ae", "ee")
_N, _P, _R, _PP, _RR, _PR, _E, _AE, _EE = range(len(_SUMS))
# A variance below this share of the sum of squares is float noise: treated as zero.
_DEGENERATE = 1e-12

Classes = Sequence[tuple[float, float]]


def class_label(lo: float, hi: float) -> str:
    """Name a height class: ``"0-2"``, or ``"20+"`` for an open upper end.

    Examples
    --------
    >>> class_label(0, 2), class_label(2.5, 5), class_label(20, float("inf"))
    ('0-2', '2.5-5', '20+')
    """
    return f"{lo:g}+" if math.isinf(hi) else f"{lo:g}-{hi:g}"


def _check_classes(classes: Classes) -> tuple[tuple[float, float], ...]:
    out, problems = [], []
    for item in classes:
        try:
            lo, hi = (float(v) for v in item)
        except (TypeError, ValueError):
            problems.append(f"{item!r} is not a (lo, hi) pair of numbers")
            continue
        if not lo < hi or math.isnan(lo) or math.isnan(hi):
            problems.append(f"({lo:g}, {hi:g}) needs lo < hi")
        out.append((lo, hi))
    if problems:
        raise InputError(
            "classes must be (lo, hi) height ranges in metres such as ((0, 2), (2, 5), "
            "(5, math.inf)): " + "; ".join(problems)
        )
    return tuple(out)


def _pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flatten to float64 and keep pixels finite on both sides."""
    p = np.asarray(pred, dtype=np.float64).ravel()
    r = np.asarray(ref, dtype=np.float64).ravel()
    if np.shape(pred) != np.shape(ref):
        raise InputError(
            f"pred and ref must have the same shape, got {np.shape(pred)} and {np.shape(ref)}"
        )
    keep = np.isfinite(p) & np.isfinite(r)
    if keep.all():
        return p, r
    return p[keep], r[keep]


def _sums(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    e = p - r
    return np.array(
        [
            p.size,
            p.sum(),
            r.sum(),
            np.dot(p, p),
            np.dot(r, r),
            np.dot(p, r),
            e.sum(),
            np.abs(e).sum(),
            np.dot(e, e),
        ],
        dtype=np.float64,
    )


def _metrics(s: np.ndarray) -> dict[str, Any]:
    """Metrics from one group's nine sums."""
    n = float(s[_N])
    nan = math.nan
    if n <= 0:
        return {"mae": nan, "rmse": nan, "bias": nan, "r2": nan, "pearson_r2": nan, "n_pixels": 0}
    ss_tot = s[_RR] - s[_R] * s[_R] / n
    ss_pred = s[_PP] - s[_P] * s[_P] / n
    ref_varies = ss_tot > _DEGENERATE * s[_RR]
    pred_varies = ss_pred > _DEGENERATE * s[_PP]
    r2 = 1.0 - s[_EE] / ss_tot if ref_varies else nan
    if ref_varies and pred_varies:
        cov = s[_PR] - s[_P] * s[_R] / n
        pearson = min(max(cov * cov / (ss_tot * ss_pred), 0.0), 1.0)
    else:
        pearson = nan
    return {
        "mae": float(s[_AE] / n),
        "rmse": math.sqrt(max(float(s[_EE]), 0.0) / n),
        "bias": float(s[_E] / n),
        "r2": float(r2),
        "pearson_r2": float(pearson),
        "n_pixels": int(n),
    }


class MetricAccumulator:
    """Streaming height metrics: overall and by reference height class.

    Parameters
    ----------
    classes
        ``(lo, hi)`` height ranges in metres; a pixel belongs to a class when
        ``lo <= ref < hi`` (by the reference height, see the module notes).

    Notes
    -----
    Holds ``9 * (1 + len(classes))`` float64 numbers whatever the data size;
    :meth:`update` makes a few temporary float64 copies of one batch.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.array([[1.0, 4.0], [8.0, np.nan]])
    >>> acc = MetricAccumulator()
    >>> acc.update(ref + 1, ref)
    >>> acc.update(np.array([30.0]), np.array([25.0]))
    >>> m = acc.result()
    >>> m["n_pixels"], m["bias"], m["classes"][4]["class"], m["classes"][4]["mae"]
    (4, 2.0, '20+', 5.0)
    >>> both = MetricAccumulator.from_array(acc.to_array()).merge(acc)
    >>> both.result()["n_pixels"]
    8
    """

    def __init__(self, *, classes: Classes = DEFAULT_CLASSES) -> None:
        self.classes = _check_classes(classes)
        self.sums = np.zeros((1 + len(self.classes), len(_SUMS)), dtype=np.float64)

    def __repr__(self) -> str:
        return f"<MetricAccumulator: {int(self.sums[0, _N])} pixels, {len(self.classes)} classes>"

    @property
    def n_pixels(self) -> int:
        """Pixels accumulated so far (finite on both sides)."""
        return int(self.sums[0, _N])

    @property
    def mean_ref(self) -> float:
        """Mean reference height of the pixels so far (NaN if none)."""
        n = self.sums[0, _N]
        return float(self.sums[0, _R] / n) if n > 0 else math.nan

    def update(self, pred: Any, ref: Any) -> None:
        """Add a batch: arrays of one shape (metres); pixels NaN on either side are skipped."""
        p, r = _pair(pred, ref)
        if p.size == 0:
            return
        total = _sums(p, r)
        self.sums[0] += total
        for k, (lo, hi) in enumerate(self.classes, start=1):
            inside = (r >= lo) & (r < hi)
            if inside.all():
                self.sums[k] += total
            elif inside.any():
                self.sums[k] += _sums(p[inside], r[inside])

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """Add ``other``'s sums to this accumulator (same classes); returns ``self``."""
        if other.classes != self.classes:
            raise InputError(
                f"cannot merge accumulators with different classes: {self.classes} and "
                f"{other.classes}"
            )
        self.sums += other.sums
        return self

    def to_array(self) -> np.ndarray:
        """All sums as one float64 vector, e.g. for ``torch.distributed.all_reduce`` (SUM).

        Examples
        --------
        >>> MetricAccumulator().to_array().shape
        (54,)
        """
        return self.sums.ravel().copy()

    @classmethod
    def from_array(cls, array: Any, *, classes: Classes = DEFAULT_CLASSES) -> MetricAccumulator:
        """Rebuild an accumulator from :meth:`to_array`'s vector (and the same classes)."""
        acc = cls(classes=classes)
        values = np.asarray(array, dtype=np.float64).ravel()
        if values.size != acc.sums.size:
            raise InputError(
                f"expected {acc.sums.size} sums for {len(acc.classes)} classes, got {values.size}"
            )
        acc.sums = values.reshape(acc.sums.shape).copy()
        return acc

    def result(self) -> dict[str, Any]:
        """Metrics so far: the same dict as :func:`height_metrics`."""
        out = _metrics(self.sums[0])
        rows = []
        for k, (lo, hi) in enumerate(self.classes, start=1):
            rows.append(
                {"class": class_label(lo, hi), "lo": lo, "hi": hi, **_metrics(self.sums[k])}
            )
        out["classes"] = rows
        return out


def height_metrics(pred: Any, ref: Any, *, classes: Classes = DEFAULT_CLASSES) -> dict[str, Any]:
    """Accuracy of predicted against reference canopy heights, overall and by height class.

    Parameters
    ----------
    pred, ref
        Predicted and reference heights in metres, arrays of the same shape. Pixels
        that are not finite in either are left out.
    classes
        ``(lo, hi)`` reference height ranges (``lo <= ref < hi``), default 0-2, 2-5,
        5-10, 10-20 and 20+ m.

    Returns
    -------
    dict
        ``mae``, ``rmse``, ``bias`` (mean of pred - ref), ``r2`` (coefficient of
        determination, ``1 - SS_res/SS_tot``), ``pearson_r2`` (squared Pearson
        correlation; the reference's "R2"), ``n_pixels``, and ``classes``: one dict
        per class with ``class`` (e.g. ``"0-2"``), ``lo``, ``hi`` and the same
        metrics. NaN where undefined (no pixels, constant reference).

    Notes
    -----
    Eager: holds a few float64 copies of the input. For data that do not fit in
    memory use :class:`MetricAccumulator` batch by batch.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.array([1.0, 3.0, 6.0, 12.0, 25.0])
    >>> m = height_metrics(2 * ref + 1, ref)
    >>> m["pearson_r2"], m["r2"] < 0, m["bias"]
    (1.0, True, 10.4)
    >>> [row["n_pixels"] for row in m["classes"]]
    [1, 1, 1, 1, 1]
    """
    acc = MetricAccumulator(classes=classes)
    acc.update(pred, ref)
    return acc.result()


class HistogramAccumulator:
    """2-D histogram of (reference, predicted) heights for density plots.

    Square bins of ``bin_size`` metres from 0 to ``max_height``; values beyond the
    range are counted in the first or last bin, so the counts add up to every
    pixel that is finite on both sides.

    Parameters
    ----------
    max_height
        Upper edge of the last bin, metres.
    bin_size
        Bin width, metres.

    Examples
    --------
    >>> import numpy as np
    >>> h = HistogramAccumulator(max_height=4, bin_size=1)
    >>> h.update(np.array([0.5, 2.5, 9.0]), np.array([0.2, 2.0, np.nan]))
    >>> h.counts.sum(), h.counts[2, 2]
    (np.int64(2), np.int64(1))
    """

    def __init__(self, *, max_height: float = 60.0, bin_size: float = 0.5) -> None:
        if not (bin_size > 0 and max_height > 0 and math.isfinite(max_height)):
            raise InputError(
                f"need max_height > 0 (finite) and bin_size > 0, got {max_height}, {bin_size}"
            )
        self.max_height = float(max_height)
        self.bin_size = float(bin_size)
        self.bins = max(1, math.ceil(self.max_height / self.bin_size - 1e-9))
        self.counts = np.zeros((self.bins, self.bins), dtype=np.int64)

    @property
    def edges(self) -> np.ndarray:
        """Bin edges in metres (``bins + 1`` values)."""
        return np.arange(self.bins + 1) * self.bin_size

    def update(self, pred: Any, ref: Any) -> None:
        """Count a batch; ``counts[i, j]`` holds pixels with ref in bin i and pred in bin j."""
        p, r = _pair(pred, ref)
        if p.size == 0:
            return
        i = np.clip((r / self.bin_size).astype(np.int64), 0, self.bins - 1)
        j = np.clip((p / self.bin_size).astype(np.int64), 0, self.bins - 1)
        flat = np.bincount(i * self.bins + j, minlength=self.bins * self.bins)
        self.counts += flat.reshape(self.bins, self.bins)

    def merge(self, other: HistogramAccumulator) -> HistogramAccumulator:
        """Add ``other``'s counts (same bins); returns ``self``."""
        if (other.bins, other.bin_size) != (self.bins, self.bin_size):
            raise InputError("cannot merge histograms with different bins")
        self.counts += other.counts
        return self

    def to_array(self) -> np.ndarray:
        """Return the counts as a flat int64 vector (for ``all_reduce``)."""
        return self.counts.ravel().copy()

    @classmethod
    def from_array(
        cls, array: Any, *, max_height: float = 60.0, bin_size: float = 0.5
    ) -> HistogramAccumulator:
        """Rebuild from :meth:`to_array`'s vector and the same bins."""
        hist = cls(max_height=max_height, bin_size=bin_size)
        values = np.asarray(array).ravel()
        if values.size != hist.counts.size:
            raise InputError(f"expected {hist.counts.size} counts, got {values.size}")
        hist.counts = np.rint(values).astype(np.int64).reshape(hist.counts.shape)
        return hist
