"""Which asset and band of a STAC item holds each requested band (nir, red, green...).

Names are matched, case-insensitively, against asset keys and against band metadata:
``eo:bands`` (``name``, ``common_name``), STAC 1.1 ``bands`` (``name``,
``eo:common_name``); ``raster:bands`` only counts bands. Candidates are ranked: an asset
whose key is the name, then a single-band asset whose band has the name, then a band
of a multi-band asset; two candidates of the same rank are ambiguous. A value
``"asset.N"`` (or ``("asset", N)``) names band N (1-based, as GDAL numbers bands) of
an asset directly, for multi-band assets without band metadata. A string is read with
the one band syntax of xchm (:func:`xchm.models.bands.parse_bands`, ``--bands``):
``"nir=image.4,red=image.1,green=image.2"``, ``"nir,red,green"`` or a sensor layout.

odc-stac loads band 1 of a multi-band asset that has no band metadata and says
nothing, so :func:`check_undescribed` reads the header of such an asset (of one item)
and refuses a multi-band file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xchm.errors import BandError, InputError
from xchm.models.bands import parse_bands as parse_band_text

if TYPE_CHECKING:
    import pystac

__all__ = ["Source", "parse_bands", "resolve", "check_undescribed"]

logger = logging.getLogger(__name__)
_POSITION = re.compile(r"^(?P<asset>.+)\.(?P<index>[1-9]\d*)$")
_SKIP_ROLES = {"thumbnail", "overview", "metadata"}


@dataclass(frozen=True)
class Source:
    """Band ``index`` (1-based) of asset ``asset``; ``count`` bands known from metadata."""

    asset: str
    index: int
    count: int | None
    explicit: bool = False
    """Given by position (``"asset.N"``) rather than found by name."""

    @property
    def odc_name(self) -> str:
        """The band name odc-stac understands: ``asset`` or ``asset.N``."""
        return self.asset if self.count in (1, None) else f"{self.asset}.{self.index}"

    def __str__(self) -> str:
        return self.asset if self.count == 1 else f"{self.asset}.{self.index}"


def parse_bands(bands: Any) -> dict[str, str | tuple[str, int]]:
    """Normalise ``bands`` to ``{output name: name or (asset, index)}``.

    Examples
    --------
    >>> parse_bands(("nir", "red", "green"))
    {'nir': 'nir', 'red': 'red', 'green': 'green'}
    >>> parse_bands({"nir": "image.4", "red": ("image", 1)})
    {'nir': ('image', 4), 'red': ('image', 1)}
    >>> parse_bands("nir=image.4,red=image.1")  # as xchm predict --stac --bands
    {'nir': ('image', 4), 'red': ('image', 1)}
    """
    if isinstance(bands, str):  # the one-string syntax of --bands: "nir=image.4,...", a layout
        bands = parse_band_text(bands)
    if isinstance(bands, Mapping):
        pairs = list(bands.items())
    elif isinstance(bands, Sequence) and bands:
        pairs = [(b, b) for b in bands]
    else:
        raise InputError(
            f"bands must name the bands to load, e.g. ('nir', 'red', 'green'), got {bands!r}"
        )
    out: dict[str, str | tuple[str, int]] = {}
    for name, spec in pairs:
        if not isinstance(name, str) or not name:
            raise InputError(f"band names must be non-empty strings, got {name!r}")
        if name in out:
            raise InputError(f"band {name!r} is listed twice in bands={bands!r}")
        if isinstance(spec, tuple) and len(spec) == 2:
            asset, index = spec
            if not isinstance(asset, str) or isinstance(index, bool) or not isinstance(index, int):
                raise InputError(f"bands[{name!r}] must be ('asset', index), got {spec!r}")
            if index < 1:
                raise InputError(f"band positions start at 1, got {spec!r} for {name!r}")
            out[name] = (asset, index)
        elif isinstance(spec, str) and spec:
            match = _POSITION.match(spec)
            out[name] = (match["asset"], int(match["index"])) if match else spec
        else:
            raise InputError(
                f"bands[{name!r}] must be a band name, 'asset.N' or ('asset', N), got {spec!r} "
                "(a STAC item holds bands in assets: name the asset, e.g. 'image.4')"
            )
    return out


def _band_list(asset: pystac.Asset) -> tuple[list[set[str]], int | None]:
    """Names of each band of an asset (from metadata) and the band count, if known."""
    fields = asset.extra_fields
    named = fields.get("bands") or fields.get("eo:bands")
    if isinstance(named, list) and named:
        names = []
        for band in named:
            band = band if isinstance(band, dict) else {}
            keys = (band.get("name"), band.get("common_name"), band.get("eo:common_name"))
            names.append({k.casefold() for k in keys if isinstance(k, str)})
        return names, len(named)
    counted = fields.get("raster:bands")
    if isinstance(counted, list) and counted:
        return [set() for _ in counted], len(counted)
    return [], None


def _assets(item: pystac.Item) -> dict[str, pystac.Asset]:
    return {
        key: asset
        for key, asset in item.assets.items()
        if not _SKIP_ROLES.intersection(asset.roles or ())
    }


def _describe(item: pystac.Item) -> str:
    parts = []
    for key, asset in _assets(item).items():
        names, count = _band_list(asset)
        if count is None:
            parts.append(f"{key} (no band metadata)")
        elif any(names):
            labels = ["/".join(sorted(n)) or "?" for n in names]
            parts.append(f"{key} [{', '.join(labels)}]")
        else:
            parts.append(f"{key} ({count} unnamed bands)")
    return "; ".join(parts) or "no data assets"


def _find(item: pystac.Item, spec: str | tuple[str, int]) -> tuple[Source | None, str]:
    """Find the source of one band in one item; return (None, reason) if there is none."""
    assets = _assets(item)
    if isinstance(spec, tuple):
        key, index = spec
        if key not in assets:
            return None, f"item {item.id!r} has no asset {key!r}"
        _, count = _band_list(assets[key])
        if count is not None and index > count:
            return None, f"asset {key!r} of item {item.id!r} has {count} bands, not {index}"
        return Source(key, index, count, explicit=True), ""
    wanted = spec.casefold()
    ranked: dict[int, list[Source]] = {0: [], 1: [], 2: []}
    for key, asset in assets.items():
        names, count = _band_list(asset)
        if key.casefold() == wanted:
            ranked[0].append(Source(key, 1, count))
            continue
        for i, band_names in enumerate(names):
            if wanted in band_names:
                ranked[1 if count == 1 else 2].append(Source(key, i + 1, count))
    for rank in (0, 1, 2):
        found = sorted(set(ranked[rank]), key=str)
        if len(found) == 1:
            return found[0], ""
        if len(found) > 1:
            options = " or ".join(repr(str(s)) for s in found)
            return None, f"{spec!r} is ambiguous in item {item.id!r}: {options}"
    return None, f"item {item.id!r} has no band {spec!r}; its assets: {_describe(item)}"


def resolve(items: Sequence[pystac.Item], bands: Any) -> dict[str, Source]:
    """Map each output band to one (asset, band) shared by every item.

    Raises
    ------
    BandError
        A band that is missing, ambiguous, or held in different places by different
        items (every problem listed at once).
    """
    wanted = parse_bands(bands)
    problems: list[str] = []
    absent: dict[str, list[str]] = {}  # item id -> names it lacks
    chosen: dict[str, Source] = {}
    for name, spec in wanted.items():
        seen: dict[Source, str] = {}
        for item in items:
            source, why = _find(item, spec)
            if source is None:
                if why.startswith(f"item {item.id!r} has no band"):
                    absent.setdefault(item.id, []).append(repr(spec))
                else:
                    problems.append(why)
                break
            seen.setdefault(source, item.id)
        else:
            if len(seen) > 1:
                places = ", ".join(f"{s} (e.g. item {i!r})" for s, i in seen.items())
                problems.append(
                    f"band {name!r} is in different assets across the items: {places}; "
                    "load items of one collection at a time"
                )
            else:
                chosen[name] = next(iter(seen))
    by_id = {item.id: item for item in items}
    for iid, names in absent.items():
        problems.append(
            f"item {iid!r} has no band {', '.join(names)}; its assets: {_describe(by_id[iid])}"
        )
    if not problems:
        return chosen
    bare = [
        key
        for iid in absent
        for key, asset in _assets(by_id[iid]).items()
        if _band_list(asset)[1] is None
    ]
    if bare:
        key = bare[0]
        hint = (
            f"asset {key!r} has no band metadata (eo:bands, bands or raster:bands), so its "
            "bands have no names; if it holds several (odc-stac would load band 1 only), name "
            f"them by position, e.g. bands={{'nir': '{key}.4', 'red': '{key}.1', 'green': "
            f"'{key}.2'}} after checking the provider's band order"
        )
    else:
        hint = (
            "name the bands explicitly, e.g. bands={'nir': 'B08', 'red': 'B04', 'green': "
            "'B03'} (names or common names), or by position in a multi-band asset, e.g. "
            "bands={'nir': 'image.4', 'red': 'image.1', 'green': 'image.2'}"
        )
    raise BandError("cannot find the bands to load: " + "; ".join(problems) + f"; {hint}")


def check_undescribed(
    item: pystac.Item, sources: dict[str, Source], *, patch_url: Any = None
) -> None:
    """Refuse a multi-band asset without band metadata (odc-stac would load band 1).

    Reads the header of each such asset of ``item`` (one small request per asset);
    ``patch_url`` (e.g. a signing function) is applied to its URL first.
    """
    import rasterio

    for key in sorted({s.asset for s in sources.values() if s.count is None}):
        href = item.assets[key].get_absolute_href() or item.assets[key].href
        if patch_url is not None:
            href = patch_url(href)
        try:
            with rasterio.open(href) as src:
                count = src.count
        except Exception as err:  # noqa: BLE001 - the check is best effort: log and go on
            logger.warning("could not open %s to count its bands (%s); not checked", href, err)
            continue
        positions = sorted(s.index for s in sources.values() if s.asset == key)
        names = [n for n, s in sources.items() if s.asset == key and not s.explicit]
        if count > 1 and names:
            raise BandError(
                f"asset {key!r} of item {item.id!r} holds {count} bands but has no band "
                f"metadata (eo:bands, bands or raster:bands), so which band is {names[0]!r} is "
                f"unknown (odc-stac would load band 1 and say nothing); name the bands by "
                f"position, e.g. bands={{'nir': '{key}.4', 'red': '{key}.1', 'green': "
                f"'{key}.2'}} after checking the provider's band order"
            )
        if positions[-1] > count:
            raise BandError(
                f"asset {key!r} of item {item.id!r} has {count} band(s); band {positions[-1]} "
                "was asked for"
            )
