"""Write a chip cube: filter chips, shuffle them globally in bounded memory, stats.

Builders and importers hand chips to a :class:`ChipWriter` in any order and any
batch size. The writer

1. filters each batch (missing values beyond ``min_valid``, no height > 0) and
   counts what each rule removed; split labels are decided on :meth:`ChipWriter.finish`,
   once every split unit is known (:meth:`xchm.chips.splits.SplitRule.assign`), and
   chips straddling blocks of different splits are dropped then;
   an unlabeled cube (``labeled=False``: image chips alone, for pretraining) has
   no heights, so only the image counts as missing and ``no_positive`` does not
   apply;
2. spreads the kept chips over random *buckets* staged in the store (``_staging``),
   each small enough to fit in memory;
3. on :meth:`ChipWriter.finish`, loads one bucket at a time, permutes it and
   appends it to the final arrays in whole shards. A random bucket per chip plus a
   permutation inside each bucket is a uniform shuffle of all chips (the usual
   external shuffle), so sequential chunk reads are already well mixed;
4. samples the band statistics while writing, exactly as
   :func:`xchm.models.band_statistics` would on the finished ``image`` array.

The group's attrs say ``complete: false`` until the very end: an interrupted
build never looks like a finished cube (``xchm.chips.open`` refuses it). An
unlabeled cube has no ``height`` array at all (neither staged nor final).

Where the cube goes follows :mod:`xchm.outputs`: the store must be new, empty or
an xchm chip cube, and ``overwrite`` replaces only a chip cube, never a folder
xchm did not write (a user's own Zarr store included). The writer marks the
folder with :data:`xchm.outputs.MARKER` before anything else, then creates the
group with its ``xchm`` attrs in one write of ``zarr.json``; a kill at any moment
leaves a folder recognised as an (incomplete) chip cube, which ``overwrite``
replaces. The marker file is removed once the cube is complete, because Zarr
warns about a file it does not know on every listing of the group
(``xr.open_zarr`` included); from then on the ``xchm`` attrs identify the cube
(:func:`xchm.chips.store.is_chip_cube`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from xchm._version import __version__
from xchm.chips.layout import (
    BAND_ARRAY,
    CHIP_ARRAYS,
    CHIPS_PER_CHUNK,
    CHIPS_PER_SHARD,
    CRS_ARRAY,
    FORMAT_NAME,
    FORMAT_VERSION,
    SPLITS,
    compressors,
    cube_location,
    cube_store,
)
from xchm.chips.splits import SplitRule
from xchm.chips.store import prepare_store
from xchm.errors import InputError, XCHMWarning
from xchm.models.card import statistics_from_pixels
from xchm.outputs import MARKER
from xchm.storage import Location

__all__ = [
    "ChipWriter",
    "CubeSettings",
    "FILTER_RULES",
    "UNLABELED_FILTER_RULES",
]

#: Filter rules, in the order they are applied; each chip is counted by the first.
FILTER_RULES = {
    "missing": "image or height valid in fewer than min_valid of the pixels",
    "no_positive": "no height > 0 m (drop_no_positive)",
    "split_buffer": "footprint reaches a block of another split (stride < window)",
}
#: The same rules as an unlabeled cube (no heights) applies them.
UNLABELED_FILTER_RULES = {
    **FILTER_RULES,
    "missing": "image valid in fewer than min_valid of the pixels (unlabeled: no heights)",
    "no_positive": "not applicable: unlabeled cube (no heights)",
}
_STAGING = "_staging"
# Finishing holds ~3 copies of one bucket (staged, permuted, carried into shards).
_BUCKET_BYTES = 256 * 2**20


@dataclass(frozen=True, kw_only=True)
class CubeSettings:
    """What a cube holds and how chips are filtered; stored in its attrs.

    ``labeled=False`` makes a cube of image chips alone (no ``height`` array), for
    self-supervised pretraining; ``drop_no_positive`` must then be False.
    """

    bands: tuple[str, ...]
    window: int
    dtype: str
    nodata: float | None
    pixel_size: float | None
    min_valid: float = 1.0
    drop_no_positive: bool = True
    split: SplitRule = field(default_factory=SplitRule)
    seed: int = 0
    stats_sample: int = 1_000_000
    labeled: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.min_valid <= 1:
            raise InputError(f"min_valid must be in (0, 1], got {self.min_valid!r}")
        if self.drop_no_positive and not self.labeled:
            raise InputError(
                "drop_no_positive needs heights, and an unlabeled cube has none; pass "
                "drop_no_positive=False"
            )
        if self.stats_sample < 1:
            raise InputError(f"stats_sample must be positive, got {self.stats_sample!r}")


@dataclass
class _Bucket:
    staged: int = 0
    images: list[np.ndarray] = field(default_factory=list)
    heights: list[np.ndarray] = field(default_factory=list)
    meta: list[dict[str, np.ndarray]] = field(default_factory=list)

    @property
    def buffered(self) -> int:
        return sum(len(a) for a in self.images)


class ChipWriter:
    """Collect chips into a new cube at ``path``; see the module docstring.

    Parameters
    ----------
    path
        Directory of the new Zarr store: a local path or a URL (``s3://``...; a
        :class:`~xchm.storage.Location` carries its storage options).
    settings
        Bands, window, dtype, filters, split and statistics settings.
    expected_chips
        Upper bound of the chips to come (sizes the shuffle buckets).
    inputs
        Descriptions of the inputs, kept in the provenance.
    overwrite
        Replace an existing chip cube at ``path`` (never anything else).

    Raises
    ------
    OutputExistsError
        ``path`` holds a chip cube and ``overwrite`` is False, or holds anything
        that is not a chip cube (with or without ``overwrite``).
    OutputError
        ``path`` cannot be created or written.
    """

    def __init__(
        self,
        path: str | Path | Location,
        settings: CubeSettings,
        *,
        expected_chips: int,
        inputs: Sequence[Any] = (),
        overwrite: bool = False,
        created_by: str = "xchm.chips",
    ) -> None:
        import zarr

        self.location = cube_location(path)
        self.path: Path | Location = self.location.path if self.location.is_local else self.location
        self.settings = settings
        self.inputs = list(inputs)
        self.created_by = created_by
        prepare_store(self.location, overwrite)
        # zarr.json and the attrs that make the folder a (still incomplete) cube: one write.
        self.group: Any = zarr.create_group(
            store=cube_store(self.location),
            zarr_format=3,
            attributes={
                "xchm": {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "complete": False}
            },
        )
        s = settings
        chip_bytes = (len(s.bands) * np.dtype(s.dtype).itemsize + 4 * s.labeled) * s.window**2
        n_buckets = max(1, math.ceil(expected_chips * chip_bytes / _BUCKET_BYTES))
        self._buckets = [_Bucket() for _ in range(n_buckets)]
        self._rng = np.random.default_rng(s.seed)
        self._removed = dict.fromkeys(FILTER_RULES, 0)
        self._candidates = 0
        self._blocks: dict[tuple[Any, ...], int] = {}
        self._given_split = False
        # Split units of the kept chips: key -> id, and per id its group and whether
        # a chip lies wholly inside it (see _units).
        self._unit_ids: dict[tuple[Any, ...], int] = {}
        self._unit_groups: list[str] = []
        self._unit_whole: list[bool] = []

    # -- adding chips ---------------------------------------------------------------
    def add(
        self,
        image: np.ndarray,
        height: np.ndarray | None,
        *,
        scene: str | np.ndarray,
        crs: str | np.ndarray,
        date: np.datetime64 | np.ndarray | None,
        origin_x: np.ndarray,
        origin_y: np.ndarray,
        block_first: np.ndarray,
        block_last: np.ndarray | None = None,
        block_key: str | np.ndarray | None = None,
        split: np.ndarray | None = None,
    ) -> int:
        """Filter a batch of chips and stage the kept ones.

        Parameters
        ----------
        image, height
            ``(k, band, window, window)`` in the cube's dtype (nodata marks missing
            pixels) and ``(k, window, window)`` metres with NaN for missing; height
            is None for an unlabeled cube (and only then).
        scene, crs, date
            Source scene id, its CRS as a string, its acquisition date (or None):
            one for the batch, or an array with one per chip.
        origin_x, origin_y
            Map coordinates of each chip's upper-left corner.
        block_first, block_last
            ``(k, 2)`` block (row, col) of each chip's first and last pixel in the
            scene's block grid; ``block_last`` only when chips may straddle blocks.
        block_key
            Which grid the blocks belong to (one, or one per chip), for the block
            split and the ``block`` ids; default: the scene (importers pass the CRS
            of map-unit blocks, so that blocks are shared across files).
        split
            Split label of each chip given by the source (importers'
            ``split="source"``), instead of the settings' rule.

        Returns
        -------
        int
            How many chips were staged (the split buffer, decided with the labels in
            :meth:`finish`, may still remove some).
        """
        s = self.settings
        if (height is not None) != s.labeled:
            raise InputError(
                "a labeled cube needs a height batch with every image batch"
                if s.labeled
                else "this cube is unlabeled (labeled=False): pass height=None"
            )
        k = len(image)
        if k == 0:
            return 0
        self._candidates += k
        n_valid = _valid_pixels(image, s.nodata).sum(axis=(1, 2))
        missing = _too_few(n_valid, s)
        if height is not None:
            missing |= _too_few(np.isfinite(height).sum(axis=(1, 2)), s)
        keep = ~missing
        self._removed["missing"] += int(missing.sum())
        if s.drop_no_positive and height is not None:
            with np.errstate(invalid="ignore"):
                positive = (np.where(np.isfinite(height), height, 0) > 0).any(axis=(1, 2))
            self._removed["no_positive"] += int((keep & ~positive).sum())
            keep &= positive
        scenes = _per_chip(scene, k, object)
        keys = scenes if block_key is None else _per_chip(block_key, k, object)
        first = np.asarray(block_first, dtype=np.int64).reshape(-1, 2)
        last = first if block_last is None else np.asarray(block_last, dtype=np.int64)
        last = last.reshape(-1, 2)
        block_ids = np.array(
            [self._block_id(g, r, c) for g, (r, c) in zip(keys, first, strict=True)],
            dtype=np.int64,
        )
        given = np.full(k, "", dtype=object)
        if split is not None:
            given = _given_labels(split, k)
            self._given_split = True
        idx = np.flatnonzero(keep)
        if len(idx) == 0:
            return 0
        units = self._units(scenes, keys, origin_x, origin_y, first, last, idx, split is None)
        meta = {
            "scene": scenes[idx],
            "crs": _per_chip(crs, k, object)[idx],
            "origin_x": np.asarray(origin_x, dtype=np.float64)[idx],
            "origin_y": np.asarray(origin_y, dtype=np.float64)[idx],
            "date": _per_chip("NaT" if date is None else date, k, "datetime64[D]")[idx],
            "split": given[idx],
            "block": block_ids[idx],
            "n_valid": n_valid[idx].astype(np.int64),
            "unit": units,
            "first": first[idx],
            "last": last[idx],
        }
        which = self._rng.integers(len(self._buckets), size=len(idx))
        for b in np.unique(which):
            sel = idx[which == b]
            bucket = self._buckets[b]
            bucket.images.append(np.asarray(image[sel], dtype=s.dtype))
            if height is not None:
                bucket.heights.append(np.asarray(height[sel], dtype=np.float32))
            bucket.meta.append({key: v[which == b] for key, v in meta.items()})
            if bucket.buffered >= CHIPS_PER_CHUNK:
                self._stage(int(b))
        return len(idx)

    def _units(
        self,
        scenes: np.ndarray,
        keys: np.ndarray,
        origin_x: np.ndarray,
        origin_y: np.ndarray,
        first: np.ndarray,
        last: np.ndarray,
        idx: np.ndarray,
        by_rule: bool,
    ) -> np.ndarray:
        """Register the split unit of each kept chip ``idx``; return their unit ids.

        Labels are decided in :meth:`finish`, once every unit is known (ranked within
        its group, see :mod:`xchm.chips.splits`). A block counts as a unit to rank
        only with a chip wholly inside it, which no split buffer can remove. Chips
        with a label given by the source have no unit (-1).
        """
        if not by_rule:
            return np.full(len(idx), -1, dtype=np.int64)
        method = self.settings.split.method
        ids = np.empty(len(idx), dtype=np.int64)
        for n, i in enumerate(idx):
            key: tuple[Any, ...]
            if method == "scene":
                key, group, whole = (str(scenes[i]),), str(scenes[i]), True
            elif method == "random":
                x, y = origin_x[i], origin_y[i]
                key, group, whole = (str(scenes[i]), x, y), str(scenes[i]), True
            else:
                (r, c), g = first[i], str(keys[i])
                key, group = (g, int(r), int(c)), g
                whole = bool((last[i] == first[i]).all())
            unit = self._unit_ids.setdefault(key, len(self._unit_ids))
            if unit == len(self._unit_groups):
                self._unit_groups.append(group)
                self._unit_whole.append(whole)
            else:
                self._unit_whole[unit] |= whole
            ids[n] = unit
        return ids

    def _decide(self, meta: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Return each staged chip's label and whether it survives the split buffer."""
        rule = self.settings.split
        labels = meta["split"].copy()
        keep = np.ones(len(labels), dtype=bool)
        ruled = meta["unit"] >= 0
        if not ruled.any():
            return labels, keep
        keys = list(self._unit_ids)
        ranked = {
            key: self._unit_groups[u] for key, u in self._unit_ids.items() if self._unit_whole[u]
        }
        assigned = rule.assign(ranked)
        # A block without a chip of its own wholly inside is labelled by its hash alone.
        unit_labels = np.array([assigned.get(k) or rule.label(*k) for k in keys], dtype=object)
        labels[ruled] = unit_labels[meta["unit"][ruled]]
        if rule.method != "block":
            return labels, keep
        first, last = meta["first"], meta["last"]
        for i in np.flatnonzero(ruled & (first != last).any(axis=1)):
            group = keys[meta["unit"][i]][0]
            (r0, c0), (r1, c1) = first[i], last[i]
            keep[i] = all(
                self._block_label(rule, unit_labels, (group, int(r), int(c))) == labels[i]
                for r in range(r0, r1 + 1)
                for c in range(c0, c1 + 1)
            )
        return labels, keep

    def _block_label(self, rule: SplitRule, unit_labels: np.ndarray, key: tuple[Any, ...]) -> str:
        unit = self._unit_ids.get(key)
        return rule.label(*key) if unit is None else str(unit_labels[unit])

    def _block_id(self, scene: str, row: int, col: int) -> int:
        return self._blocks.setdefault((scene, int(row), int(col)), len(self._blocks))

    def _stage(self, b: int, *, final: bool = False) -> None:
        """Append a bucket's buffered chips to its staging arrays (whole chunks)."""
        bucket = self._buckets[b]
        if not bucket.images:
            return
        images = np.concatenate(bucket.images)
        heights = np.concatenate(bucket.heights) if bucket.heights else None
        n = len(images) if final else len(images) // CHIPS_PER_CHUNK * CHIPS_PER_CHUNK
        if n == 0:
            return
        image_arr, height_arr = self._staging_arrays(b, images.shape[1:], images.dtype)
        image_arr.append(images[:n])
        if heights is not None and height_arr is not None:
            height_arr.append(heights[:n])
            bucket.heights = [heights[n:]] if n < len(heights) else []
        bucket.staged += n
        bucket.images = [images[n:]] if n < len(images) else []

    def _staging_arrays(
        self, b: int, chip_shape: tuple[int, ...], dtype: Any
    ) -> tuple[Any, Any | None]:
        """Return bucket ``b``'s staged image and height arrays (height None: unlabeled)."""
        name, height_name = f"{_STAGING}/image_{b}", f"{_STAGING}/height_{b}"
        labeled = self.settings.labeled
        if name in self.group:
            return self.group[name], self.group[height_name] if labeled else None
        w = self.settings.window
        from zarr.codecs import ZstdCodec

        fast = ZstdCodec(level=1)
        image = self.group.create_array(
            name,
            shape=(0, *chip_shape),
            chunks=(CHIPS_PER_CHUNK, *chip_shape),
            dtype=dtype,
            compressors=fast,
        )
        if not labeled:
            return image, None
        height = self.group.create_array(
            height_name,
            shape=(0, w, w),
            chunks=(CHIPS_PER_CHUNK, w, w),
            dtype="float32",
            compressors=fast,
            fill_value=np.nan,
        )
        return image, height

    # -- finishing ----------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Shuffle the staged chips into the final arrays; return the cube's attrs."""
        s = self.settings
        for b in range(len(self._buckets)):
            self._stage(b, final=True)
        sizes = [bucket.staged for bucket in self._buckets]
        if sum(sizes) == 0:
            raise self._nothing_kept()
        perms = [self._rng.permutation(size) for size in sizes]
        staged = {
            key: np.concatenate(
                [
                    np.concatenate([m[key] for m in bk.meta])[p]
                    for bk, p in zip(self._buckets, perms, strict=True)
                    if bk.meta
                ]
            )
            for key in (*CHIP_ARRAYS, "n_valid", "unit", "first", "last")
        }
        # Labels need every unit, so they (and the split buffer) are decided only now.
        staged["split"], keep = self._decide(staged)
        self._removed["split_buffer"] += int((~keep).sum())
        ends = np.cumsum(sizes)
        perms = [p[keep[end - len(p) : end]] for p, end in zip(perms, ends, strict=True)]
        meta = {key: staged[key][keep] for key in (*CHIP_ARRAYS, "n_valid")}
        n = len(meta["n_valid"])
        if n == 0:
            raise self._nothing_kept()
        self._warn_if_split_empty(meta["split"])
        image_out, height_out = self._final_arrays(n)
        sampler = _PixelSampler(meta["n_valid"], s.stats_sample, s.seed)
        carry_img: list[np.ndarray] = []
        carry_h: list[np.ndarray] = []  # stays empty for an unlabeled cube
        start = 0
        for b, perm in enumerate(perms):
            if len(perm) == 0:
                continue
            carry_img.append(self.group[f"{_STAGING}/image_{b}"][...][perm])
            if height_out is not None:
                carry_h.append(self.group[f"{_STAGING}/height_{b}"][...][perm])
            images = np.concatenate(carry_img)
            heights = np.concatenate(carry_h) if carry_h else None
            last = b == len(perms) - 1 or not any(len(p) for p in perms[b + 1 :])
            m = len(images) if last else len(images) // CHIPS_PER_SHARD * CHIPS_PER_SHARD
            if m:
                image_out[start : start + m] = images[:m]
                if heights is not None and height_out is not None:
                    height_out[start : start + m] = heights[:m]
                sampler.collect(images[:m], start, s.nodata)
                start += m
            carry_img = [images[m:]]
            carry_h = [] if heights is None else [heights[m:]]
        for key, dtype in CHIP_ARRAYS.items():
            values = meta[key]
            arr = self.group.create_array(
                key,
                shape=(n,),
                chunks=(min(n, 65536),),
                dtype=dtype if dtype != "str" else str,
                compressors=compressors(),
                dimension_names=("chip",),
            )
            arr[:] = values.astype(str) if dtype == "str" else values
        self._write_conventions(meta["crs"])
        stats = statistics_from_pixels(sampler.pixels())
        attrs = self._attrs(n, stats, sampler.total_valid, sampler.picked)
        del self.group[_STAGING]
        self.group.attrs.update(attrs)
        # Complete: the attrs identify the cube from now on (see the module docstring).
        self.location.join(MARKER).remove(missing_ok=True)
        # Last: any later write of the group's zarr.json would drop it again.
        from xchm.inference.to_zarr import consolidate

        consolidate(self.group.store)
        return attrs

    def _write_conventions(self, crs: np.ndarray) -> None:
        """Make a plain ``xr.open_zarr`` give what :meth:`ChipCube.to_xarray` gives.

        The per-chip arrays and the band names become coordinates of ``image`` and
        ``height`` (their ``coordinates`` attribute), and, when every chip has the
        same CRS, a ``spatial_ref`` variable as rioxarray writes it ties them to that
        CRS (``grid_mapping``), so ``.rio.crs`` gives it.
        """
        import xarray as xr

        bands = self.group.create_array(
            BAND_ARRAY, shape=(len(self.settings.bands),), dtype=str, dimension_names=("band",)
        )
        bands[:] = np.array(self.settings.bands, dtype=str)
        names = [*CHIP_ARRAYS, BAND_ARRAY]
        mapping: dict[str, str] = {}
        found = set(crs.astype(str).tolist())
        if len(found) == 1 and "" not in found:
            import rioxarray  # noqa: F401  (registers .rio)

            ref = xr.DataArray(0).rio.write_crs(found.pop()).coords[CRS_ARRAY]
            arr = self.group.create_array(
                CRS_ARRAY, shape=(), dtype="int64", dimension_names=(), attributes=dict(ref.attrs)
            )
            arr[...] = 0
            names.append(CRS_ARRAY)
            mapping = {"grid_mapping": CRS_ARRAY}
        for name in ("image", "height") if self.settings.labeled else ("image",):
            self.group[name].attrs.update({"coordinates": " ".join(names), **mapping})

    def _nothing_kept(self) -> InputError:
        return InputError(
            f"no chip passed the filters ({self._candidates} candidates; removed: "
            f"{self._removed}); check nodata, min_valid and the CHM's units"
        )

    def _warn_if_split_empty(self, labels: np.ndarray) -> None:
        """Warn, with the counts, when a label with a non-zero fraction has no chip.

        Not for labels given by the source, nor for an unlabeled cube: pretraining
        reads every chip of it unless told a split.
        """
        rule = self.settings.split
        if self._given_split or not self.settings.labeled:
            return
        names, counts = np.unique(labels.astype(str), return_counts=True)
        chips = dict(zip(names.tolist(), counts.tolist(), strict=True))
        empty = [name for name in rule.fractions if name not in chips]
        if not empty:
            return
        units = sum(self._unit_whole)
        what = {"block": "block", "scene": "scene", "random": "chip"}[rule.method]
        what += "" if units == 1 else "s"
        advice = {
            "block": "a smaller block_size (CLI: --block-size), more or larger scenes",
            "scene": "more scenes, or split_by='block'",
            "random": "more chips",
        }[rule.method]
        warnings.warn(
            f"split {'/'.join(empty)} has no chip: {units} {what} with chips for "
            f"{len(rule.fractions)} splits {dict(rule.fractions)} (chips per split: {chips}); "
            f"build again with {advice}, or leave {'/'.join(empty)} out of fractions",
            XCHMWarning,
            stacklevel=5,  # build's caller (past finish, build and renamed_keywords)
        )

    def _final_arrays(self, n: int) -> tuple[Any, Any | None]:
        """Create the final image and height arrays (height None: unlabeled)."""
        s = self.settings
        w, nb = s.window, len(s.bands)
        shard = min(CHIPS_PER_SHARD, math.ceil(n / CHIPS_PER_CHUNK) * CHIPS_PER_CHUNK)
        common = {"compressors": compressors()}
        fill = s.nodata if s.nodata is not None else 0
        image = self.group.create_array(
            "image",
            shape=(n, nb, w, w),
            chunks=(CHIPS_PER_CHUNK, nb, w, w),
            shards=(shard, nb, w, w),
            dtype=s.dtype,
            fill_value=fill,
            **common,
            dimension_names=("chip", "band", "y", "x"),
        )
        if not s.labeled:
            return image, None
        height = self.group.create_array(
            "height",
            shape=(n, w, w),
            chunks=(CHIPS_PER_CHUNK, w, w),
            shards=(shard, w, w),
            dtype="float32",
            fill_value=np.nan,
            **common,
            dimension_names=("chip", "y", "x"),
        )
        return image, height

    def _attrs(self, n: int, stats: Any, total_valid: int, picked: int) -> dict[str, Any]:
        s = self.settings
        splits: dict[str, int] = {}
        for label in self.group["split"][...]:
            splits[str(label)] = splits.get(str(label), 0) + 1
        return {
            "xchm": {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "complete": True},
            "labeled": s.labeled,
            "bands": list(s.bands),
            "window": s.window,
            "pixel_size": s.pixel_size,
            "nodata": s.nodata,
            "chips": n,
            "statistics": {
                "bands": [{"clip_max": x.clip_max, "mean": x.mean, "std": x.std} for x in stats],
                "method": (
                    "reference procedure: per band clip_max = mean + 3 sd of the raw values of "
                    "sampled pixels valid in every band; mean and sd of the values clipped to "
                    "[0, clip_max] and divided by it"
                ),
                "sample": s.stats_sample,
                "seed": s.seed,
                "pixels_sampled": picked,
                "pixels_valid": total_valid,
            },
            "filters": {
                "rules": dict(FILTER_RULES if s.labeled else UNLABELED_FILTER_RULES),
                "min_valid": s.min_valid,
                "drop_no_positive": s.drop_no_positive,
                "candidates": self._candidates,
                "removed": dict(self._removed),
                "kept": n,
            },
            "split": {
                **({"method": "source"} if self._given_split else s.split.to_dict()),
                "counts": dict(sorted(splits.items())),
            },
            "provenance": {
                "created_by": self.created_by,
                "inputs": self.inputs,
                "xchm_version": __version__,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        }


class _PixelSampler:
    """Pick ``sample`` valid pixels of the final image array as band_statistics does.

    ``band_statistics(image, axis=1)`` orders valid pixels chip by chip, row by row,
    and draws ``choice(n_valid, sample, replace=False)``; the same draw here selects
    the same set of pixels, gathered slab by slab as the chips are written.
    """

    def __init__(self, n_valid: np.ndarray, sample: int, seed: int) -> None:
        self.ends = np.cumsum(n_valid)
        self.total_valid = int(self.ends[-1]) if len(self.ends) else 0
        if self.total_valid > sample:
            pick = np.random.default_rng(seed).choice(self.total_valid, sample, replace=False)
            self.pick = np.sort(pick)
        else:
            self.pick = np.arange(self.total_valid)
        self.picked = len(self.pick)
        self._parts: list[np.ndarray] = []

    def collect(self, images: np.ndarray, start: int, nodata: float | None) -> None:
        """Gather the picked pixels of chips ``start : start + len(images)``."""
        first = int(self.ends[start - 1]) if start else 0
        last = int(self.ends[start + len(images) - 1])
        lo, hi = np.searchsorted(self.pick, [first, last])
        if hi == lo:
            return
        valid = _valid_pixels(images, nodata).reshape(-1)
        flat = np.flatnonzero(valid)[self.pick[lo:hi] - first]
        bands = images.shape[1]
        by_band = np.moveaxis(images, 1, 0).reshape(bands, -1)
        self._parts.append(by_band[:, flat].astype(np.float64))

    def pixels(self) -> np.ndarray:
        if not self._parts:
            raise InputError("no image pixel is valid in every band; cannot compute statistics")
        return np.concatenate(self._parts, axis=1)


def _too_few(n_valid: np.ndarray, s: CubeSettings) -> np.ndarray:
    """Chips with fewer than ``min_valid`` of their pixels valid (or none at all)."""
    return (n_valid < s.min_valid * s.window * s.window) | (n_valid == 0)


def _valid_pixels(image: np.ndarray, nodata: float | None) -> np.ndarray:
    """(k, band, h, w) -> (k, h, w): valid in every band (finite, not nodata)."""
    from xchm.inference.kernel import valid_mask

    return valid_mask(image, nodata, axis=1)


def _per_chip(value: Any, k: int, dtype: Any) -> np.ndarray:
    """One value for the batch, or one per chip, as a length-``k`` array."""
    values = np.asarray(value, dtype=dtype)
    if values.ndim == 0:
        return np.full(k, value, dtype=dtype)
    if values.shape != (k,):
        raise InputError(f"expected one value or {k} (one per chip), got shape {values.shape}")
    return values


def _given_labels(split: np.ndarray, k: int) -> np.ndarray:
    labels = _per_chip(split, k, object)
    unknown = sorted(set(labels.tolist()) - set(SPLITS))
    if unknown:
        raise InputError(f"split labels must be among {SPLITS}, got {unknown}")
    return labels
