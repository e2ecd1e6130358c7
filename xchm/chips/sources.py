"""Open an (image, CHM) pair lazily on one pixel grid, for chip building.

A pair without a CHM (``chm=None``) is an image alone, for an unlabeled cube
(self-supervised pretraining): it is opened the same way, with no heights.

Paths and URLs (``s3://``, ``gs://``, ``az://``, ``https://``...: GDAL's
``/vsis3/``, ``/vsicurl/``... with the options :mod:`xchm.storage` gives it) are
opened with rasterio; when the image is resampled (``resolution=``) or the CHM's
CRS, transform or size differ from the image grid, a GDAL ``WarpedVRT`` does it on
the fly (area average for the image; the CHM resampling is an option),
so that a scene larger than memory is only read strip by strip through Dask.
In-memory DataArrays are aligned with rioxarray (``reproject``/``reproject_match``),
which loads them.

Georeferencing is checked before anything is read: images and CHMs need a CRS,
the image's CRS must count in metres (chip origins and the cube's pixel size are
metres), and DataArray coordinates must be a regular grid (shuffled, repeated or
gapped x/y are refused; see :func:`xchm.inference.inputs.check_grid`). Images
stored south-up or east-to-west are read north-up, so chips always are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date as Date
from pathlib import Path
from typing import Any, cast

import numpy as np
import xarray as xr

from xchm.errors import InputError, PathNotFoundError
from xchm.inference.inputs import band_labels, check_grid, to_north_up
from xchm.models.bands import BandsArg, select_bands
from xchm.storage import Location, gdal_env, gdal_environment, location

__all__ = ["ScenePair", "OpenScene", "open_scene", "as_pairs", "pairs_labeled", "resolve_bands"]

Source = str | Path | Location | xr.DataArray


@dataclass(frozen=True)
class ScenePair:
    """One image and the canopy height model (metres) that covers it, or an image alone.

    Examples
    --------
    >>> pair = ScenePair("scene.tif", "chm.tif", scene="WV3-2019-07-02", date="2019-07-02")
    >>> ScenePair("scene.tif", None).labeled  # imagery alone: an unlabeled cube
    False
    """

    image: Source
    """Image path or URL (GeoTIFF/COG/VRT) or DataArray (band, y, x)."""
    chm: Source | None
    """CHM path, URL or DataArray (y, x) or (1, y, x), metres above ground; None for no CHM."""
    scene: str | None = None
    """Scene id (default: the image file's stem, or the DataArray's name)."""
    date: str | Date | np.datetime64 | None = None
    """Acquisition date (default: the image's ``TIFFTAG_DATETIME`` if any)."""

    @property
    def labeled(self) -> bool:
        """Whether the pair has a CHM (heights to learn from)."""
        return self.chm is not None


def as_pairs(pairs: Any) -> list[ScenePair]:
    """Accept ScenePairs, (image, chm) tuples, dicts, or bare images (no CHM).

    A bare image path or DataArray, a dict without ``chm`` and a pair whose CHM is
    None all mean an image alone; :func:`pairs_labeled` checks that the pairs do
    not mix images with and without a CHM.
    """
    if isinstance(pairs, ScenePair | str | Path | Location | xr.DataArray):
        pairs = [pairs]
    out = []
    for i, p in enumerate(pairs):
        if isinstance(p, ScenePair):
            out.append(p)
        elif isinstance(p, str | Path | Location | xr.DataArray):
            out.append(ScenePair(p, None))
        elif isinstance(p, Mapping):
            out.append(_pair_from_mapping(p, i))
        elif isinstance(p, Sequence) and len(p) == 2:
            out.append(ScenePair(p[0], p[1]))
        else:
            raise InputError(
                f"pairs[{i}] must be an (image, chm) tuple, a dict, a ScenePair or an image "
                f"path/DataArray (no CHM), got {p!r}"
            )
    if not out:
        raise InputError("pairs is empty; give at least one (image, chm) pair or image")
    return out


def _pair_from_mapping(p: Mapping[str, Any], i: int) -> ScenePair:
    known = ("image", "chm", "scene", "date")
    unknown = sorted(set(p) - set(known))
    if unknown or "image" not in p:
        raise InputError(
            f"pairs[{i}] needs the key 'image' and may have 'chm', 'scene', 'date'; got keys "
            f"{sorted(p)}"
        )
    return ScenePair(**{"chm": None, **p})


def pairs_labeled(pairs: Sequence[ScenePair]) -> bool:
    """Return whether every pair has a CHM (False: none has; a mix is an error).

    Raises
    ------
    InputError
        If some pairs have a CHM and others do not.

    Examples
    --------
    >>> pairs_labeled([ScenePair("a.tif", "a_chm.tif"), ScenePair("b.tif", "b_chm.tif")])
    True
    >>> pairs_labeled([ScenePair("a.tif", None)])
    False
    """
    without = [_describe(p.image) for p in pairs if not p.labeled]
    if not without:
        return True
    if len(without) == len(pairs):
        return False
    with_chm = [_describe(p.image) for p in pairs if p.labeled]
    raise InputError(
        f"{len(without)} image(s) have no CHM ({_names(without)}) but {len(with_chm)} have one "
        f"({_names(with_chm)}); a chip cube is either labeled (a CHM for every scene, for "
        "xchm.train) or unlabeled (imagery alone, for xchm.pretrain): give every image a CHM, "
        "or build the images without CHM into a cube of their own"
    )


def _names(described: list[str], most: int = 3) -> str:
    shown = ", ".join(Path(d).name if not d.startswith("<") else d for d in described[:most])
    return shown + (f", ... {len(described) - most} more" if len(described) > most else "")


@dataclass
class OpenScene:
    """A pair opened on the image grid: lazy arrays plus what chips need to know."""

    scene: str
    image: xr.DataArray  # (band, y, x), native dtype, bands selected and ordered
    heights: xr.DataArray | None  # (y, x) float32 metres, NaN for no data; None: no CHM
    bands: tuple[str, ...]
    nodata: float | None
    crs: str
    transform: Any
    date: np.datetime64 | None
    description: dict[str, Any]


def open_scene(
    pair: ScenePair,
    index: int,
    stack: ExitStack,
    *,
    bands: BandsArg,
    resolution: float | None,
    nodata: float | str | None,
    chm_resampling: str,
    strip_rows: int,
) -> OpenScene:
    """Open ``pair`` on one grid; files stay open until ``stack`` closes."""
    from rasterio.enums import Resampling

    chunks = {"band": -1, "y": strip_rows, "x": -1}
    where = f"the image of scene {index} ({_describe(pair.image)})"
    image = _open_image(pair.image, stack, resolution, nodata, chunks, where)
    names, picks = _resolve_bands(image, bands, pair)
    declared = image.rio.nodata if image.rio.nodata is not None else image.rio.encoded_nodata
    image = image.isel(band=picks)
    image_nodata = declared if nodata == "auto" else nodata
    if image_nodata is not None and not isinstance(image_nodata, int | float | np.number):
        raise InputError(f"nodata must be a number, None or 'auto', got {image_nodata!r}")
    try:
        resampling = Resampling[chm_resampling]
    except KeyError:
        choices = ", ".join(r.name for r in Resampling)
        raise InputError(f"chm_resampling {chm_resampling!r} is not one of: {choices}") from None
    heights = None
    if pair.chm is not None:
        where = f"the CHM of scene {index} ({_describe(pair.chm)})"
        heights = _open_chm(pair.chm, image, stack, resampling, chunks, where)
    scene = pair.scene or _default_scene_id(pair.image, index)
    return OpenScene(
        scene=scene,
        image=image,
        heights=heights,
        bands=names,
        nodata=None if image_nodata is None else float(image_nodata),
        crs=image.rio.crs.to_string(),
        transform=image.rio.transform(),
        date=_scene_date(pair.date, image.attrs),
        description={
            "scene": scene,
            "image": _describe(pair.image),
            "chm": None if pair.chm is None else _describe(pair.chm),
            "date": None if pair.date is None else str(pair.date),
        },
    )


def _check_crs(crs: Any, where: str, *, image_crs: Any = None) -> None:
    """Refuse a missing CRS, and for images one that does not count in metres."""
    if crs is None:
        has, example = "", "EPSG:32617"
        if image_crs is not None:
            has, example = f"; the image is in {image_crs.to_string()}", image_crs.to_string()
        raise InputError(
            f"{where} has no CRS{has}. Chips need georeferencing and xchm does not guess it: "
            f"set the right one, e.g. da.rio.write_crs({example!r}) for a DataArray or "
            f"gdal_edit.py -a_srs {example} file.tif for a file"
        )
    if image_crs is not None:  # a CHM: any CRS, it is warped onto the image grid
        return
    unit = None if crs.is_geographic else _linear_unit(crs)
    if crs.is_geographic or unit != 1.0:
        what = "the geographic CRS" if crs.is_geographic else "a CRS that does not count in metres"
        raise InputError(
            f"{where} is in {what} {crs.to_string()}; chip origins and the cube's pixel size "
            "are metres: reproject it onto a metric CRS first, e.g. "
            "da.rio.reproject(da.rio.estimate_utm_crs(), resolution=2) for a DataArray or "
            "gdalwarp -t_srs EPSG:326NN -tr 2 2 in.tif out.tif for a file (NN: the UTM zone)"
        )


def _linear_unit(crs: Any) -> float | None:
    try:
        return float(crs.linear_units_factor[1])
    except Exception:  # rasterio cannot tell the unit
        return None


def _regular(da: xr.DataArray, where: str) -> xr.DataArray:
    """``da`` north-up, after checking that its x/y coordinates are a regular grid."""
    steps = check_grid(da, where)
    return da if steps.north_up else to_north_up(da, steps)


def _open_image(
    source: Source, stack: ExitStack, resolution: float | None, nodata: Any, chunks: Any, where: str
) -> Any:
    import rioxarray
    from rasterio.enums import Resampling

    if isinstance(source, xr.DataArray):
        image = source
        if image.ndim != 3:
            raise InputError(f"image must be (band, y, x), got dims {image.dims}")
        _check_crs(image.rio.crs, where)
        image = _regular(image, where)
        if resolution is not None and not _same_resolution(image, resolution):
            if nodata != "auto":  # the user's nodata decides which pixels the average skips
                image = image.rio.write_nodata(nodata)
            image = image.rio.reproject(
                image.rio.crs, resolution=resolution, resampling=Resampling.average
            )
        return image
    src = _open_raster(source, stack)
    _check_crs(src.crs, where)
    if resolution is not None and not math.isclose(abs(src.res[0]), resolution, rel_tol=1e-9):
        from affine import Affine
        from rasterio.vrt import WarpedVRT

        left, bottom, right, top = src.bounds
        width = math.floor((right - left) / resolution + 1e-6)
        height = math.floor((top - bottom) / resolution + 1e-6)
        if width < 1 or height < 1:
            raise InputError(f"{source}: resolution {resolution} is coarser than the image")
        # The user's nodata decides which pixels the average skips (None: none).
        given = {} if nodata == "auto" else {"src_nodata": nodata, "nodata": nodata}
        src = stack.enter_context(
            WarpedVRT(
                src,
                crs=src.crs,
                transform=Affine(resolution, 0, left, 0, -resolution, top),
                width=width,
                height=height,
                resampling=Resampling.average,
                **given,
            )
        )
    opened = cast(xr.DataArray, rioxarray.open_rasterio(src, chunks=chunks))  # one variable
    return _regular(opened, where)


def _open_chm(
    source: Source, image: Any, stack: ExitStack, resampling: Any, chunks: Any, where: str
) -> Any:
    import rioxarray

    if isinstance(source, xr.DataArray):
        chm: Any = source.squeeze(drop=True) if source.ndim == 3 else source
        if chm.ndim != 2:
            raise InputError(f"chm must be (y, x), got dims {source.dims}")
        _check_crs(chm.rio.crs, where, image_crs=image.rio.crs)
        chm = _regular(chm, where)
        nodata = chm.rio.nodata if chm.rio.nodata is not None else chm.rio.encoded_nodata
        if not _same_grid(chm, image):
            chm = chm.rio.reproject_match(image.isel(band=0), resampling=resampling)
            nodata = chm.rio.nodata
        heights = chm.astype("float32")
        if nodata is not None and not np.isnan(nodata):
            heights = heights.where(chm != nodata)
        return heights.assign_coords(y=image.y, x=image.x)
    src = _open_raster(source, stack)
    _check_crs(src.crs, where, image_crs=image.rio.crs)
    grid = (image.rio.crs, image.rio.transform(), image.rio.height, image.rio.width)
    if (src.crs, src.transform, src.height, src.width) != grid:
        from rasterio.vrt import WarpedVRT

        src = stack.enter_context(
            WarpedVRT(
                src,
                crs=grid[0],
                transform=grid[1],
                height=grid[2],
                width=grid[3],
                resampling=resampling,
                src_nodata=src.nodata,
                nodata=np.nan,
                dtype="float32",
            )
        )
    chm = rioxarray.open_rasterio(src, chunks=chunks, masked=True)
    if chm.sizes["band"] != 1:
        raise InputError(f"CHM {source} has {chm.sizes['band']} bands; expected 1 (heights)")
    return chm.isel(band=0, drop=True).astype("float32").assign_coords(y=image.y, x=image.x)


def _open_raster(path: Source, stack: ExitStack) -> Any:
    """Open a raster file by path or URL; it stays open (and GDAL configured) in ``stack``."""
    import rasterio

    loc = location(path)  # never a DataArray here
    if not loc.is_url:
        local = Path(loc.text).expanduser()
        if not local.exists():
            raise PathNotFoundError(
                f"no such file: {local}; check the path (pairs are (image, chm))"
            )
        return stack.enter_context(rasterio.open(local))
    if not loc.exists():
        raise PathNotFoundError(
            f"no such file: {loc.text!r}; check the URL (pairs are (image, chm))"
        )
    # The lazy strip reads run in Dask threads: GDAL gets the S3 endpoint of the
    # environment process-wide, and this location's own options for the build.
    gdal_environment()
    stack.enter_context(gdal_env(loc))
    return stack.enter_context(rasterio.open(loc.gdal_path()))


def _resolve_bands(
    image: Any, bands: BandsArg, pair: ScenePair
) -> tuple[tuple[str, ...], list[int]]:
    """Band names of the cube and the (0-based) image bands they come from.

    The image's names are its band coordinate (a DataArray's strings) or its band
    descriptions (a file's), exactly as :func:`xchm.predict` reads them.
    """
    names, numbers = band_labels(image)
    where = f"image {_describe(pair.image)!r}"
    chosen = select_bands(image.sizes["band"], bands, names=names, numbers=numbers, where=where)
    return chosen.names, list(chosen.positions)


def resolve_bands(
    count: int,
    described: Sequence[str | None] | None,
    bands: BandsArg,
    where: str,
) -> tuple[tuple[str, ...], list[int]]:
    """Band names and the (0-based) source bands they come from, for ``count`` bands.

    ``described`` are the source's band descriptions (None where it has none),
    ``bands`` what :func:`xchm.models.bands.select_bands` accepts (names, a mapping
    to band numbers from 1 or to descriptions, a sensor layout, or one string), and
    ``where`` names the source in error messages.
    """
    chosen = select_bands(count, bands, names=described, where=where)
    return chosen.names, list(chosen.positions)


def _same_grid(a: Any, b: Any) -> bool:
    return bool(
        a.rio.crs == b.rio.crs
        and a.rio.shape == b.rio.shape
        and np.allclose(tuple(a.rio.transform())[:6], tuple(b.rio.transform())[:6])
    )


def _same_resolution(image: Any, resolution: float) -> bool:
    return all(math.isclose(abs(r), resolution, rel_tol=1e-9) for r in image.rio.resolution())


def _scene_date(value: Any, attrs: Mapping[str, Any]) -> np.datetime64 | None:
    if value is None:
        tag = attrs.get("TIFFTAG_DATETIME") or attrs.get("acquisition_date") or attrs.get("date")
        if not tag:
            return None
        match = re.match(r"(\d{4})[:-](\d{2})[:-](\d{2})", str(tag))
        if not match:
            return None
        value = "-".join(match.groups())
    try:
        return np.datetime64(value, "D")
    except ValueError as err:
        raise InputError(f"cannot read the date {value!r}: use 'YYYY-MM-DD'") from err


def _default_scene_id(source: Source, index: int) -> str:
    if isinstance(source, xr.DataArray):
        return str(source.name) if source.name is not None else f"scene-{index}"
    return Path(location(source).name).stem


def _describe(source: Source) -> str:
    """Name a source: a DataArray's summary, a file's absolute path, a URL as typed."""
    if isinstance(source, xr.DataArray):
        return f"<DataArray {source.name or ''} {dict(source.sizes)}>"
    loc = location(source)
    if loc.is_url:
        return loc.text
    return str(Path(loc.text).expanduser().resolve())
