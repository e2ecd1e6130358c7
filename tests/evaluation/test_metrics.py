"""Height metrics: equal to direct NumPy, streaming/merging invariance, classes, NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xchm.errors import InputError
from xchm.evaluation.metrics import (
    DEFAULT_CLASSES,
    HistogramAccumulator,
    MetricAccumulator,
    height_metrics,
)

KEYS = ("mae", "rmse", "bias", "r2", "pearson_r2")


def direct(pred, ref):
    """The textbook formulas on the finite pixels (two-pass, float64)."""
    p, r = np.asarray(pred, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    keep = np.isfinite(p) & np.isfinite(r)
    p, r = p[keep], r[keep]
    e = p - r
    return {
        "mae": np.abs(e).mean(),
        "rmse": np.sqrt((e**2).mean()),
        "bias": e.mean(),
        "r2": 1 - (e**2).sum() / ((r - r.mean()) ** 2).sum(),
        "pearson_r2": np.corrcoef(p, r)[0, 1] ** 2,
        "n_pixels": p.size,
    }


def assert_metrics_equal(got, want, rtol=1e-10):
    assert got["n_pixels"] == want["n_pixels"]
    for key in KEYS:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=1e-12, err_msg=key)


def same(a, b):
    """Equal dicts, NaN equal to NaN."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    ref = rng.gamma(2.0, 5.0, (7, 32, 32)).astype("float32")
    pred = (0.8 * ref + 2 + rng.normal(0, 2, ref.shape)).astype("float32")
    ref[0, :4] = np.nan
    pred[1, :, :3] = np.nan
    return pred, ref


def test_height_metrics__equals_direct_numpy(data):
    pred, ref = data
    m = height_metrics(pred, ref)
    assert_metrics_equal(m, direct(pred, ref))
    assert set(m) == {*KEYS, "n_pixels", "classes"}


def test_height_metrics__classes_equal_direct_numpy_by_reference_height(data):
    pred, ref = data
    rows = height_metrics(pred, ref)["classes"]
    assert [r["class"] for r in rows] == ["0-2", "2-5", "5-10", "10-20", "20+"]
    for row, (lo, hi) in zip(rows, DEFAULT_CLASSES, strict=True):
        inside = (ref >= lo) & (ref < hi)
        assert (row["lo"], row["hi"]) == (lo, hi)
        assert_metrics_equal(row, direct(pred[inside], ref[inside]))


def test_height_metrics__class_follows_reference_not_prediction():
    ref = np.array([1.0, 1.5, 30.0])
    pred = np.array([25.0, 1.0, 3.0])  # the tall prediction is a short tree
    rows = {r["class"]: r for r in height_metrics(pred, ref)["classes"]}
    assert rows["0-2"]["n_pixels"] == 2 and rows["20+"]["n_pixels"] == 1
    assert rows["20+"]["bias"] == -27.0
    assert rows["5-10"]["n_pixels"] == 0


def test_height_metrics__r2_differs_from_pearson_on_biased_prediction():
    ref = np.linspace(0, 30, 200)
    m = height_metrics(2 * ref + 1, ref)
    assert m["pearson_r2"] == pytest.approx(1.0)
    assert m["r2"] < 0.5
    assert m["r2"] == pytest.approx(direct(2 * ref + 1, ref)["r2"])


def test_height_metrics__nan_and_inf_excluded():
    ref = np.array([1.0, np.nan, 3.0, 4.0, 5.0])
    pred = np.array([1.5, 2.0, np.inf, 4.0, 6.0])
    m = height_metrics(pred, ref)
    assert m["n_pixels"] == 3
    assert_metrics_equal(m, direct([1.5, 4.0, 6.0], [1.0, 4.0, 5.0]))


def test_height_metrics__empty_gives_nan_without_warning():
    m = height_metrics(np.array([np.nan, 1.0]), np.array([2.0, np.nan]))  # warnings are errors
    assert m["n_pixels"] == 0
    assert all(math.isnan(m[k]) for k in KEYS)
    assert all(row["n_pixels"] == 0 and math.isnan(row["mae"]) for row in m["classes"])


def test_height_metrics__constant_reference_r2_nan():
    m = height_metrics(np.array([1.0, 2.0, 3.0]), np.full(3, 2.1))
    assert math.isnan(m["r2"]) and math.isnan(m["pearson_r2"])
    assert m["mae"] == pytest.approx(2.1 / 3, rel=1e-12)


def test_height_metrics__shape_mismatch_raises():
    with pytest.raises(InputError, match="same shape"):
        height_metrics(np.zeros(3), np.zeros(4))


def test_metric_accumulator__bad_classes_raise_at_once():
    with pytest.raises(InputError, match=r"\(5, 2\).*'x'"):
        MetricAccumulator(classes=((0, 2), (5, 2), "x"))


# Dyadic heights (multiples of 1/8 m up to 60 m): every sum is exact in float64, so any
# batching and merging order must give bit-identical metrics.
heights = st.one_of(st.integers(0, 480).map(lambda k: k / 8), st.just(math.nan))
pixels = st.lists(st.tuples(heights, heights), max_size=40)


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(pixels, max_size=6), data=st.data())
def test_metric_accumulator__any_batching_and_merging_equals_all_data(batches, data):
    flat = [px for batch in batches for px in batch]
    pred = np.array([p for p, _ in flat], dtype=np.float64)
    ref = np.array([r for _, r in flat], dtype=np.float64)
    want = height_metrics(pred, ref)
    parts = []
    for batch in batches:
        acc = MetricAccumulator()
        if batch:
            acc.update(np.array([p for p, _ in batch]), np.array([r for _, r in batch]))
        parts.append(acc)
    order = data.draw(st.permutations(range(len(parts))))
    total = MetricAccumulator()
    for i in order:  # merge in any order, some via the array form
        part = parts[i]
        if data.draw(st.booleans()):
            part = MetricAccumulator.from_array(part.to_array())
        total.merge(part)
    assert same(total.result(), want)


def test_metric_accumulator__float_batches_equal_all_data(data):
    pred, ref = data
    acc = MetricAccumulator()
    for k in range(len(pred)):
        acc.update(pred[k], ref[k])
    want = height_metrics(pred, ref)
    got = acc.result()
    assert_metrics_equal(got, want, rtol=1e-9)
    for g, w in zip(got["classes"], want["classes"], strict=True):
        assert_metrics_equal(g, w, rtol=1e-9)


def test_metric_accumulator__array_round_trip(data):
    pred, ref = data
    classes = ((0, 10), (10, math.inf))
    acc = MetricAccumulator(classes=classes)
    acc.update(pred, ref)
    array = acc.to_array()
    assert array.dtype == np.float64 and array.shape == (27,)
    back = MetricAccumulator.from_array(array, classes=classes)
    assert same(back.result(), acc.result())
    with pytest.raises(InputError, match="expected 54 sums"):
        MetricAccumulator.from_array(array)


def test_metric_accumulator__merge_rejects_other_classes():
    with pytest.raises(InputError, match="different classes"):
        MetricAccumulator().merge(MetricAccumulator(classes=((0, 1),)))


def test_histogram_accumulator__counts_clip_and_merge():
    h = HistogramAccumulator(max_height=10, bin_size=0.5)
    assert h.counts.shape == (20, 20) and h.edges[-1] == 10
    h.update(np.array([0.2, 3.1, 99.0, -1.0, np.nan]), np.array([0.3, 3.4, 5.0, 1.0, 2.0]))
    assert h.counts.sum() == 4
    assert h.counts[0, 0] == 1 and h.counts[6, 6] == 1
    assert h.counts[10, 19] == 1  # pred beyond the range -> last bin
    assert h.counts[2, 0] == 1  # negative pred -> first bin
    back = HistogramAccumulator.from_array(h.to_array(), max_height=10, bin_size=0.5)
    assert back.merge(h).counts.sum() == 8
