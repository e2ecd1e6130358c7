"""Import a Hugging Face ``datasets`` chip dataset (``save_to_disk``) into a chip cube.

The reference's second layout (docs REFERENCE.md). Rows are read in batches and
handed to the writer through the helpers of :mod:`xchm.chips.importers`; rows carry
no georeferencing, so ``split_by="block"`` falls back to ``"random"`` with a
warning, and ``split_by="source"`` keeps the dataset's own train/validation/test
splits.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xchm._compat import renamed_keywords
from xchm.chips.cube import ChipCube
from xchm.chips.importers import (
    _BATCH,
    Bands,
    Batch,
    _check_store,
    _fallback,
    _no_georeferencing,
    _rule,
    _settings,
    _write,
)
from xchm.chips.layout import cube_location
from xchm.chips.sources import resolve_bands
from xchm.chips.splits import SplitRule
from xchm.chips.writer import CubeSettings
from xchm.errors import InputError, PathNotFoundError
from xchm.storage import Location

__all__ = ["from_hf_dataset"]


@renamed_keywords(store="output", split="split_by")
def from_hf_dataset(
    path: str | Path,
    output: str | Path | Location,
    *,
    image_column: str = "image",
    label_column: str = "label",
    bands: Bands = None,
    nodata: float | str | None = "auto",
    min_valid: float = 1.0,
    drop_no_positive: bool = True,
    split_by: str | SplitRule = "block",
    fractions: Mapping[str, float] | None = None,
    block_size: int = 8,
    seed: int = 0,
    split_column: str | None = None,
    stats_sample: int = 1_000_000,
    overwrite: bool = False,
    progress: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> ChipCube:
    """Import a Hugging Face ``datasets`` dataset of chips saved with ``save_to_disk``.

    A ``DatasetDict`` contributes all its splits. Rows are read a batch at a time
    with ``.with_format("numpy")`` (memory: one batch). Needs the ``hf`` extra.

    Parameters
    ----------
    path
        Directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``.
    output
        Directory of the new chip cube (a Zarr v3 store): a local path or a URL
        (``s3://``...), as for :func:`xchm.chips.build`. Formerly ``store=``, which
        still works for one release with a ``FutureWarning``.
    image_column, label_column
        Columns holding image chips ``(band, h, w)`` (arrays, nested lists or
        ``Array3D``) and height chips ``(h, w)`` in metres (NaN for missing).
    bands
        Names of the image bands in order, or ``{name: 1-based band number}``;
        required (datasets do not name bands).
    nodata
        Image value marking missing pixels besides NaN: ``"auto"`` (the default;
        datasets carry no nodata value, so none), a number, or None (none).
    split_by
        How rows are split: ``"source"`` keeps the dataset's own split
        (``split_column``, or the DatasetDict's split names train/val/validation/test;
        ``validation`` becomes ``val``); ``"scene"`` and ``"random"`` label each row;
        ``"block"`` falls back to ``"random"`` with a warning (rows have no
        georeferencing). Formerly ``split=``, which still works for one release with a
        ``FutureWarning``.
    split_column
        Column of per-row split labels, for ``split_by="source"``.
    min_valid, drop_no_positive, fractions, block_size, seed, stats_sample, overwrite
        As for :func:`xchm.chips.build`.
    progress
        Show a progress bar (chips); on by default, as in every long-running xchm
        function.
    storage_options
        fsspec options of ``output``'s backend, as for :func:`xchm.chips.build`.

    Returns
    -------
    ChipCube
        The opened cube; each chip's scene is ``"<split>/<row>"`` (``"<row>"`` for a
        plain Dataset), its origin NaN and its CRS ``""``.

    Raises
    ------
    MissingDependencyError
        If ``datasets`` is not installed.
    InputError
        If a column is missing (the message lists those that exist), chips have the
        wrong shape, or ``split_by="source"`` has no split to keep. A shape error found
        after writing began leaves an incomplete store (rerun with overwrite=True).
    PathNotFoundError
        If ``path`` is not a folder.
    OutputExistsError
        As for :func:`xchm.chips.from_directories`.

    Examples
    --------
    >>> cube = xchm.chips.from_hf_dataset(  # doctest: +SKIP
    ...     "chips_hf", "chips.zarr", bands=("nir", "red", "green"), split_by="source"
    ... )
    >>> cube.splits  # doctest: +SKIP
    {'train': 342771, 'val': 85693}
    """
    from xchm._optional import require

    datasets = require("datasets")
    rule = _rule(split_by, fractions, block_size, seed, allow_source=True)
    output = cube_location(output, storage_options)
    _check_store(output, overwrite)
    if not Path(path).expanduser().is_dir():
        raise PathNotFoundError(
            f"no dataset folder at {path}; pass the folder written by datasets' save_to_disk"
        )
    loaded = datasets.load_from_disk(str(Path(path).expanduser()))
    named = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    parts = [(name, ds) for name, ds in named if len(ds)]
    if not parts:
        raise InputError(f"dataset {path} has no rows")
    for name, ds in parts:
        missing = [
            c for c in (image_column, label_column, split_column) if c and c not in ds.column_names
        ]
        if missing:
            raise InputError(
                f"dataset {path}{f' (split {name!r})' if name else ''} has no column "
                f"{', '.join(map(repr, missing))}; its columns are {ds.column_names}: pass "
                "image_column=, label_column= or split_column="
            )
    source = _source_labels(split_by, split_column, [n for n, _ in parts], path)
    rule = _fallback(rule, georeferenced=False)  # "source" has a random placeholder rule
    row = parts[0][1].select_columns([image_column, label_column]).with_format("numpy")[0]
    image, label = np.asarray(row[image_column]), np.asarray(row[label_column])
    shape = _check_hf_chips(image[None], label[None], f"dataset {path}, first row")
    band_names, picks = resolve_bands(shape[0], None, bands, f"dataset {path}")
    settings = _settings(
        band_names,
        shape[1],
        _feature_dtype(parts[0][1].features[image_column]) or image.dtype,
        None if nodata == "auto" else nodata,
        None,
        rule,
        min_valid=min_valid,
        drop_no_positive=drop_no_positive,
        seed=seed,
        stats_sample=stats_sample,
    )
    inputs = {
        "dataset": str(Path(path).expanduser().resolve()),
        "splits": {name: len(ds) for name, ds in parts if name} or None,
        "image_column": image_column,
        "label_column": label_column,
    }
    columns = (image_column, label_column, split_column)
    batches = _hf_batches(parts, columns, shape, picks, settings, source)
    total, by = sum(len(ds) for _, ds in parts), "xchm.chips.from_hf_dataset"
    return _write(output, settings, batches, total, [inputs], overwrite, progress, by)


# -- Hugging Face datasets -------------------------------------------------------------
_SOURCE_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def _source_labels(
    split_by: Any, split_column: str | None, names: list[str], path: Any
) -> dict[str, str] | None:
    """For ``split_by="source"``: the label of each DatasetDict split ({}: from the column)."""
    if split_by != "source":
        return None
    if split_column is not None:
        return {}
    bad = [n for n in names if n not in _SOURCE_NAMES]
    if bad:
        raise InputError(
            f"split_by='source' keeps the dataset's splits, but {path} has "
            f"{'no splits' if names == [''] else f'splits {names}'}; it needs a DatasetDict "
            f"with splits among {sorted(_SOURCE_NAMES)} or split_column=, or pass another split_by"
        )
    return {n: _SOURCE_NAMES[n] for n in names}


def _column_labels(values: np.ndarray, column: str) -> np.ndarray:
    labels = np.array([_SOURCE_NAMES.get(str(v), "") for v in values], dtype=object)
    if not labels.all():
        bad = sorted({str(v) for v in values if str(v) not in _SOURCE_NAMES})
        raise InputError(f"split_column {column!r} holds {bad}; expected {sorted(_SOURCE_NAMES)}")
    return labels


def _check_hf_chips(image: np.ndarray, label: np.ndarray, where: str) -> tuple[int, int]:
    """Check a batch (k, band, w, w) and (k, w, w) or (k, 1, w, w); return (band, w)."""
    if image.dtype == object or image.ndim != 4:
        shape = image.shape[1:] if image.dtype != object else "of different shapes"
        raise InputError(f"{where}: image chips must be (band, h, w) arrays, got {shape}")
    _, band, h, w = image.shape
    if h != w or w % 16:
        raise InputError(
            f"{where}: image chips are {h}x{w} px; they must be square with a side that is a "
            "multiple of 16 (the ViT patch size)"
        )
    if label.dtype == object or label.shape[1:] not in ((w, w), (1, w, w)):
        shape = label.shape[1:] if label.dtype != object else "of different shapes"
        raise InputError(f"{where}: label chips must be ({w}, {w}) like the images, got {shape}")
    return band, w


def _feature_dtype(feature: Any) -> np.dtype | None:
    """Return a column's stored dtype (Array3D or nested lists): numpy formatting widens it."""
    while not hasattr(feature, "dtype") and hasattr(feature, "feature"):
        feature = feature.feature
    try:
        return np.dtype(getattr(feature, "dtype", None) or "")
    except TypeError:
        return None


def _hf_batches(
    parts: list[tuple[str, Any]],
    columns: tuple[str, str, str | None],
    shape: tuple[int, int],
    picks: list[int],
    settings: CubeSettings,
    source: dict[str, str] | None,
) -> Iterator[Batch]:
    """Yield the rows of every split in batches, checked, with their scene ids and labels."""
    image_column, label_column, split_column = columns
    selected = [c for c in columns if c is not None]
    for name, ds in parts:
        start = 0
        for batch in ds.select_columns(selected).with_format("numpy").iter(batch_size=_BATCH):
            image, label = np.asarray(batch[image_column]), np.asarray(batch[label_column])
            k = len(image)
            where = f"rows {start}-{start + k - 1}" + (f" of split {name!r}" if name else "")
            if _check_hf_chips(image, label, where) != shape:
                raise InputError(f"{where}: chips are {image.shape[1:]}, the first row's {shape}")
            rows = range(start, start + k)
            meta = {**_no_georeferencing(k), "date": None}
            meta["scene"] = np.array(
                [f"{name}/{i}" if name else str(i) for i in rows], dtype=object
            )
            if source is not None:
                meta["split"] = (
                    _column_labels(batch[split_column], split_column)
                    if split_column is not None
                    else np.full(k, source[name], dtype=object)
                )
            image = image[:, picks].astype(settings.dtype, copy=False)
            yield image, label.reshape(k, shape[1], shape[1]).astype(np.float32), meta
            start += k
