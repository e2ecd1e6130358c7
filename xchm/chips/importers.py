"""Import the reference's chip layouts into a chip cube.

The reference's users keep chips in one of two layouts (docs REFERENCE.md): two
directories ``images/`` and ``labels/`` of equally sized chips with matching file
names (GeoTIFF or ``.npy``), or a Hugging Face ``datasets`` dataset saved with
``save_to_disk`` (:mod:`xchm.chips.hf`, which shares this module's helpers).
Both importers check their input before writing anything, read
it in batches of :data:`_BATCH` chips (memory bounded by one batch) and hand the
batches to the :class:`~xchm.chips.writer.ChipWriter` exactly as
:func:`xchm.chips.build` does: the same filters, global shuffle, statistics and
split rules.

Splits. Georeferenced chips get square blocks in map units,
``floor(corner / (block_size * window * pixel step))`` per axis (the step is
signed, so block rows grow downwards like pixel rows), keyed by CRS rather than by
file: chips of the same place from different files (dates) land on the same side. A
chip reaching into a block of another split is dropped (``split_buffer``), so that
overlapping chips never put the same ground on both sides; chips on a grid aligned
with the blocks lose none.
Chips without georeferencing (``.npy``, GeoTIFFs without CRS, Hugging Face
datasets) cannot be blocked; ``split_by="block"`` then falls back to ``"random"``
with an :class:`~xchm.errors.XCHMWarning`. Each file (or dataset row) is its own scene
unless a GeoTIFF carries a ``scene`` tag.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xchm._compat import renamed_keywords
from xchm.chips.cube import ChipCube, open_cube
from xchm.chips.layout import cube_location
from xchm.chips.sources import _scene_date, resolve_bands
from xchm.chips.splits import SplitRule
from xchm.chips.store import check_store
from xchm.chips.writer import ChipWriter, CubeSettings
from xchm.errors import InputError, PathNotFoundError, XCHMWarning
from xchm.storage import Location

__all__ = ["from_directories"]

log = logging.getLogger(__name__)
_BATCH = 256  # chips read and handed to the writer at a time
_SUFFIXES = (".tif", ".tiff", ".npy")
_MAX_LISTED = 20  # offending files named in one error
Bands = Sequence[str] | Mapping[str, int | str] | None
Batch = tuple[np.ndarray, np.ndarray, dict[str, Any]]


@dataclass
class _Chip:
    """What the header of one chip file says."""

    path: Path
    bands: int = 0
    size: tuple[int, int] = (0, 0)
    dtype: str = ""
    nodata: float | None = None
    crs: str = ""
    transform: tuple[float, ...] | None = None  # affine a, b, c, d, e, f
    descriptions: tuple[str | None, ...] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    problem: str = ""

    @property
    def pixel_size(self) -> float | None:
        return None if self.transform is None else round(abs(self.transform[0]), 9)


@renamed_keywords(store="output", split="split_by")
def from_directories(
    images: str | Path,
    labels: str | Path,
    output: str | Path | Location,
    *,
    bands: Bands = None,
    nodata: float | str | None = "auto",
    min_valid: float = 1.0,
    drop_no_positive: bool = True,
    split_by: str | SplitRule = "block",
    fractions: Mapping[str, float] | None = None,
    block_size: int = 8,
    seed: int = 0,
    stats_sample: int = 1_000_000,
    overwrite: bool = False,
    progress: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> ChipCube:
    """Import a directory of image chips and one of canopy height chips into a cube.

    Files pair up by name (``images/a.tif`` with ``labels/a.tif``); GeoTIFF
    (``.tif``/``.tiff``) and ``.npy`` (images ``(band, h, w)``, labels ``(h, w)`` or
    ``(1, h, w)``) may be mixed. Every header is read and checked before anything is
    written; then the chips are read a batch at a time (memory: one batch).

    Parameters
    ----------
    images, labels
        Directories of image chips and of height chips (metres; the GeoTIFF nodata
        value, or NaN, marks missing heights).
    output
        Directory of the new chip cube (a Zarr v3 store): a local path or a URL
        (``s3://``...), as for :func:`xchm.chips.build`. Formerly ``store=``, which
        still works for one release with a ``FutureWarning``.
    bands
        Names of the image bands in order, or ``{name: 1-based band number or
        description}`` to select and reorder. Default: the GeoTIFF band descriptions.
    nodata
        Image value marking missing pixels besides NaN: ``"auto"`` (the default: the
        GeoTIFFs' own, if they have one), a number, or None (none). As for
        :func:`xchm.chips.build` and :func:`xchm.predict`.
    min_valid, drop_no_positive, fractions, block_size, seed, stats_sample, overwrite
        As for :func:`xchm.chips.build`.
    split_by
        How chips are split: ``"block"`` (blocks of ``block_size`` chips in map
        units, keyed by CRS; chips reaching into a block of another split are
        dropped, see the module docstring), ``"scene"``, ``"random"`` or a
        :class:`SplitRule`. Without georeferencing ``"block"`` falls back to
        ``"random"`` with a warning. Formerly ``split=``, which still works for one
        release with a ``FutureWarning``.
    progress
        Show a progress bar (chips); on by default, as in every long-running xchm
        function.
    storage_options
        fsspec options of ``output``'s backend, as for :func:`xchm.chips.build`.

    Returns
    -------
    ChipCube
        The opened cube; chips carry their file's origin and CRS (GeoTIFF) or NaN
        and ``""`` (no georeferencing), and the file stem (or ``scene`` tag) as scene.

    Raises
    ------
    InputError
        Listing every offending file at once: names on one side only, sizes or band
        counts that differ from the others, labels with more than one band.
    BandError
        If the bands have no names and ``bands=`` is not given.
    PathNotFoundError
        If ``images`` or ``labels`` is not a directory.
    OutputExistsError
        If ``output`` exists and is not a chip cube (with or without ``overwrite``)
        or is one and ``overwrite`` is False; checked before any chip is read.

    Examples
    --------
    >>> cube = xchm.chips.from_directories(  # doctest: +SKIP
    ...     "data/images", "data/labels", "chips.zarr", bands={"nir": 4, "red": 3, "green": 2}
    ... )
    >>> cube.splits  # doctest: +SKIP
    {'train': 342771, 'val': 85693}
    """
    from rasterio.errors import NotGeoreferencedWarning

    rule = _rule(split_by, fractions, block_size, seed)
    output = cube_location(output, storage_options)
    _check_store(output, overwrite)
    problems: list[str] = []
    image_files, label_files = _list_chips(images, problems), _list_chips(labels, problems)
    names = sorted(image_files.keys() | label_files.keys())
    if not names:
        raise InputError(f"{images} and {labels} hold no chips ({', '.join(_SUFFIXES)} files)")
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, warnings.catch_warnings():
        # Chips without georeferencing are expected here (the split warns about them).
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        heads = list(pool.map(_read_header, [image_files.get(n) for n in names]))
        label_heads = list(pool.map(_read_header, [label_files.get(n) for n in names]))
        pairs = _check_directories(names, heads, label_heads, (images, labels), bands, problems)
        first = pairs[0][0]
        where = f"image chip {first.path}"
        band_names, picks = resolve_bands(first.bands, first.descriptions, bands, where)
        georef = bool(first.crs)  # all chips or none have one (checked)
        rule = _fallback(rule, georeferenced=georef)
        declared = [c.nodata for c, _ in pairs if c.nodata is not None]
        cube_nodata = (declared[0] if declared else None) if nodata == "auto" else nodata
        pixel = abs(first.transform[0]) if georef and first.transform else None
        settings = _settings(
            band_names,
            first.size[0],
            np.dtype(first.dtype),
            cube_nodata,
            pixel,
            rule,
            min_valid=min_valid,
            drop_no_positive=drop_no_positive,
            seed=seed,
            stats_sample=stats_sample,
        )
        batches = (
            _read_batch(pool, pairs[i : i + _BATCH], picks, settings, georef, nodata == "auto")
            for i in range(0, len(pairs), _BATCH)
        )
        inputs = {
            "images": str(Path(images).expanduser().resolve()),
            "labels": str(Path(labels).expanduser().resolve()),
            "chips": len(pairs),
        }
        by = "xchm.chips.from_directories"
        return _write(output, settings, batches, len(pairs), [inputs], overwrite, progress, by)


# -- shared ----------------------------------------------------------------------------
def _rule(
    split_by: str | SplitRule,
    fractions: Mapping[str, float] | None,
    block_size: int,
    seed: int,
    *,
    allow_source: bool = False,
) -> SplitRule:
    if isinstance(split_by, SplitRule):
        return split_by
    if split_by == "source" and not allow_source:
        raise InputError("split_by='source' is only for Hugging Face datasets that carry splits")
    return SplitRule(
        method="random" if split_by == "source" else split_by,  # "source": a placeholder
        fractions=fractions if fractions is not None else {"train": 0.8, "val": 0.2},
        block_size=block_size,
        seed=seed,
    )


def _fallback(rule: SplitRule, *, georeferenced: bool) -> SplitRule:
    """Blocks need map coordinates: without them use a random split, and say so."""
    if georeferenced or rule.method != "block":
        return rule
    warnings.warn(
        "the chips have no georeferencing, so split_by='block' cannot keep neighbouring "
        "chips apart; falling back to split_by='random' (chip by chip like the reference: "
        "neighbours land on both sides, so validation scores are optimistic). Pass "
        "split_by='random' or split_by='scene' to choose explicitly",
        XCHMWarning,
        stacklevel=4,  # the importer's caller (past renamed_keywords' wrapper)
    )
    return SplitRule(method="random", fractions=rule.fractions, seed=rule.seed)


def _settings(
    bands: tuple[str, ...],
    window: int,
    dtype: np.dtype,
    nodata: Any,
    pixel_size: float | None,
    rule: SplitRule,
    **options: Any,
) -> CubeSettings:
    if nodata is not None and not isinstance(nodata, int | float | np.number):
        raise InputError(f"nodata must be a number, None or 'auto', got {nodata!r}")
    if nodata is None and np.issubdtype(dtype, np.floating):
        nodata = math.nan
    return CubeSettings(
        bands=bands,
        window=window,
        dtype=dtype.str,
        nodata=None if nodata is None else float(nodata),
        pixel_size=pixel_size,
        split=rule,
        **options,
    )


def _write(
    store: str | Path | Location,
    settings: CubeSettings,
    batches: Iterable[Batch],
    total: int,
    inputs: list[dict[str, Any]],
    overwrite: bool,
    progress: bool,
    created_by: str,
) -> ChipCube:
    """Hand the batches to a ChipWriter (as build does) and open the finished cube."""
    from tqdm.auto import tqdm

    path = cube_location(store)
    writer = ChipWriter(
        path,
        settings,
        expected_chips=total,
        inputs=inputs,
        overwrite=overwrite,
        created_by=created_by,
    )
    with tqdm(total=total, unit="chip", disable=not progress, desc="chips") as bar:
        for image, height, meta in batches:
            writer.add(image, height, **meta)
            bar.update(len(image))
    f = writer.finish()["filters"]
    log.info("chip cube %s: %d of %d kept (%s)", path, f["kept"], f["candidates"], f["removed"])
    return open_cube(path)


def _no_georeferencing(k: int) -> dict[str, Any]:
    """Writer arguments for ``k`` chips without map coordinates (one block each)."""
    nan = np.full(k, np.nan)
    return {"crs": "", "origin_x": nan, "origin_y": nan, "block_first": np.zeros((k, 2), int)}


def _problems(lines: list[str], what: str) -> InputError:
    """One error naming every offending file (at most _MAX_LISTED, then a count)."""
    shown = lines[:_MAX_LISTED]
    more = f"\n  ... and {len(lines) - len(shown)} more" if len(lines) > len(shown) else ""
    return InputError(f"{what} ({len(lines)} problems):\n  " + "\n  ".join(shown) + more)


# -- directories -----------------------------------------------------------------------
def _check_store(store: str | Path | Location, overwrite: bool) -> None:
    """Fail before the long work if the writer will refuse the store."""
    check_store(cube_location(store), overwrite)


def _list_chips(directory: str | Path, problems: list[str]) -> dict[str, Path]:
    """Chip files by name (stem); two files of one name are a problem."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise PathNotFoundError(
            f"chip directory {directory} {what}; pass a folder of GeoTIFF chips"
        )
    found: dict[str, Path] = {}
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.suffix.lower() in _SUFFIXES:
            if p.stem in found:
                problems.append(f"{p}: same name as {found[p.stem].name}; keep one of them")
            found[p.stem] = p
    return found


def _read_header(path: Path | None) -> _Chip | None:
    if path is None:
        return None
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, mmap_mode="r")
            if arr.ndim not in (2, 3):
                return _Chip(path, problem=f"is {arr.ndim}-D; expected (band, h, w) or (h, w)")
            h, w = arr.shape[-2:]
            return _Chip(path, 1 if arr.ndim == 2 else arr.shape[0], (h, w), arr.dtype.str)
        with _open_tif(path) as src:
            return _Chip(
                path,
                src.count,
                (src.height, src.width),
                np.dtype(src.dtypes[0]).str,
                src.nodata,
                src.crs.to_string() if src.crs else "",
                tuple(src.transform)[:6],
                tuple(src.descriptions),
                src.tags(),
            )
    except Exception as err:  # any unreadable file is reported with the other problems
        return _Chip(path, problem=f"cannot be read ({type(err).__name__}: {err})")


def _check_directories(
    names: list[str],
    heads: list[_Chip | None],
    label_heads: list[_Chip | None],
    dirs: tuple[Any, Any],
    bands: Bands,
    lines: list[str],
) -> list[tuple[_Chip, _Chip]]:
    """Check all headers; raise one InputError naming every offending file."""
    lines += [f"{c.path}: {c.problem}" for c in heads + label_heads if c and c.problem]
    pairs = []
    for name, img, lab in zip(names, heads, label_heads, strict=True):
        if img is None or lab is None:
            there, other = (lab, dirs[0]) if img is None else (img, dirs[1])
            lines.append(f"{there.path}: no chip named {name!r} in {other}")  # type: ignore[union-attr]
        elif not (img.problem or lab.problem):
            pairs.append((img, lab))
    imgs = [img for img, _ in pairs]
    size = _differ(lines, [c for pair in pairs for c in pair], "size", "px")
    if size and (size[0] != size[1] or size[0] % 16):
        lines.append(
            f"chips are {size[0]}x{size[1]} px; they must be square with a side that is a "
            "multiple of 16 (the ViT patch size)"
        )
    _differ(lines, imgs, "bands", "bands")
    _differ(lines, imgs, "dtype", "dtype")
    lines += [f"{lb.path}: {lb.bands} bands; a label has 1" for _, lb in pairs if lb.bands != 1]
    if any(c.crs for c in imgs):
        lines += [f"{c.path}: no CRS, while other chips have one" for c in imgs if not c.crs]
        _differ(lines, [c for c in imgs if c.crs], "pixel_size", "m pixels")
        lines += [
            f"{lb.path}: not on the grid of its image (CRS or transform differ)"
            for img, lb in pairs
            if img.crs and lb.crs and (img.crs, img.transform) != (lb.crs, lb.transform)
        ]
    if bands is None or (isinstance(bands, Mapping) and str in map(type, bands.values())):
        _differ(lines, imgs, "descriptions", "band descriptions")
    if lines:
        raise _problems(lines, f"cannot import chips from {dirs[0]} and {dirs[1]}")
    return pairs


def _differ(lines: list[str], chips: list[_Chip], key: str, what: str) -> Any:
    """Note the chips whose ``key`` differs from the most common value; return that."""
    values = [getattr(c, key) for c in chips]
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    common = max(counts, key=counts.__getitem__) if counts else None
    lines += [
        f"{c.path}: {_show(v)} {what}, the others {_show(common)}"
        for c, v in zip(chips, values, strict=True)
        if v != common
    ]
    return common


def _show(value: Any) -> str:
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) and len(value) == 2 else str(value)


def _read_batch(
    pool: ThreadPoolExecutor,
    pairs: list[tuple[_Chip, _Chip]],
    picks: list[int],
    settings: CubeSettings,
    georef: bool,
    unify_nodata: bool,
) -> Batch:
    """Read a batch of chip pairs and what the writer needs to know about them."""

    def read(pair: tuple[_Chip, _Chip]) -> tuple[np.ndarray, np.ndarray]:
        img, lab = pair
        image = _load(img.path, picks)
        if unify_nodata and img.nodata is not None and settings.nodata is not None:
            if not (math.isnan(img.nodata) or img.nodata == settings.nodata):
                image = np.where(image == img.nodata, settings.nodata, image)
        height = _load(lab.path, [0])[0].astype(np.float32)
        if lab.nodata is not None and not math.isnan(lab.nodata):
            height[height == lab.nodata] = np.nan
        return image.astype(settings.dtype, copy=False), height

    chips = list(pool.map(read, pairs))
    k = len(pairs)
    heads = [img for img, _ in pairs]
    meta: dict[str, Any] = {
        "scene": np.array([c.tags.get("scene") or c.path.stem for c in heads], dtype=object),
        "date": np.array([_scene_date(None, c.tags) for c in heads], dtype="datetime64[D]"),
    }
    if georef:
        t = np.array([c.transform for c in heads], dtype=np.float64)  # a b c d e f
        step = settings.split.block_size * settings.window
        x, y, last = t[:, 2], t[:, 5], settings.window - 1

        def block(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
            rows, cols = ys / (step * t[:, 4]), xs / (step * t[:, 0])
            return np.floor(np.stack([rows, cols], axis=1) + 1e-6).astype(np.int64)

        crs = np.array([c.crs for c in heads], dtype=object)
        meta.update(crs=crs, origin_x=x, origin_y=y, block_key=crs, block_first=block(x, y))
        meta["block_last"] = block(x + last * t[:, 0], y + last * t[:, 4])
    else:
        meta.update(_no_georeferencing(k))
    return np.stack([c[0] for c in chips]), np.stack([c[1] for c in chips]), meta


def _load(path: Path, picks: list[int]) -> np.ndarray:
    """Bands ``picks`` (0-based) of a chip file, as (band, h, w)."""
    if path.suffix.lower() == ".npy":
        arr = np.load(path)
        return (arr[None] if arr.ndim == 2 else arr)[picks]
    with _open_tif(path) as src:
        return np.asarray(src.read(indexes=[p + 1 for p in picks]))


@contextmanager
def _open_tif(path: Path) -> Iterator[Any]:
    """Open a GeoTIFF without listing its directory (sidecar files are still found).

    GDAL lists the directory on every open by default: quadratic in a directory of chips.
    """
    import rasterio

    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="TRUE"), rasterio.open(path) as src:
        yield src
