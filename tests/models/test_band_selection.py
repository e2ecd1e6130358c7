"""xchm.models.bands.select_bands / parse_bands: the one band selection of xchm."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xchm.errors import BandError
from xchm.models.bands import SENSOR_LAYOUTS, BandSelection, parse_bands, select_bands

MODEL = ("nir", "red", "green")


# -- parse_bands: the one string syntax ------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nir=4,red=3,green=2", {"nir": 4, "red": 3, "green": 2}),
        (" NIR = 4 , Red=3 ", {"nir": 4, "red": 3}),
        ("nir=NIR,red=Band 1", {"nir": "NIR", "red": "Band 1"}),
        ("nir,red,green", ("nir", "red", "green")),
        ("Near-Infrared,R,G", ("nir", "red", "green")),
        ("naip-rgbn", ("red", "green", "blue", "nir")),
        ("WorldView-BGRN", ("blue", "green", "red", "nir")),
    ],
)
def test_parse_bands__accepts_the_documented_forms(text, expected):
    assert parse_bands(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("nir,,red", "empty item"),
        ("nir=4,red", "'red' is not NAME=BAND"),
        ("nir:4,red=3", "'nir:4' is not NAME=BAND"),
        ("nir=", "has no band"),
        ("nir=4,NIR=3", "names 'nir' twice"),
        ("nir,red,nir", "repeat"),
        ("4=nir", "'4' is not a band name"),
        ("worldview-bgr", "not a known sensor layout .did you mean 'worldview-bgrn'"),
    ],
)
def test_parse_bands__bad_syntax_is_one_line_naming_the_problem(text, match):
    with pytest.raises(BandError, match=match) as info:
        parse_bands(text)
    assert "\n" not in str(info.value)


def test_sensor_layouts__names_that_spell_an_order_hold_that_order():
    for name, bands in SENSOR_LAYOUTS.items():
        assert len(set(bands)) == len(bands), name
        suffix = name.rsplit("-", 1)[-1]
        if suffix in ("rgb", "rgbn", "bgrn"):
            assert "".join(b[0] for b in bands) == suffix, name
    assert SENSOR_LAYOUTS["planetscope-8band"][3] == "green"  # Planet's green is band 4


# -- select_bands ----------------------------------------------------------------------
def test_select_bands__numbers_count_from_one_without_a_coordinate():
    assert select_bands(4, {"nir": 4, "red": 1}) == BandSelection(("nir", "red"), (3, 0))


def test_select_bands__numbers_follow_an_integer_band_coordinate():
    # rioxarray keeps GDAL's band numbers in the coordinate, also after a selection.
    chosen = select_bands(3, {"nir": 4, "red": 3, "green": 2}, numbers=[4, 3, 2])
    assert chosen.positions == (0, 1, 2)


def test_select_bands__names_from_the_source_in_model_order():
    chosen = select_bands(3, names=["Green", None, "NIR"], expected=("nir", "green"))
    assert chosen == BandSelection(("nir", "green"), (2, 0))


def test_select_bands__mapping_overrides_some_bands_others_by_name():
    chosen = select_bands(3, {"red": 2}, names=["nir", "x", "green"], expected=MODEL)
    assert chosen.positions == (0, 1, 2)


def test_select_bands__a_layout_names_every_band():
    assert select_bands(4, "naip-rgbn", expected=MODEL).positions == (3, 0, 1)
    assert select_bands(4, "worldview-bgrn", expected=MODEL).positions == (3, 2, 1)


@pytest.mark.parametrize(
    ("count", "bands", "kwargs", "match"),
    [
        (3, {"nir": 4}, {}, "'nir' <- band 4: there is no band 4"),
        (3, {"nir": 0}, {}, "no band 0 .band numbers count from 1"),
        (3, {"nir": -1}, {}, "no band -1"),
        (3, {"nir": 1}, {"numbers": [0, 1, 2]}, r"band coordinate is \[0, 1, 2\].*ambiguous"),
        (3, {"nir": "NIR"}, {}, "'nir' <- 'NIR': no band is called that"),
        (3, {"nir": "red"}, {"names": ["red", "Red", "g"]}, "several bands are called"),
        (3, {"nir": 1, "red": 1}, {}, "band 1 is chosen for 'nir', 'red'"),
        (3, ("nir", "red"), {}, "has 3 bands but bands=nir,red names 2"),
        (3, ("nir", "red", "nir"), {}, "repeat"),
        (3, None, {}, "3 bands without names"),
        (3, None, {"names": ["a", "b", "c"], "expected": MODEL}, "'nir' is missing"),
        (3, None, {"names": ["nir", "Nir", "c"], "expected": MODEL}, "'nir' is ambiguous"),
        (3, {"swir": 1}, {"expected": MODEL}, "the model does not use"),
        (3, {"nir": 1.5}, {}, "expected a band number"),
    ],
)
def test_select_bands__errors_name_the_problem_in_one_line(count, bands, kwargs, match):
    with pytest.raises(BandError, match=match) as info:
        select_bands(count, bands, where="image 'a.tif'", **kwargs)
    assert "\n" not in str(info.value)


def test_select_bands__every_problem_at_once():
    with pytest.raises(BandError) as info:
        select_bands(3, {"nir": 9, "red": "RED", "green": 0})
    message = str(info.value)
    assert "no band 9" in message and "'RED'" in message and "no band 0" in message


# -- invariants ------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(st.permutations(range(5)), st.integers(1, 5))
def test_select_bands__numbers_string_and_mapping_agree(order, size):
    """'a=3,b=1' picks bands 3 and 1 (positions 2, 0) whatever the source's names."""
    names = [f"b{i}" for i in range(size)]
    numbers = [p + 1 for p in order[:size]]
    text = ",".join(f"{n}={k}" for n, k in zip(names, numbers, strict=True))
    by_text = select_bands(5, text, names=["x1", "x2", "x3", "x4", "x5"])
    by_map = select_bands(5, dict(zip(names, numbers, strict=True)))
    assert by_text == by_map == BandSelection(tuple(names), tuple(order[:size]))


@settings(max_examples=50, deadline=None)
@given(st.permutations(MODEL + ("blue", "rededge")))
def test_select_bands__named_sources_give_the_model_order(source):
    chosen = select_bands(len(source), names=list(source), expected=MODEL)
    assert [source[i] for i in chosen.positions] == list(MODEL)
    # The same file described by a layout-like list of names picks the same bands.
    assert select_bands(len(source), source, expected=MODEL) == chosen
