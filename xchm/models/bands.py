"""Band names and the mapping of input bands onto a pretrained RGB patch embedding.

DINOv3 backbones are pretrained on 3-channel RGB images. A canopy height model
usually sees other bands (the reference uses NIR, red, green), so the first
convolution (the patch embedding) is rebuilt with one input channel per band,
each a copy of one pretrained colour filter. Which filter each band gets is the
*band map*: a tuple of filter indices (0 = red, 1 = green, 2 = blue), one per band.

The reference project meant NIR<-red, red<-red, green<-green, but its code
assumed BGR filters and so gave NIR and red the *blue* filter: band map
``(2, 2, 1)`` for (nir, red, green). ``band_map="reference"`` reproduces that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from xchm.errors import BandError

__all__ = [
    "RGB_FILTERS",
    "DEFAULT_FILTER",
    "REFERENCE_BANDS",
    "normalize_band_name",
    "normalize_bands",
    "resolve_band_map",
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
