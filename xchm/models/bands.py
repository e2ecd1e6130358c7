"""Band names and the mapping of input bands onto a pretrained RGB patch embedding.

DINOv3 backbones are pretrained on 3-channel RGB images. A canopy height model
usually sees other bands (the reference uses NIR, red, green), so the first
convolution (the patch embedding) is rebuilt with one input channel per band,
each a copy of one pretrained colour filter. Which filter each band gets is the
*band map*: a tuple of filter indices (0 = red, 1 = green, 2 = blue), one per band.

The reference project meant NIR<-red, red<-red, green<-green, but its code
assumed BGR filters and so gave NIR and red the *blue* filter: band map
``(2, 2, 1)`` for (nir, red, green). ``band_map="reference"`` reproduces that.

Which *input* band is which is decided here too, once for every reader of imagery
(predict, chip cubes and their importers, STAC): :func:`select_bands` with the
one-string syntax of ``--bands`` (:func:`parse_bands`) and the sensor layouts of
:data:`SENSOR_LAYOUTS`. Band numbers are GDAL's, from 1. This is written by hand:
rioxarray and odc-stac read band names but leave choosing and ordering bands, and
the errors that say how, to the caller. The module is in the lowest layer that every
reader imports (NumPy only, no xarray).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from xchm.errors import BandError

__all__ = [
    "RGB_FILTERS",
    "DEFAULT_FILTER",
    "REFERENCE_BANDS",
    "normalize_band_name",
    "normalize_bands",
    "resolve_band_map",
    "SENSOR_LAYOUTS",
    "BandsArg",
    "BandSelection",
    "parse_bands",
    "select_bands",
]

#: Index of each colour filter in a pretrained RGB patch embedding.
RGB_FILTERS: dict[str, int] = {"red": 0, "green": 1, "blue": 2}

#: Default pretrained filter for each known band name. Bands outside the visible
#: range borrow the nearest visible filter; the reference's intent was NIR<-red.
DEFAULT_FILTER: dict[str, int] = {
    "red": 0,
    "green": 1,
    "blue": 2,
    "nir": 0,
    "nir2": 0,
    "rededge": 0,
    "yellow": 1,
    "coastal": 2,
    "pan": 1,
}

#: Bands of the reference model, in order.
REFERENCE_BANDS: tuple[str, ...] = ("nir", "red", "green")

# Spellings seen in the wild (sensor metadata, STAC eo:bands common names).
_ALIASES = {
    "near-infrared": "nir",
    "near_infrared": "nir",
    "nearinfrared": "nir",
    "nir08": "nir",
    "nir1": "nir",
    "r": "red",
    "g": "green",
    "b": "blue",
    "red_edge": "rededge",
    "red-edge": "rededge",
    "panchromatic": "pan",
}


def normalize_band_name(name: object) -> str:
    """Return the canonical (lower-case, alias-resolved) name of one band.

    Parameters
    ----------
    name
        A band name such as ``"NIR"``, ``"Red"`` or ``"near-infrared"``.

    Returns
    -------
    str
        The canonical name, e.g. ``"nir"``.

    Raises
    ------
    BandError
        If ``name`` is not a non-empty string.

    Examples
    --------
    >>> normalize_band_name("Near-Infrared")
    'nir'
    """
    if not isinstance(name, str) or not name.strip():
        raise BandError(f"band names must be non-empty strings, got {name!r}")
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def normalize_bands(bands: Sequence[str] | str) -> tuple[str, ...]:
    """Canonicalise a band list and check it is non-empty and without repeats.

    Examples
    --------
    >>> normalize_bands(["NIR", "Red", "Green"])
    ('nir', 'red', 'green')
    """
    if isinstance(bands, str):
        raise BandError(
            f"bands must be a sequence of names such as ('nir', 'red', 'green'), got the "
            f"string {bands!r}"
        )
    names = tuple(normalize_band_name(b) for b in bands)
    if not names:
        raise BandError("bands must name at least one band, e.g. ('nir', 'red', 'green')")
    repeated = sorted({b for b in names if names.count(b) > 1})
    if repeated:
        raise BandError(f"bands {names} repeat {repeated}; each band must appear once")
    return names


def _filter_index(value: object, band: str) -> int:
    if isinstance(value, bool):
        raise BandError(f"band map entry for {band!r} must be 0/1/2 or red/green/blue")
    if isinstance(value, int) and value in (0, 1, 2):
        return value
    if isinstance(value, str) and value.strip().lower() in RGB_FILTERS:
        return RGB_FILTERS[value.strip().lower()]
    raise BandError(
        f"band map entry for {band!r} is {value!r}; expected a pretrained filter: "
        "0/'red', 1/'green' or 2/'blue'"
    )


def resolve_band_map(
    bands: Sequence[str],
    band_map: Mapping[str, int | str] | Sequence[int | str] | str | None = None,
) -> tuple[int, ...]:
    """Resolve the pretrained RGB filter index used for each band.

    Parameters
    ----------
    bands
        Canonical band names, in input order.
    band_map
        ``None`` for the defaults (:data:`DEFAULT_FILTER`); a mapping from band to
        filter (``0``/``"red"``, ``1``/``"green"``, ``2``/``"blue"``) that overrides
        the defaults for the bands it names; a sequence with one filter per band;
        or ``"reference"``, the reference project's quirk (red and blue filters
        swapped, i.e. ``(2, 2, 1)`` for nir/red/green).

    Returns
    -------
    tuple of int
        One filter index per band.

    Raises
    ------
    BandError
        Listing every band that has no default filter or a bad entry.

    Examples
    --------
    >>> resolve_band_map(("nir", "red", "green"))
    (0, 0, 1)
    >>> resolve_band_map(("nir", "red", "green"), "reference")
    (2, 2, 1)
    >>> resolve_band_map(("red", "green", "blue"))
    (0, 1, 2)
    """
    bands = normalize_bands(bands)
    if isinstance(band_map, str):
        if band_map != "reference":
            raise BandError(
                f"band_map={band_map!r} is not understood; pass 'reference', a mapping "
                "such as {'nir': 'red'} or one filter per band such as (0, 0, 1)"
            )
        swapped = resolve_band_map(bands)
        return tuple({0: 2, 2: 0}.get(i, i) for i in swapped)
    if band_map is not None and not isinstance(band_map, Mapping):
        entries = list(band_map)
        if len(entries) != len(bands):
            raise BandError(
                f"band_map has {len(entries)} entries but there are {len(bands)} bands "
                f"{bands}; give one filter per band"
            )
        return tuple(_filter_index(v, b) for v, b in zip(entries, bands, strict=True))

    overrides = {normalize_band_name(k): v for k, v in (band_map or {}).items()}
    unknown = sorted(set(overrides) - set(bands))
    problems = (
        [f"band_map names {unknown}, which are not among the bands {bands}"] if unknown else []
    )
    result = []
    for band in bands:
        if band in overrides:
            try:
                result.append(_filter_index(overrides[band], band))
            except BandError as err:
                problems.append(str(err))
        elif band in DEFAULT_FILTER:
            result.append(DEFAULT_FILTER[band])
        else:
            problems.append(
                f"band {band!r} has no default pretrained filter; pass "
                f"band_map={{{band!r}: 'red'|'green'|'blue'}}"
            )
    if problems:
        raise BandError("cannot map bands onto the pretrained RGB filters: " + "; ".join(problems))
    return tuple(result)


# -- which input band is which ---------------------------------------------------------
#
# One implementation for predict, chips, raster and STAC inputs: the band names a source
# carries (band coordinate strings, GeoTIFF descriptions), the user's ``bands=`` (names,
# a mapping to band numbers or names, a sensor layout, or the one-string syntax of the
# CLI's ``--bands``) and, for a model, the bands it expects, turned into (names,
# positions). Integer band numbers are GDAL's: 1-based, as QGIS and gdalinfo show them.

#: Band layouts of common sensors, band 1 first. Each name says its order where the
#: sensor has several products (``-bgrn``: blue, green, red, near-infrared).
#: Sources: NAIP, USDA FSA "NAIP imagery" (4-band: red, green, blue, NIR); WorldView-2/3,
#: GeoEye-1 4-band and WorldView-2/3 8-band, Maxar's "Imagery product" band order;
#: PlanetScope, Planet's "Imagery product specifications" (4-band analytic
#: ``ortho_analytic_4b``; 8-band SuperDove ``ortho_analytic_8b``).
SENSOR_LAYOUTS: dict[str, tuple[str, ...]] = {
    "rgb": ("red", "green", "blue"),
    "rgbn": ("red", "green", "blue", "nir"),
    "bgrn": ("blue", "green", "red", "nir"),
    "naip-rgbn": ("red", "green", "blue", "nir"),
    "worldview-bgrn": ("blue", "green", "red", "nir"),
    "worldview-8band": ("coastal", "blue", "green", "yellow", "red", "rededge", "nir", "nir2"),
    "planet-bgrn": ("blue", "green", "red", "nir"),
    # "Green I" (513-549 nm) is called green1; band 4 (547-583 nm) is Planet's green.
    "planetscope-8band": ("coastal", "blue", "green1", "green", "yellow", "red", "rededge", "nir"),
}

#: What ``bands=`` accepts everywhere: names of every band in order, a mapping
#: ``{name: band number (1-based) or band name}``, a sensor layout from
#: :data:`SENSOR_LAYOUTS`, the same as one string (``"nir=4,red=3,green=2"``,
#: ``"nir,red,green"``), or None (the source's own names).
BandsArg = Mapping[str, int | str] | Sequence[str] | str | None

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_NUMBER = re.compile(r"^[+-]?\d+$")
SYNTAX = "nir=4,red=3,green=2 (band numbers from 1, or band names), nir,red,green or a layout"


def _layouts() -> str:
    return ", ".join(SENSOR_LAYOUTS)


def parse_bands(text: str) -> tuple[str, ...] | dict[str, int | str]:
    """Parse the one-string band syntax of ``--bands`` (and of ``bands=`` given a string).

    Parameters
    ----------
    text
        ``"nir=4,red=3,green=2"`` (each output band from a band number, 1-based as in
        GDAL and QGIS, or from a band name), ``"nir,red,green"`` (a name for every
        band, in order) or a sensor layout of :data:`SENSOR_LAYOUTS` such as
        ``"naip-rgbn"``.

    Returns
    -------
    tuple of str or dict
        The names, or the mapping ``{name: number or band name}``, in the order given.

    Raises
    ------
    BandError
        One line naming the item that cannot be read.

    Examples
    --------
    >>> parse_bands("nir=4, red=3, green=Green")
    {'nir': 4, 'red': 3, 'green': 'Green'}
    >>> parse_bands("NIR,Red,Green")
    ('nir', 'red', 'green')
    >>> parse_bands("naip-rgbn")
    ('red', 'green', 'blue', 'nir')
    """
    if not isinstance(text, str) or not text.strip():
        raise BandError(f"bands is empty; expected {SYNTAX} ({_layouts()})")
    key = text.strip().lower()
    if key in SENSOR_LAYOUTS:
        return SENSOR_LAYOUTS[key]
    items = [item.strip() for item in text.split(",")]
    if "" in items:
        raise BandError(f"bands {text!r} has an empty item between commas; expected {SYNTAX}")
    pairs = [item.partition("=") for item in items]
    with_value = [sep for _, sep, _ in pairs if sep]
    if with_value and len(with_value) != len(items):
        bare = [name for name, sep, _ in pairs if not sep]
        raise BandError(
            f"bands {text!r}: {bare[0]!r} is not NAME=BAND; write nir=4,red=3,green=2 to "
            "select bands, or nir,red,green to name every band"
        )
    for name, _, value in pairs:
        if not _NAME.match(name.strip().lower()):
            raise BandError(
                f"bands {text!r}: {name.strip()!r} is not a band name (a letter, then letters, "
                f"digits, - or _); expected {SYNTAX}"
            )
        if with_value and not value.strip():
            raise BandError(f"bands {text!r}: {name.strip()}= has no band; e.g. {name.strip()}=4")
    if len(items) == 1 and not with_value and "-" in key and key not in _KNOWN_NAMES:
        close = difflib.get_close_matches(key, SENSOR_LAYOUTS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BandError(
            f"bands {text!r} is not a known sensor layout{hint}; known: {_layouts()}; "
            f"or write {SYNTAX}"
        )
    if not with_value:
        return normalize_bands([name for name, _, _ in pairs])
    mapping: dict[str, int | str] = {}
    for name, _, value in pairs:
        canonical = normalize_band_name(name)
        if canonical in mapping:
            raise BandError(f"bands {text!r} names {canonical!r} twice; each band must appear once")
        value = value.strip()
        mapping[canonical] = int(value) if _NUMBER.match(value) else value
    return mapping


_KNOWN_NAMES = set(DEFAULT_FILTER) | set(_ALIASES) | {b for v in SENSOR_LAYOUTS.values() for b in v}


@dataclass(frozen=True)
class BandSelection:
    """Which source bands make the output bands: canonical names and 0-based positions.

    Examples
    --------
    >>> select_bands(4, "nir=4,red=1,green=2")
    BandSelection(names=('nir', 'red', 'green'), positions=(3, 0, 1))
    """

    names: tuple[str, ...]
    """Canonical output band names, in output order."""
    positions: tuple[int, ...]
    """0-based position in the source of each output band (GDAL's number - 1)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _source_numbers(count: int, numbers: Sequence[object] | None) -> list[int] | str:
    """GDAL number of each source band, or why integers cannot be read for this source."""
    if numbers is None or len(numbers) != count or not all(_is_int(n) for n in numbers):
        return list(range(1, count + 1))  # no integer band coordinate: positions from 1
    values = [int(cast(int, n)) for n in numbers]
    if min(values) < 1 or len(set(values)) != count:
        # 0-based or repeated labels: "band 1" could be the first or the second band.
        return (
            f"its band coordinate is {values}, not GDAL's numbers (1, 2, ...), so a band "
            "number is ambiguous; renumber them, e.g. da.assign_coords(band=range(1, "
            f"{count + 1})), or name them"
        )
    return values  # GDAL's numbers, kept by rioxarray even after a selection


def _show_source(count: int, names: Sequence[str | None], numbers: list[int] | str) -> str:
    labels = numbers if isinstance(numbers, list) else list(range(1, count + 1))
    pairs = zip(labels, names, strict=True)
    shown = [f"{n} {name!r}" if name else f"{n} (no name)" for n, name in pairs]
    return "[" + ", ".join(shown) + "]"


def select_bands(
    count: int,
    bands: BandsArg = None,
    *,
    names: Sequence[str | None] | None = None,
    numbers: Sequence[object] | None = None,
    expected: Sequence[str] | None = None,
    where: str = "the input",
) -> BandSelection:
    """Decide which source band is which: the one implementation behind every ``bands=``.

    Parameters
    ----------
    count
        Number of bands in the source.
    bands
        The user's choice (see :data:`BandsArg`): None (the source's own names); the
        name of every band in order; ``{name: band}`` where band is a band number
        (GDAL's, from 1) or the name of a source band; a sensor layout
        (:data:`SENSOR_LAYOUTS`); or any of these as one string (:func:`parse_bands`).
    names
        The source's own name of each band (band coordinate strings, GeoTIFF band
        descriptions); None where a band has none.
    numbers
        The source's integer band coordinate, if any (rioxarray keeps GDAL's band
        numbers there, also after a selection): band numbers refer to it. Without
        one, band N is the N-th band.
    expected
        The bands a model needs, in its order: the selection is made in that order,
        bands the mapping leaves out are found by name, and bands the model does not
        need are dropped. None: every band named (no mapping), or the mapping's bands.
    where
        How messages name the source.

    Returns
    -------
    BandSelection
        Canonical names and 0-based positions, in output order.

    Raises
    ------
    BandError
        Unknown names, band numbers out of range, a band chosen twice, a band count
        that does not match, missing or ambiguous bands: every problem in one message.

    Examples
    --------
    >>> select_bands(3, names=["NIR", "Red", "Green"], expected=("red", "nir"))
    BandSelection(names=('red', 'nir'), positions=(1, 0))
    >>> select_bands(4, "naip-rgbn", expected=("nir", "red", "green")).positions
    (3, 0, 1)
    """
    if isinstance(bands, str):
        bands = parse_bands(bands)
    source: list[str | None] = [None] * count
    if names is not None and len(names) == count:
        source = [
            normalize_band_name(n) if isinstance(n, str) and n.strip() else None for n in names
        ]
    gdal = _source_numbers(count, numbers)
    mapping: dict[str, int | str] = {}
    if isinstance(bands, Mapping):
        keys = normalize_bands(list(bands))
        mapping = dict(zip(keys, bands.values(), strict=True))
    elif bands is not None:
        given = normalize_bands(bands)
        if len(given) != count:
            raise BandError(
                f"{where} has {count} bands but bands={','.join(given)} names {len(given)}; "
                "name every band in order, or select bands by number, e.g. "
                "bands='nir=4,red=3,green=2'"
            )
        source = list(given)
    problems: list[str] = []
    chosen: dict[str, int] = {}
    for name, value in mapping.items():
        position = _position(value, name, source, gdal, count, problems)
        if position is not None:
            chosen[name] = position
    if expected is None:
        out = list(mapping) if mapping else [s or "" for s in source]
        if not mapping and None in source:
            problems.append(f"{count} bands without names")
        elif not mapping:
            out = list(normalize_bands(out))  # a name given to two bands
            chosen = {n: i for i, n in enumerate(out)}
    else:
        out = list(normalize_bands(expected))
        unused = [n for n in mapping if n not in out]
        if unused:
            problems.append(f"bands= names {unused}, which the model does not use {tuple(out)}")
        for band in out:
            if band in mapping:
                continue
            hits = [i for i, s in enumerate(source) if s == band]
            if len(hits) == 1:
                chosen[band] = hits[0]
            elif hits:
                problems.append(
                    f"band {band!r} is ambiguous: bands {[_gdal_label(gdal, i) for i in hits]} "
                    "are all called that"
                )
            else:
                problems.append(f"band {band!r} is missing")
    twice: dict[int, list[str]] = {}
    for name in out:
        if name in chosen:
            twice.setdefault(chosen[name], []).append(name)
    for position, used in twice.items():
        if len(used) > 1:
            problems.append(
                f"band {_gdal_label(gdal, position)} is chosen for {', '.join(map(repr, used))}"
            )
    if problems:
        raise BandError(
            f"cannot tell which band is which in {where} (bands "
            f"{_show_source(count, source, gdal)}"
            + (f"; the model expects {tuple(out)}" if expected is not None else "")
            + "): "
            + "; ".join(problems)
            + ". Say which band is which: bands='nir=4,red=3,green=2' (band numbers from 1, "
            "as in gdalinfo and QGIS; --bands on the command line), bands=('nir', 'red', "
            "'green') (every band, in order) or a sensor layout such as 'naip-rgbn' "
            "(xchm.models.bands.SENSOR_LAYOUTS)"
        )
    return BandSelection(tuple(out), tuple(chosen[n] for n in out))


def _gdal_label(numbers: list[int] | str, position: int) -> int:
    """GDAL's number of the band at 0-based ``position`` (the coordinate's, if usable)."""
    return numbers[position] if isinstance(numbers, list) else position + 1


def _position(
    value: object,
    name: str,
    source: list[str | None],
    gdal: list[int] | str,
    count: int,
    problems: list[str],
) -> int | None:
    """0-based position of the source band ``value`` selects for ``name`` (or a problem)."""
    if _is_int(value):
        number = int(cast(int, value))
        if isinstance(gdal, str):
            problems.append(f"{name!r} <- band {number}: {gdal}")
            return None
        if number in gdal:
            return gdal.index(number)
        hint = (
            " (band numbers count from 1, as in GDAL, QGIS and gdalinfo; add 1 to 0-based indices)"
            if number == 0
            else ""
        )
        problems.append(f"{name!r} <- band {number}: there is no band {number}{hint}")
        return None
    if isinstance(value, str) and value.strip():
        wanted = normalize_band_name(value)
        hits = [i for i, s in enumerate(source) if s == wanted]
        if len(hits) == 1:
            return hits[0]
        if hits:
            problems.append(f"{name!r} <- {value!r}: several bands are called that")
        else:
            problems.append(f"{name!r} <- {value!r}: no band is called that")
        return None
    problems.append(f"{name!r} <- {value!r}: expected a band number (from 1) or a band name")
    return None
