import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from xchm.inference.windows import blend_weights, window_span


@given(
    start=st.integers(-500, 500),
    length=st.integers(1, 400),
    window=st.sampled_from([16, 32, 64]),
    data=st.data(),
)
def test_window_span__exactly_the_windows_touching_the_range(start, length, window, data):
    stride = data.draw(st.integers(1, window))
    stop = start + length
    span = window_span(start, stop, window, stride)
    origins = span.first + stride * np.arange(span.count)
    assert span.first % stride == 0  # tied to the global lattice
    touching = [
        o
        for o in range(start - window - stride, stop + stride)
        if o % stride == 0 and o < stop and o + window > start
    ]
    assert list(origins) == touching
    covered = np.zeros(length, bool)
    for o in origins:
        covered[max(o, start) - start : min(o + window, stop) - start] = True
    assert covered.all()


def test_blend_weights__positive_symmetric_peaked():
    w = blend_weights(64)
    assert w.shape == (64, 64) and w.dtype == np.float32
    assert (w > 0).all()
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    np.testing.assert_array_equal(w, w.T)
    assert w[31, 31] == w.max() and w[0, 0] < 1e-5
