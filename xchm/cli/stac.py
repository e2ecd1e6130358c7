"""``xchm predict --stac URL ...``: the image to predict, from a STAC search.

The options are declared in :mod:`xchm.cli.predict`; this module, imported only
when ``--stac`` is given, turns them into ``search`` -> ``load`` with the model
card's bands.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xchm.errors import InputError

__all__ = ["stac_image", "stac_bands", "parse_months"]


def parse_months(text: str) -> tuple[int, ...] | None:
    """``"7,8"`` -> ``(7, 8)``; ``"all"`` -> ``None`` (every date).

    Examples
    --------
    >>> parse_months("7, 8"), parse_months("all")
    ((7, 8), None)
    >>> parse_months("13")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    xchm.errors.InputError: --months must be ... month numbers 1-12 (e.g. 7,8) or 'all', got '13'
    """
    if text.strip().lower() == "all":
        return None
    try:
        months = tuple(int(m) for m in text.replace(" ", "").split(",") if m)
    except ValueError:
        months = ()
    if not months or not all(1 <= m <= 12 for m in months):
        raise InputError(
            f"--months must be comma-separated month numbers 1-12 (e.g. 7,8) or 'all', got {text!r}"
        )
    return months


def stac_bands(expected: tuple[str, ...], bands: Any) -> Any:
    """Return the bands to load from STAC items for a model expecting ``expected``.

    ``bands`` is ``--bands`` as parsed: None (the model's bands, found by name in
    the items' band metadata), names to load (predict then picks the model's by
    name), or ``{model band: band name or 'asset.N'}`` for some of the model's bands
    (the others are found by name).

    Examples
    --------
    >>> stac_bands(("nir", "red", "green"), {"nir": "image.4"})
    {'nir': 'image.4', 'red': 'red', 'green': 'green'}
    >>> stac_bands(("nir", "red", "green"), {"nir": 4})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    xchm.errors.BandError: --bands nir=4: ... name the asset, e.g. nir=image.4
    """
    from xchm.errors import BandError

    if bands is None:
        return expected
    if not isinstance(bands, dict):
        return bands
    problems = [f"{name}={value}" for name, value in bands.items() if not isinstance(value, str)]
    if problems:
        raise BandError(
            f"--bands {', '.join(problems)}: a STAC item holds its bands in assets, so a band "
            f"number alone does not say which file; name the asset, e.g. "
            f"{problems[0].split('=')[0]}=image.{problems[0].split('=')[1]}"
        )
    unused = [name for name in bands if name not in expected]
    if unused:
        raise BandError(
            f"--bands names {unused}, which the model does not use {expected}; map the model's "
            "bands, e.g. nir=image.4,red=image.1,green=image.2"
        )
    return {name: bands.get(name, name) for name in expected}


def stac_image(args: argparse.Namespace) -> Any:
    """Search ``args.stac`` and load the scenes with the model's bands, lazily."""
    from xchm.inference.runtime import spec_for
    from xchm.stac.load import DEFAULT_CHUNKS, load
    from xchm.stac.search import search

    if args.input:
        raise InputError("give input files or --stac URL, not both")
    if not args.collection:
        raise InputError("--stac needs --collection ID (the collection to search, e.g. naip)")
    if args.bbox is None:
        raise InputError("--stac needs --bbox WEST SOUTH EAST NORTH (degrees)")
    _, card = spec_for(
        args.model, weights=args.weights, backbone_weights=getattr(args, "backbone_weights", None)
    )
    items = search(
        args.bbox,
        collections=args.collection,
        catalog=args.stac,
        datetime=args.datetime,
        months=parse_months(args.months),
        max_cloud_cover=args.max_cloud,
        missing_cloud_cover=args.missing_cloud,
        max_items=args.max_items,
    )
    print(f"xchm: {len(items)} STAC item(s) from {args.stac}", file=sys.stderr)
    return load(
        items,
        bands=stac_bands(card.bands, args.bands),
        resolution=args.resolution,
        crs=args.crs,
        bbox=args.bbox,
        chunks=DEFAULT_CHUNKS if args.chunks is None else args.chunks,
        combine=args.combine,
    )
