import pytest
from hypothesis import given
from hypothesis import strategies as st

from xchm.errors import BandError
from xchm.models.bands import DEFAULT_FILTER, normalize_bands, resolve_band_map


def test_resolve_band_map__default_reference_bands():
    assert resolve_band_map(("nir", "red", "green")) == (0, 0, 1)


def test_resolve_band_map__reference_quirk():
    assert resolve_band_map(("nir", "red", "green"), "reference") == (2, 2, 1)


def test_resolve_band_map__rgb_is_identity():
    assert resolve_band_map(("red", "green", "blue")) == (0, 1, 2)


def test_resolve_band_map__four_bands_in_sensor_order():
    assert resolve_band_map(("blue", "green", "red", "nir")) == (2, 1, 0, 0)


def test_resolve_band_map__mapping_overrides_only_named_bands():
    assert resolve_band_map(("nir", "red", "green"), {"NIR": "green"}) == (1, 0, 1)


def test_resolve_band_map__sequence_of_names_and_indices():
    assert resolve_band_map(("nir", "red", "green"), ["blue", 0, "green"]) == (2, 0, 1)


def test_resolve_band_map__reports_every_problem_at_once():
    with pytest.raises(BandError) as info:
        resolve_band_map(("swir16", "nir", "lwir"), {"nir": "purple", "tir": 0})
    message = str(info.value)
    for fragment in ("swir16", "lwir", "purple", "tir"):
        assert fragment in message


def test_resolve_band_map__wrong_length_sequence():
    with pytest.raises(BandError, match="one filter per band"):
        resolve_band_map(("nir", "red", "green"), (0, 0))


def test_resolve_band_map__unknown_string():
    with pytest.raises(BandError, match="reference"):
        resolve_band_map(("nir", "red", "green"), "bgr")


def test_normalize_bands__aliases_and_case():
    assert normalize_bands(["Near-Infrared", "R", "Green"]) == ("nir", "red", "green")


@pytest.mark.parametrize("bands", [[], ["red", "RED"], "red", [3]])
def test_normalize_bands__rejects_bad_lists(bands):
    with pytest.raises(BandError):
        normalize_bands(bands)


@given(st.lists(st.sampled_from(sorted(DEFAULT_FILTER)), min_size=1, max_size=6, unique=True))
def test_resolve_band_map__reference_is_red_blue_swap_of_default(bands):
    default = resolve_band_map(bands)
    quirk = resolve_band_map(bands, "reference")
    assert quirk == tuple({0: 2, 2: 0}.get(i, i) for i in default)
    assert all(i in (0, 1, 2) for i in default)
