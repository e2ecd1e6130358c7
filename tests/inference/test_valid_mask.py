"""The one nodata rule: a pixel is valid when every band is finite and not nodata."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xchm.inference.kernel import valid_mask

values = st.sampled_from([0.0, 1.0, 255.0, np.nan, np.inf, -np.inf])


@settings(max_examples=60, deadline=None)
@given(
    block=hnp.arrays(
        np.float32, hnp.array_shapes(min_dims=3, max_dims=4, max_side=4), elements=values
    ),
    nodata=st.sampled_from([None, 0.0, 255.0, np.nan]),
    data=st.data(),
)
def test_valid_mask__matches_the_rule_pixel_by_pixel(block, nodata, data):
    axis = data.draw(st.integers(0, block.ndim - 1))
    got = valid_mask(block, nodata, axis=axis)
    bands = np.moveaxis(block, axis, -1)
    assert got.shape == bands.shape[:-1]
    for index in np.ndindex(got.shape):
        pixel = bands[index]
        expected = all(
            np.isfinite(v) and (nodata is None or np.isnan(nodata) or v != nodata) for v in pixel
        )
        assert got[index] == expected, (index, pixel, nodata)


def test_valid_mask__integers_compare_with_nodata_only():
    block = np.array([[[0, 5]], [[7, 0]]], dtype=np.uint16)  # (band, y, x)
    assert valid_mask(block, 0).tolist() == [[False, False]]
    assert valid_mask(block, None).tolist() == [[True, True]]
    assert valid_mask(block, 5).tolist() == [[True, False]]
