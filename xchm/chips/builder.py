"""Build a chip cube from (image, CHM) scene pairs, or from images alone.

Each scene is opened on the image grid (see :mod:`xchm.chips.sources`), cut into
chips on a regular grid anchored at the image's upper-left pixel (stride
``window`` by default, whole chips only), read strip by strip so that memory
stays bounded by one strip of chips, and handed to the :class:`ChipWriter`.
Images without a CHM make an unlabeled cube (no ``height`` array), for
self-supervised pretraining; the same code path cuts them, minus the heights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from xchm._compat import renamed_keywords
from xchm.chips.cube import ChipCube, open_cube
from xchm.chips.layout import cube_location
from xchm.chips.sources import OpenScene, ScenePair, as_pairs, open_scene, pairs_labeled
from xchm.chips.splits import SplitRule
from xchm.chips.writer import ChipWriter, CubeSettings
from xchm.errors import BandError, InputError
from xchm.models.bands import BandsArg
from xchm.storage import Location

__all__ = ["build"]

log = logging.getLogger(__name__)
# Bytes of raw pixels per strip read (all bands, float64 worst case).
_STRIP_BYTES = 64 * 2**20


@renamed_keywords(store="output", split="split_by")
def build(
    pairs: Sequence[ScenePair | tuple[Any, Any] | Mapping[str, Any] | Any] | ScenePair | Any,
    output: str | Path | Location,
    *,
    window: int = 64,
    stride: int | None = None,
    bands: BandsArg = None,
    resolution: float | None = None,
    nodata: float | str | None = "auto",
    min_valid: float = 1.0,
    drop_no_positive: bool | None = None,
    split_by: str | SplitRule = "block",
    fractions: Mapping[str, float] | None = None,
    block_size: int = 8,
    seed: int = 0,
    stats_sample: int = 1_000_000,
    chm_resampling: str = "average",
    overwrite: bool = False,
    progress: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> ChipCube:
    """Cut image and canopy height chips from scene pairs into a new chip cube.

    Images without a CHM make an *unlabeled* cube: image chips alone (no
    ``height`` array, attrs ``labeled: false``), for self-supervised pretraining
    (``xchm.pretrain``), not for ``xchm.train``.

    Parameters
    ----------
    pairs
        ``(image, chm)`` tuples, :class:`ScenePair` objects (with scene id and date)
        or dicts. Images and CHMs are GeoTIFF/COG paths or URLs (``s3://``,
        ``https://``...: read lazily through GDAL, range requests only) or DataArrays;
        the CHM is aligned to the image grid (reprojected/resampled when CRS, transform or size
        differ). A bare image (path or DataArray), a pair whose CHM is None or a
        dict without ``chm`` is an image alone; either every scene has a CHM or none
        has.
    output
        Directory of the new chip cube (a Zarr v3 store): a local path or a URL
        (``s3://``, ``gs://``, ``az://``, ``file://``...: a key prefix, written through
        zarr's fsspec store). Formerly ``store=``, which still works for one release
        with a ``FutureWarning``.
    window
        Chip side in pixels (a multiple of 16).
    stride
        Distance between chip origins in pixels (default ``window``: no overlap).
    bands
        Which image band is which, as everywhere in xchm
        (:func:`xchm.models.bands.select_bands`, ``docs/bands.md``): names of the
        image's bands in order; a mapping ``{name: source band}`` (band number, from
        1 as in GDAL and QGIS, or band name) to select and reorder, e.g.
        ``{"nir": 4, "red": 3, "green": 2}`` for B, G, R, NIR scenes; a sensor layout
        such as ``"worldview-bgrn"``; or one string ``"nir=4,red=3,green=2"``.
        Default: the image's band names (a DataArray's band coordinate, a file's
        band descriptions).
    resolution
        Resample the image to this pixel size (its CRS units, metres) by area average.
    nodata
        Image value marking missing pixels besides NaN: ``"auto"`` (the default: the
        file's or array's own, if it has one), a number, or None (none). The same
        meaning as in :func:`xchm.predict`.
    min_valid
        Smallest fraction of valid pixels (image valid in every band, and height
        finite if there are heights) a chip needs; 1.0, the default, drops any chip
        with a missing value (the reference).
    drop_no_positive
        Drop chips without a single height > 0 (the reference). Default (None):
        True for labeled scenes; it does not apply to images alone, where only
        None or False is accepted.
    split_by
        How chips are split into train/val/test: ``"block"`` (square blocks of
        ``block_size`` chips, the default: neighbouring chips never land on both
        sides), ``"scene"``, ``"random"`` (chip by chip like the reference;
        optimistic, since neighbours leak), or a :class:`SplitRule`. Formerly
        ``split=`` (a name now kept for split labels, as in ``cube.sel(split="val")``),
        which still works for one release with a ``FutureWarning``.
    fractions
        Share of each label, default ``{"train": 0.8, "val": 0.2}``. Blocks (scenes,
        chips) are labelled by quota within each scene, and every label with a
        non-zero fraction gets chips whenever there are at least as many blocks with
        chips as such labels (see :mod:`xchm.chips.splits`).
    block_size
        Side of a split block in chips.
    seed
        Seed of the shuffle, the split and the statistics sample.
    stats_sample
        Pixels sampled for the band statistics.
    chm_resampling
        rasterio resampling name for aligning the CHM (``average``, ``bilinear``,
        ``max``, ...).
    overwrite
        Replace an existing chip cube at ``output`` (complete or not). A folder that
        is not a chip cube (a user's own Zarr store, any other files) is refused
        with or without it, and nothing in it is touched.
    progress
        Show a progress bar (chips); on by default, as in every long-running xchm
        function.
    storage_options
        fsspec options of ``output``'s backend (``key``, ``secret``,
        ``endpoint_url``...), overriding the environment (docs/cloud.md). Scene URLs
        are read with the environment's credentials (GDAL); a scene with options of
        its own can be given as a :class:`~xchm.storage.Location`.

    Returns
    -------
    ChipCube
        The opened cube.

    Raises
    ------
    InputError
        For invalid settings or inputs, among them scenes that mix images with and
        without a CHM, or ``drop_no_positive=True`` for images alone.
    OutputExistsError
        If ``output`` holds a chip cube and ``overwrite`` is False, or holds anything
        else (see :mod:`xchm.outputs`).

    Warns
    -----
    XCHMWarning
        When a label of ``fractions`` got no chip (fewer blocks, scenes or chips than
        labels), with the counts; not for an unlabeled cube.

    Examples
    --------
    >>> cube = xchm.chips.build(  # doctest: +SKIP
    ...     [("scene.tif", "chm.tif")], "chips.zarr", bands={"nir": 4, "red": 3, "green": 2}
    ... )
    >>> cube.splits  # doctest: +SKIP
    {'train': 812, 'val': 196}
    >>> unlabeled = xchm.chips.build(["a.tif", "b.tif"], "images.zarr")  # doctest: +SKIP
    >>> unlabeled.labeled  # doctest: +SKIP
    False
    """
    pair_list = as_pairs(pairs)
    labeled = pairs_labeled(pair_list)
    drop_no_positive = _drop_no_positive(drop_no_positive, labeled)
    stride = window if stride is None else stride
    _check_geometry(window, stride, resolution)
    rule = (
        split_by
        if isinstance(split_by, SplitRule)
        else SplitRule(
            method=split_by,
            fractions=fractions if fractions is not None else {"train": 0.8, "val": 0.2},
            block_size=block_size,
            seed=seed,
        )
    )
    path = cube_location(output, storage_options)
    with ExitStack() as stack:
        scenes = []
        for i, pair in enumerate(pair_list):
            scenes.append(
                open_scene(
                    pair,
                    i,
                    stack,
                    bands=bands,
                    resolution=resolution,
                    nodata=nodata,
                    chm_resampling=chm_resampling,
                    strip_rows=_strip_rows(window, stride),
                )
            )
        settings = _settings(
            scenes, window, resolution, min_valid, drop_no_positive, rule, seed, stats_sample
        )
        grids = [_chip_grid(s.image.shape[1], s.image.shape[2], window, stride) for s in scenes]
        total = sum(len(r) * len(c) for r, c in grids)
        if total == 0:
            raise InputError(f"every scene is smaller than one {window}x{window} px chip")
        writer = ChipWriter(
            path,
            settings,
            expected_chips=total,
            overwrite=overwrite,
            inputs=[s.description for s in scenes],
            created_by="xchm.chips.build",
        )
        from tqdm.auto import tqdm

        with tqdm(total=total, unit="chip", disable=not progress, desc="chips") as bar:
            for scene, (rows, cols) in zip(scenes, grids, strict=True):
                _cut_scene(scene, rows, cols, stride, settings, writer, bar)
        attrs = writer.finish()
    f = attrs["filters"]
    log.info(
        "chip cube %s: %d of %d chips kept (%s)", path, f["kept"], f["candidates"], f["removed"]
    )
    cube = open_cube(path)
    if nodata == "auto":
        _warn_if_nodata_looks_saturated(cube, f)
    return cube


def _warn_if_nodata_looks_saturated(cube: ChipCube, filters: Mapping[str, Any]) -> None:
    """Warn when a file's nodata is its dtype's maximum and it removed many chips.

    8-bit aerial RGB (NEON's, for one) often declares 255 nodata although 255 is
    real saturated white (roofs, bright soil, sunlit crowns).
    """
    dtype = np.dtype(cube.image.dtype)
    value = cube.nodata
    if value is None or not np.issubdtype(dtype, np.integer) or value != np.iinfo(dtype).max:
        return
    removed, candidates = filters["removed"]["missing"], filters["candidates"]
    if removed > 0.25 * candidates:
        import warnings

        warnings.warn(
            f"{removed} of {candidates} chips were removed as missing, by the images' "
            f"declared nodata {value:g}, the largest {dtype} value: if that is saturated "
            "white rather than missing data, build again with nodata=None (CLI: --nodata none)",
            UserWarning,
            stacklevel=4,  # build's caller (past renamed_keywords' wrapper)
        )


def _drop_no_positive(value: bool | None, labeled: bool) -> bool:
    """Resolve ``drop_no_positive``: True by default with heights; never without."""
    if labeled:
        return True if value is None else bool(value)
    if value:
        raise InputError(
            "drop_no_positive=True needs heights, but these images have no CHM (an unlabeled "
            "cube, for xchm.pretrain); leave drop_no_positive out (CLI: no --keep-no-positive "
            "needed), or give every image its CHM"
        )
    return False


def _check_geometry(window: int, stride: int, resolution: float | None) -> None:
    for name, value in (("window", window), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if window % 16:
        raise InputError(f"window={window} is not a multiple of the ViT patch size 16")
    if stride > window:
        raise InputError(f"stride={stride} > window={window} would skip pixels; use <= window")
    if resolution is not None and not (isinstance(resolution, int | float) and resolution > 0):
        raise InputError(f"resolution must be a positive number, got {resolution!r}")


def _strip_rows(window: int, stride: int) -> int:
    """Image rows per Dask chunk: a whole number of chip rows, ~ 8 of them."""
    return stride * 8


def _settings(
    scenes: list[OpenScene],
    window: int,
    resolution: float | None,
    min_valid: float,
    drop_no_positive: bool,
    rule: SplitRule,
    seed: int,
    stats_sample: int,
) -> CubeSettings:
    first = scenes[0]
    dtypes = {str(s.image.dtype) for s in scenes}
    if len(dtypes) > 1:
        raise InputError(
            f"scenes have different image dtypes {sorted(dtypes)}; convert them to one (e.g. "
            "all uint16 DN or all float32 reflectance) before building one cube"
        )
    other = [s.scene for s in scenes if s.bands != first.bands]
    if other:
        raise BandError(f"scenes {other} resolve to other bands than {first.bands}")
    ids = [s.scene for s in scenes]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InputError(f"scene ids {repeated} repeat; give each ScenePair a unique scene=")
    dtype = np.dtype(first.image.dtype)
    nodata = first.nodata
    if nodata is None and np.issubdtype(dtype, np.floating):
        nodata = math.nan
    pixel = resolution if resolution is not None else abs(first.transform.a)
    return CubeSettings(
        bands=first.bands,
        window=window,
        dtype=dtype.str,
        nodata=nodata,
        pixel_size=float(pixel),
        min_valid=min_valid,
        drop_no_positive=drop_no_positive,
        split=rule,
        seed=seed,
        stats_sample=stats_sample,
        labeled=first.heights is not None,
    )


def _chip_grid(h: int, w: int, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rows and columns of chip origins: whole chips only."""
    return np.arange(0, h - window + 1, stride), np.arange(0, w - window + 1, stride)


def _cut_scene(
    scene: OpenScene,
    rows: np.ndarray,
    cols: np.ndarray,
    stride: int,
    settings: CubeSettings,
    writer: ChipWriter,
    bar: Any,
) -> None:
    win = settings.window
    if len(rows) == 0 or len(cols) == 0:
        return
    row_bytes = scene.image.shape[2] * (len(settings.bands) + 1) * 8 * win
    per_strip = max(1, _STRIP_BYTES // row_bytes)
    block_px = settings.split.block_size * win
    t = scene.transform
    for i in range(0, len(rows), per_strip):
        strip = rows[i : i + per_strip]
        top, bottom = int(strip[0]), int(strip[-1]) + win
        image, heights = _read_strip(scene, top, bottom, settings)
        # One combined index into the window views copies only the chips (indexing
        # rows then columns would first copy every column offset: ~64x the strip).
        at = ((strip - top)[:, None], cols[None, :])
        img = np.lib.stride_tricks.sliding_window_view(image, (win, win), axis=(1, 2))
        img = img[:, at[0], at[1]].transpose(1, 2, 0, 3, 4)
        hgt = None
        if heights is not None:
            hgt = np.lib.stride_tricks.sliding_window_view(heights, (win, win))[at]
            hgt = hgt.reshape(-1, win, win)
        rr, cc = np.meshgrid(strip, cols, indexing="ij")
        rr, cc = rr.ravel(), cc.ravel()
        xs = t.c + cc * t.a + rr * t.b  # upper-left corner of each chip's first pixel
        ys = t.f + cc * t.d + rr * t.e
        first = np.stack([rr // block_px, cc // block_px], axis=1)
        last = np.stack([(rr + win - 1) // block_px, (cc + win - 1) // block_px], axis=1)
        writer.add(
            img.reshape(-1, *img.shape[2:]),
            hgt,
            scene=scene.scene,
            crs=scene.crs,
            date=scene.date,
            origin_x=np.asarray(xs),
            origin_y=np.asarray(ys),
            block_first=first,
            block_last=last if stride < win else None,
        )
        bar.update(len(rr))
        del image, heights, img, hgt


def _read_strip(
    scene: OpenScene, top: int, bottom: int, settings: CubeSettings
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load image rows [top, bottom) in the cube's dtype, nodata unified, and heights.

    Heights are None for an image without CHM.
    """
    import dask

    rows = slice(top, bottom)
    with dask.config.set(scheduler="threads"):
        image = np.asarray(scene.image.isel(y=rows).values)
        heights = None
        if scene.heights is not None:
            heights = np.asarray(scene.heights.isel(y=rows).values, dtype=np.float32)
    if scene.nodata is not None and settings.nodata is not None and scene.nodata != settings.nodata:
        image = np.where(image == scene.nodata, settings.nodata, image)
    return image.astype(settings.dtype, copy=False), heights
