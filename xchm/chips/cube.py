"""Open and inspect a chip cube (the read side of docs/chip-cube-format.md).

A cube is *labeled* (image and height chips, for ``xchm.train``) or *unlabeled*
(image chips alone, built from imagery without CHM, for ``xchm.pretrain``); the
group attr ``labeled`` says which, and a cube without it (written before the attr
existed) is labeled. Reading heights from an unlabeled cube is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xchm._compat import renamed_keywords
from xchm.chips.layout import CHIP_ARRAYS, cube_attrs, cube_location, cube_store
from xchm.chips.store import KIND
from xchm.errors import InputError, PathNotFoundError
from xchm.models.card import BandStats, ModelCard
from xchm.outputs import output_kind
from xchm.storage import Location

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["ChipCube", "open_cube"]


#: Train chips read at most for the train-mean baseline (of ``xchm.evaluate`` and
#: ``xchm.train``): evenly spread whole chunks; stored chips are uniformly shuffled, so
#: any chunks are a random sample.
BASELINE_MAX_CHIPS = 16384


class ChipCube:
    """A chip cube (on disk or in an object store), or a selection of its chips.

    Use :func:`xchm.chips.open` rather than the constructor. ``path`` is the cube's
    directory: a :class:`pathlib.Path` on the local disk, the
    :class:`~xchm.storage.Location` of a URL (``str()`` gives it as typed);
    :attr:`location` is a Location either way.

    Examples
    --------
    >>> cube = xchm.chips.open("chips.zarr")  # doctest: +SKIP
    >>> len(cube), cube.bands, cube.splits  # doctest: +SKIP
    (1234, ('nir', 'red', 'green'), {'train': 990, 'val': 244})
    >>> train = cube.sel(split="train")  # doctest: +SKIP
    >>> ds = train.to_xarray()  # lazy image, height and chip coordinates  # doctest: +SKIP
    >>> images = train.read_images([0, 1])  # image chips only (any cube)  # doctest: +SKIP
    """

    def __init__(
        self, path: Path | Location, group: Any, attrs: dict[str, Any], index: np.ndarray | None
    ):
        self.path = path
        self._group = group
        self.attrs = attrs
        self._index = index

    # -- what is in it -------------------------------------------------------------------
    @property
    def location(self) -> Location:
        """Where the cube is: a :class:`~xchm.storage.Location` (local path or URL).

        A URL's Location carries the ``storage_options`` the cube was opened with.
        """
        return cube_location(self.path)

    def __len__(self) -> int:
        return int(self.attrs["chips"]) if self._index is None else len(self._index)

    def __repr__(self) -> str:
        sel = "" if self._index is None else f" (selection of {self.attrs['chips']})"
        sel += "" if self.labeled else ", unlabeled"
        return (
            f"<ChipCube {str(self.path)!r}: {len(self)} chips{sel}, bands {self.bands}, "
            f"{self.window}x{self.window} px at {self.pixel_size} m, splits {self.splits}>"
        )

    @property
    def labeled(self) -> bool:
        """Whether the cube has height chips (False: imagery alone, for pretraining).

        A cube written before the ``labeled`` attr existed is labeled.
        """
        return bool(self.attrs.get("labeled", True))

    def check_labeled(self, use: str = "reading heights") -> None:
        """Raise :class:`~xchm.errors.InputError` if the cube is unlabeled.

        Parameters
        ----------
        use
            What needs the heights, for the message (e.g. ``"ChipStream"``).

        Examples
        --------
        >>> cube.check_labeled("training")  # doctest: +SKIP
        """
        if not self.labeled:
            raise InputError(
                f"chip cube {self.path} is unlabeled (built from imagery alone): it has image "
                f"chips but no heights, so {use} is not possible. An unlabeled cube serves "
                "self-supervised pretraining (xchm.pretrain), not xchm.train; to train or "
                "evaluate, build a labeled cube with a CHM for every scene"
            )

    @property
    def bands(self) -> tuple[str, ...]:
        """Band names of ``image``, in order."""
        return tuple(self.attrs["bands"])

    @property
    def window(self) -> int:
        """Chip side in pixels."""
        return int(self.attrs["window"])

    @property
    def pixel_size(self) -> float | None:
        """Pixel size in metres (None if the sources had no georeferencing)."""
        value = self.attrs.get("pixel_size")
        return None if value is None else float(value)

    @property
    def nodata(self) -> float | None:
        """Value marking missing image pixels (NaN for float images), or None."""
        return self.attrs.get("nodata")

    @property
    def statistics(self) -> tuple[BandStats, ...]:
        """Per-band normalisation statistics (the reference procedure), for a ModelCard."""
        return tuple(BandStats(**b) for b in self.attrs["statistics"]["bands"])

    @property
    def filters(self) -> dict[str, Any]:
        """Filter settings, candidates, and how many chips each rule removed."""
        return dict(self.attrs["filters"])

    @property
    def splits(self) -> dict[str, int]:
        """Chips per split label in this cube or selection."""
        labels, counts = np.unique(self.coord("split"), return_counts=True)
        return {str(k): int(v) for k, v in zip(labels, counts, strict=True)}

    @property
    def index(self) -> np.ndarray:
        """Positions of the selected chips in the stored arrays (sorted)."""
        return np.arange(len(self)) if self._index is None else self._index

    @property
    def image(self) -> Any:
        """The stored ``image`` Zarr array (all chips, ignoring a selection)."""
        return self._group["image"]

    @property
    def height(self) -> Any:
        """The stored ``height`` Zarr array (all chips, ignoring a selection).

        Raises
        ------
        InputError
            If the cube is unlabeled (it has no ``height`` array).
        """
        self.check_labeled("reading heights (ChipCube.height)")
        return self._group["height"]

    def coord(self, name: str) -> np.ndarray:
        """Return a per-chip coordinate (``scene``, ``crs``, ``origin_x``, ...) of the selection."""
        if name not in CHIP_ARRAYS:
            raise InputError(f"unknown chip coordinate {name!r}; choose from {list(CHIP_ARRAYS)}")
        values = np.asarray(self._group[name][...])
        if CHIP_ARRAYS[name] == "str":
            values = np.array(values.tolist(), dtype=str)  # zarr gives StringDType
        return values if self._index is None else values[self._index]

    # -- selecting and reading -----------------------------------------------------------
    def sel(self, *, split: str | Sequence[str] | None = None, scene: Any = None) -> ChipCube:
        """Chips of the given split label(s) and/or scene id(s).

        Examples
        --------
        >>> cube.sel(split="val").splits  # doctest: +SKIP
        {'val': 244}
        """
        keep = np.ones(len(self), dtype=bool)
        for name, wanted in (("split", split), ("scene", scene)):
            if wanted is None:
                continue
            wanted = [wanted] if isinstance(wanted, str) else list(wanted)
            values = self.coord(name)
            missing = sorted(set(wanted) - set(np.unique(values).tolist()))
            if missing:
                raise InputError(
                    f"{name} {missing} not in this cube; it has {sorted(set(values.tolist()))}"
                )
            keep &= np.isin(values, wanted)
        return ChipCube(self.path, self._group, self.attrs, self.index[keep])

    def read(self, positions: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image and height chips at ``positions`` of this selection (eager).

        Raises
        ------
        InputError
            If the cube is unlabeled; use :meth:`read_images` there.
        """
        self.check_labeled("reading heights (ChipCube.read; read_images reads the images)")
        where, back = self._sorted_positions(positions)
        image = self.image.get_orthogonal_selection((where,))
        height = self.height.get_orthogonal_selection((where,))
        return image[back], height[back]

    def read_images(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Image chips at ``positions`` of this selection (eager), labeled cube or not.

        Examples
        --------
        >>> cube.read_images([2, 0]).shape  # doctest: +SKIP
        (2, 3, 64, 64)
        """
        where, back = self._sorted_positions(positions)
        return np.asarray(self.image.get_orthogonal_selection((where,)))[back]

    def finite_heights(self, max_chips: int | None = None) -> Iterator[np.ndarray]:
        """Yield the finite heights of the selection, one stored chunk at a time (1-D).

        Heights only, never the images. With ``max_chips``, a larger selection is read
        from whole chunks evenly spread over it, about ``max_chips`` chips in all: what
        the train-mean baseline of :func:`xchm.evaluate` and of :func:`xchm.train` reads.

        Examples
        --------
        >>> sum(h.size for h in cube.sel(split="val").finite_heights())  # doctest: +SKIP
        147456
        """
        index = self.index
        if index.size == 0:
            return
        array = self.height
        size = int(array.chunks[0])
        ids = index // size
        groups = [(int(c) * size, index[ids == c] - int(c) * size) for c in np.unique(ids)]
        if max_chips is not None and index.size > max_chips:
            keep = max(1, max_chips // max(1, index.size // len(groups)))
            picked = np.unique(np.linspace(0, len(groups) - 1, keep).round().astype(int))
            groups = [groups[i] for i in picked]
        for start, offsets in groups:
            block = np.asarray(array[start : start + size])[offsets]
            yield block[np.isfinite(block)]

    def _sorted_positions(
        self, positions: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return stored positions in increasing order (one pass over chunks) and the way back."""
        where = self.index[np.asarray(positions, dtype=np.int64)]
        order = np.argsort(where)
        return where[order], np.argsort(order)

    def to_xarray(self) -> xr.Dataset:
        """Return a lazy Dataset: ``image`` (chip, band, y, x), ``height`` (chip, y, x), coords.

        Pixel dims ``y``/``x`` count pixels inside a chip; each chip's map position is
        ``origin_x``/``origin_y`` (upper-left corner) in its ``crs``. An unlabeled
        cube's Dataset has no ``height``.
        """
        import dask.array as da
        import xarray as xr

        def lazy(array: Any) -> Any:
            data = da.from_zarr(array)
            return data if self._index is None else data[self._index]

        variables: dict[str, Any] = {"image": (("chip", "band", "y", "x"), lazy(self.image))}
        if self.labeled:
            variables["height"] = (("chip", "y", "x"), lazy(self.height), {"units": "m"})
        coords: dict[str, Any] = {name: ("chip", self.coord(name)) for name in CHIP_ARRAYS}
        coords["band"] = ("band", list(self.bands))
        attrs = {k: v for k, v in self.attrs.items() if k in ("window", "pixel_size", "nodata")}
        return xr.Dataset(variables, coords=coords, attrs=attrs)

    def model_card(self, preset: str, **kwargs: Any) -> ModelCard:
        """Make a ModelCard for training on this cube: its bands, statistics and pixel size.

        Examples
        --------
        >>> cube.model_card("test-tiny").bands  # doctest: +SKIP
        ('nir', 'red', 'green')
        """
        stats = self.attrs["statistics"]
        source = f"chip cube {self.path.name}: {stats['pixels_sampled']} sampled pixels"
        options: dict[str, Any] = {
            "bands": self.bands,
            "statistics": self.statistics,
            "statistics_source": source,
            "window": self.window,
        }
        if self.pixel_size is not None:
            options["pixel_size"] = self.pixel_size
        return ModelCard(preset=preset, **{**options, **kwargs})

    @renamed_keywords(path="output")
    def preview(self, output: str | Path | Location, **kwargs: Any) -> Path | Location:
        """Write a PNG grid of image/height chip pairs (images only if unlabeled).

        See :func:`xchm.chips.preview.preview` (``output``: the ``.png`` file, a
        local path or a URL; formerly ``path=``, which still works for one release
        with a ``FutureWarning``).

        Examples
        --------
        >>> cube.preview("preview.png", n=8, split="val")  # doctest: +SKIP
        PosixPath('preview.png')
        """
        from xchm.chips.preview import preview

        return preview(self, output, **kwargs)

    def _repr_html_(self) -> str:
        """Show the cube as a compact table in Jupyter (as :meth:`summary`; text escaped)."""
        from xchm._html import html_grid, html_table

        a = self.attrs
        bands = html_grid(
            ["band", "clip max", "mean", "std"],
            [
                [b, s.clip_max, s.mean, s.std]
                for b, s in zip(self.bands, self.statistics, strict=True)
            ],
        )
        chips = f"{len(self)}"
        if self._index is not None:
            chips += f" (a selection of {a['chips']})"
        rows = [
            ("chips", chips),
            ("labels", "image and height" if self.labeled else "image only (unlabeled)"),
            ("bands", bands),
            ("window", f"{self.window} px"),
            ("pixel size", "unknown" if self.pixel_size is None else f"{self.pixel_size:g} m"),
            ("nodata", self.nodata),
            ("splits", html_grid(["split", "chips"], self.splits.items())),
            ("split method", a.get("split", {}).get("method", "")),
            ("scenes", len(np.unique(self.coord("scene")))),
            ("created", a.get("provenance", {}).get("created", "")),
        ]
        return html_table("xchm.ChipCube", rows, subtitle=str(self.path))

    def summary(self) -> str:
        """Describe the cube in a few lines (what ``xchm chips info`` prints)."""
        a = self.attrs
        f = a["filters"]
        # no_positive never applies without heights: leave it out rather than show a 0.
        removed = {k: v for k, v in f["removed"].items() if self.labeled or k != "no_positive"}
        labels = (
            "labeled: image and height chips"
            if self.labeled
            else "unlabeled: image chips only (imagery alone, for xchm.pretrain)"
        )
        lines = [
            f"chip cube   {self.path}",
            f"chips       {len(self)} of {f['candidates']} candidates "
            f"(removed: {', '.join(f'{k} {v}' for k, v in removed.items())})",
            f"labels      {labels}",
            f"image       {self.image.dtype} {tuple(self.image.shape)}, bands {self.bands}, "
            f"nodata {self.nodata}",
            f"pixel size  {self.pixel_size} m, window {self.window} px",
            f"splits      {a['split']['method']}: {self.splits}",
            "statistics  "
            + "; ".join(
                f"{b} clip {s.clip_max:.4g} mean {s.mean:.4f} sd {s.std:.4f}"
                for b, s in zip(self.bands, self.statistics, strict=True)
            ),
            f"scenes      {len(np.unique(self.coord('scene')))}",
            f"created     {a['provenance']['created']} by {a['provenance']['created_by']} "
            f"(xchm {a['provenance']['xchm_version']})",
        ]
        return "\n".join(lines)


def open_cube(
    store: str | os.PathLike[str] | Location,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> ChipCube:
    """Open a finished chip cube, from a local directory or a URL.

    Parameters
    ----------
    store
        Directory of the cube (Zarr v3): a local path, a URL (``s3://``, ``gs://``,
        ``az://``, ``https://``, ``file://``...) or a :class:`~xchm.storage.Location`.
    storage_options
        fsspec options of the URL's backend (``key``, ``secret``, ``endpoint_url``...),
        overriding the environment (see docs/cloud.md); they travel with the cube
        (into :class:`~xchm.training.data.ChipStream` workers too).

    Returns
    -------
    ChipCube
        Reading chips from the store as they are asked for.

    Raises
    ------
    PathNotFoundError
        If there is no Zarr store at ``store`` (a URL is named exactly as typed).
    InputError
        If it is not a chip cube, is of an unknown version, or its build did not finish.
    StorageError
        If the object store refused access or could not be reached.

    Examples
    --------
    >>> cube = xchm.chips.open("chips.zarr")  # doctest: +SKIP
    >>> cube = xchm.chips.open("s3://chips/ak.zarr")  # doctest: +SKIP
    """
    import zarr

    loc = cube_location(store, storage_options)
    path: Path | Location = loc.path if loc.is_local else loc
    name = str(path)
    incomplete = InputError(
        f"chip cube {name} is incomplete: its build was interrupted or failed; build it "
        "again with overwrite=True"
    )
    if not loc.join("zarr.json").exists():
        if output_kind(path) == KIND:  # cut off before the build wrote its first file
            raise InputError(
                f"chip cube {name} is incomplete: its build was cut off before it wrote "
                "anything; build it again"
            )
        folder = "folder" if loc.is_local else "location"
        what = f"the {folder} does not exist" if not loc.exists() else "it has no zarr.json"
        raise PathNotFoundError(
            f"no Zarr store at {name}: {what}; pass the chip cube folder that "
            "xchm.chips.build wrote"
        )
    with loc._errors("open"):
        group = zarr.open_group(store=cube_store(loc, read_only=True), mode="r")
        meta = cube_attrs(group, name)
    if not meta.get("complete"):
        raise incomplete
    return ChipCube(path, group, dict(group.attrs), None)
