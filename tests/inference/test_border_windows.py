"""Border windows that predict leaves out, all-nodata windows it skips and reports."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import xchm
from xchm.errors import InputError
from xchm.inference.kernel import _static_batch
from xchm.inference.runtime import compile_mode
from xchm.inference.telemetry import collect
from xchm.inference.windows import BORDER_WEIGHT, blend_weights, scene_origins, window_span

from .conftest import make_image


@given(size=st.integers(64, 600), window=st.sampled_from([16, 64, 256]), data=st.data())
def test_scene_origins__cover_every_pixel_and_leave_out_only_negligible_windows(size, window, data):
    stride = data.draw(st.integers(max(1, window // 8), window))
    size = max(size, window)
    first, last = scene_origins(size, window, stride)
    weights = blend_weights(window)[window // 2].astype(np.float64)  # the 1-D profile (x peak)
    weights /= weights.max()
    cover = np.zeros(size)
    for origin in range(first, last + 1, stride):
        lo, hi = max(origin, 0), min(origin + window, size)
        assert hi > lo  # every window run touches the scene
        cover[lo:hi] += weights[lo - origin : hi - origin]
    assert cover.min() > 0  # every pixel is covered by a window run
    lattice = window_span(0, size, window, stride)
    assert first % stride == 0 and last % stride == 0
    assert lattice.first <= first and last <= lattice.first + (lattice.count - 1) * stride
    for origin in list(range(lattice.first, first, stride)) + list(
        range(last + stride, lattice.first + lattice.count * stride, stride)
    ):
        lo, hi = max(origin, 0), min(origin + window, size)
        assert weights[lo - origin : hi - origin].max() < BORDER_WEIGHT + 1e-6


def test_scene_origins__cut_a_window_over_two_pixels_only():
    """1010 px at stride 48: the lattice window at 1008 covers 2 px; 1024: 16 px, kept."""
    assert scene_origins(1010, 64, 48) == (-48, 960)
    assert scene_origins(1024, 64, 48) == (-48, 1008)
    assert window_span(960, 1010, 64, 48, size=1010).count == 2  # 912, 960 (not 1008)
    assert window_span(960, 1010, 64, 48).count == 3


def test_predict__runs_fewer_windows_where_the_border_is_cut(model):
    """146 px, stride 48: the window at 144 covers 2 px; the map still has every pixel."""
    image = make_image(146, 146)
    with collect() as tally:
        chm = xchm.predict(image, model)
    assert tally["windows"] == window_span(0, 146, 64, 48, size=146).count ** 2 == 16
    assert window_span(0, 146, 64, 48).count ** 2 == 25
    assert np.isfinite(chm.values).all()


def test_predict__reports_all_nodata_windows_skipped(model):
    image = make_image(160, 160)
    data = image.values.copy()
    data[:, :100, :] = 0  # windows wholly in rows < 100 have no valid pixel
    image = image.copy(data=data)
    with collect() as full:
        xchm.predict(image, model, nodata=None)
    with collect() as holed:
        chm = xchm.predict(image, model, nodata=0)
    assert np.isnan(chm.values[:100]).all() and np.isfinite(chm.values[100:]).all()
    # Rows of windows at origins -48 and 0 (< 100 - 64 + 1 = 37) see no valid pixel.
    per_row = window_span(0, 160, 64, 48, size=160).count
    assert holed["windows_skipped"] == 2 * per_row
    assert holed["windows"] + holed["windows_skipped"] == full["windows"]
    assert full["windows_skipped"] == 0


def test_predict__a_wholly_nodata_chunk_counts_its_windows_as_skipped(model):
    image = make_image(192, 192)
    data = image.values.copy()
    data[:, :96, :] = 0
    image = image.copy(data=data).chunk({"y": 96, "x": 192})
    with collect() as tally:
        xchm.predict(image, model, nodata=0).compute()
    assert tally["windows_skipped"] >= window_span(0, 96, 64, 48, size=192).count * 4


def test_compile_mode__names_the_modes():
    assert compile_mode(False) is None and compile_mode(None) is None
    assert compile_mode(True) == "default"
    assert compile_mode("reduce-overhead") == "reduce-overhead"
    for bad in ("fast", 1, "cuda-graphs"):
        with pytest.raises(InputError, match="reduce-overhead"):
            compile_mode(bad)


def test_predict__bad_compile_is_an_input_error(model):
    with pytest.raises(InputError, match="compile must be"):
        xchm.predict(make_image(64, 64), model, compile="turbo")


def test_static_batch__pads_to_a_multiple_of_32_within_the_batch():
    import torch

    x = torch.arange(5.0).view(5, 1, 1, 1)
    padded = _static_batch(x, 512)
    assert padded.shape[0] == 32 and torch.equal(padded[:5], x)
    assert _static_batch(torch.zeros(40, 1, 1, 1), 512).shape[0] == 64
    assert _static_batch(torch.zeros(5, 1, 1, 1), 16).shape[0] == 16
    assert _static_batch(torch.zeros(16, 1, 1, 1), 16).shape[0] == 16
