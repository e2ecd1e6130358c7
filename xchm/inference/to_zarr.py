"""``xchm.predict_to_zarr``: mosaics written region by region, resumable after a crash.

The store is laid out on the final grid first (metadata, coordinates and CRS, no
data), then filled one *region* (a block of whole Zarr chunks) at a time. A region
is marked done in the store's ``xchm_progress`` sub-group only after all its
chunks are written, and Zarr writes each chunk file atomically, so a run killed at
any moment leaves only whole chunks and an exact record of finished regions. A
restart checks that it is the same job (the *fingerprint*: the input's identity,
band selection, nodata, model, overlap, precision, grid and layout) and computes
only the regions not marked done; since every region is a pure function of the input, the
store ends identical to an uninterrupted run. A restart with anything different is
refused before any work (:class:`~xchm.errors.ResumeError`, naming what changed).

The store folder follows :mod:`xchm.outputs`: it is marked before anything is
written into it and the marker is removed once the fingerprint is in place (a laid
out store is recognised by its fingerprint; Zarr warns about foreign files in a
group). A store with a marker but no fingerprint was cut off while being laid out
and is laid out again; a folder xchm did not write is never touched.

The store may be a local folder or a URL (``s3://``, ``gs://``, ``az://``,
``file://``, ``memory://``), reached through :mod:`xchm.storage` (zarr v3
``LocalStore`` or ``FsspecStore``): the same guarantees hold, since an object store
writes each chunk object whole too. Tasks carry the store's URL and backend options
(never a local path), so workers write their chunks straight into it. When the last
region is done the store's metadata is consolidated (zarr v3 consolidated metadata in
the root ``zarr.json``), so a plain ``xr.open_zarr(url)`` reads it with one request;
a run that still has regions to compute first drops it (and sets ``xchm_status`` to
``"incomplete"``), so consolidated metadata is never stale.

With a ``distributed`` client active, a bounded number of regions is in flight on
the cluster at once (the scheduler never holds the whole mosaic's graph) and tasks
of a worker that dies are re-run by Dask elsewhere. Without one, regions are
computed one after the other with the current Dask scheduler.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xarray as xr

from xchm._compat import renamed_keywords
from xchm.errors import InputError, ResumeError
from xchm.inference.job import differences, job_fingerprint
from xchm.inference.predict import DEFAULT_CHUNK, predict
from xchm.inference.windows import scene_windows
from xchm.outputs import MARKER, output_kind, prepare_output_dir, shown
from xchm.storage import Location, PathOrURL, location

__all__ = ["predict_to_zarr", "consolidate", "DEFAULT_REGION_SIZE", "PROGRESS_GROUP"]

logger = logging.getLogger(__name__)

#: Target region side in pixels (rounded to whole chunks): 8192 px = 64 chunks of 1024.
DEFAULT_REGION_SIZE = 8192
#: Sub-group of the store that records the job's fingerprint and finished regions.
PROGRESS_GROUP = "xchm_progress"
#: The kind of output a store is, for :mod:`xchm.outputs`.
STORE_KIND = "prediction store"
#: A zarr format number.
ZarrFormat = Literal[2, 3]


@dataclass(frozen=True)
class Region:
    """One block of whole output chunks."""

    iy: int
    ix: int
    y: slice
    x: slice

    @property
    def pixels(self) -> int:
        """Pixels in the region."""
        return (self.y.stop - self.y.start) * (self.x.stop - self.x.start)


def _regions(shape: tuple[int, int], step: tuple[int, int]) -> list[Region]:
    return [
        Region(iy, ix, slice(y, min(y + step[0], shape[0])), slice(x, min(x + step[1], shape[1])))
        for iy, y in enumerate(range(0, shape[0], step[0]))
        for ix, x in enumerate(range(0, shape[1], step[1]))
    ]


def _region_step(region_size: int | tuple[int, int], chunks: tuple[int, int]) -> tuple[int, int]:
    sizes = (region_size, region_size) if isinstance(region_size, int) else tuple(region_size)
    if len(sizes) != 2 or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes
    ):
        raise InputError(
            f"region_size must be a positive integer or a (y, x) pair, got {region_size!r}"
        )
    return (
        max(1, round(sizes[0] / chunks[0])) * chunks[0],
        max(1, round(sizes[1] / chunks[1])) * chunks[1],
    )


#: zarr's warning that consolidated metadata is not (yet) in the zarr v3 specification;
#: zarr-python and xarray read it, and xchm writes it knowingly.
_CONSOLIDATED_WARNING = "Consolidated metadata is currently not part"


def _stored_fingerprint(loc: Location) -> tuple[dict[str, Any] | None, ZarrFormat]:
    """Return the fingerprint of a laid-out store (None: not laid out, or not a store).

    And the store's zarr format (3 unless an older xchm wrote it), which the later
    calls name so that zarr does not probe each group for both formats (two requests
    each on an object store).
    """
    progress = _open_progress(loc)
    if progress is None or "fingerprint" not in progress.attrs:
        return None, 3
    return dict(progress.attrs["fingerprint"]), 2 if progress.metadata.zarr_format == 2 else 3


def _open_progress(loc: Location) -> Any:
    import zarr
    from zarr.errors import NodeNotFoundError

    try:
        store = loc.zarr_store(read_only=True)
        return zarr.open_group(store, mode="r", path=PROGRESS_GROUP, use_consolidated=False)
    except (FileNotFoundError, NodeNotFoundError, NotADirectoryError):
        return None


def _is_store(folder: Location | os.PathLike[str]) -> bool:
    """Recognise a store written without a marker (by xchm before markers existed)."""
    import zarr

    try:
        store = location(folder).zarr_store(read_only=True)
        root = zarr.open_group(store, mode="r", use_consolidated=False)
    except Exception:  # noqa: BLE001 - not a Zarr group at all: not a store
        return False
    return root.attrs.get("xchm_status") in ("incomplete", "complete")


def _complete(store: Any, zarr_format: ZarrFormat) -> None:
    """Mark the store complete, then consolidate its metadata into the root ``zarr.json``.

    Both at completion only (again after a resume that had nothing left to do: the same
    bytes), so consolidated metadata always describes a finished store.
    """
    import zarr

    root = zarr.open_group(store, mode="r+", use_consolidated=False, zarr_format=zarr_format)
    root.attrs["xchm_status"] = "complete"
    consolidate(store, zarr_format)


def consolidate(store: Any, zarr_format: ZarrFormat = 3) -> None:
    """Write the consolidated metadata of every node into the root ``zarr.json``.

    What ``xr.open_zarr`` looks for first: without it, it warns ("Failed to open Zarr
    store with consolidated metadata") and lists the store node by node. zarr-python
    warns, while writing it, that consolidated metadata is not (yet) part of the zarr
    v3 specification; zarr-python and xarray read it, and xchm writes it knowingly
    (the warning is silenced here; reading gives none). Mosaic stores and chip cubes
    call it once complete.
    """
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _CONSOLIDATED_WARNING, UserWarning)
        zarr.consolidate_metadata(store, zarr_format=zarr_format)


def _initialise(
    loc: Location,
    store: Any,
    ds: xr.Dataset,
    fingerprint: dict[str, Any],
    grid: tuple[int, int],
) -> None:
    """Write the store's metadata and coordinates (no data) and an empty progress record.

    ``loc`` is an empty folder holding only the output marker; ``store`` its zarr
    store. The fingerprint is written last (its presence means "laid out"); then the
    marker goes.
    """
    import zarr

    template = ds.copy()
    template.attrs = {**template.attrs, "xchm_status": "incomplete"}
    chunks = tuple(fingerprint["chunks"])
    encoding: dict[Any, dict[str, Any]] = {}
    for name in ds.data_vars:
        mapping = _grid_mapping(ds[name])
        encoding[name] = {"chunks": chunks, **({"grid_mapping": mapping} if mapping else {})}
        if mapping:  # opened as the variable's coordinate by a plain xr.open_zarr
            template[name].attrs = {**template[name].attrs, "coordinates": mapping}
    with warnings.catch_warnings():  # Zarr lists the folder and finds the marker
        warnings.filterwarnings("ignore", "Object at .* is not recognized", UserWarning)
        template.to_zarr(
            store, mode="a", compute=False, consolidated=False, encoding=encoding, zarr_format=3
        )
    progress = zarr.open_group(store, mode="a", path=PROGRESS_GROUP, zarr_format=3)
    progress.create_array("done", shape=grid, chunks=(1, 1), dtype="uint8", fill_value=0)
    progress.attrs["fingerprint"] = fingerprint  # written last: its presence means "ready"
    loc.join(MARKER).remove(missing_ok=True)


def _grid_mapping(var: xr.DataArray) -> str | None:
    """Return the name of the variable's CRS coordinate (``spatial_ref``), if it has one.

    The store ties the variable to it twice: ``grid_mapping`` names it, as CF says;
    and a ``coordinates`` attribute naming it makes xarray's default
    ``decode_coords=True`` open it as a coordinate of the variable, where rioxarray's
    ``.rio.crs`` looks. xarray leaves a grid-mapping variable out of the
    ``coordinates`` it writes (not "technically" a coordinate under CF), so without
    the attribute ``xr.open_zarr(store)["chm"].rio.crs`` is None unless the reader
    passes ``decode_coords="all"`` (measured with xarray 2026.9, rioxarray 0.19).
    """
    mapping = var.encoding.get("grid_mapping")
    return str(mapping) if mapping and mapping in var.coords else None


def _prepare(
    loc: Location,
    store: Any,
    ds: xr.Dataset,
    fingerprint: dict[str, Any],
    grid: tuple[int, int],
    resume: bool,
    overwrite: bool,
) -> ZarrFormat:
    """Create, reuse or replace ``store`` (see :mod:`xchm.outputs`); return its zarr format.

    A resume is checked before anything in the store changes: a refused one leaves
    it as it was.
    """
    is_dir = loc.is_dir()
    kind = output_kind(loc) if is_dir else None
    ours = is_dir and (kind == STORE_KIND or (kind is None and _is_store(loc)))
    old, zarr_format = _stored_fingerprint(loc) if ours else (None, 3)
    if old is not None and resume and not overwrite:
        differ = differences(old, fingerprint)
        if differ:
            raise ResumeError(
                f"{shown(loc)} was written by a different job: {'; '.join(differ)}. Resume "
                "with the same input, bands, nodata, model and settings, or pass "
                "overwrite=True (CLI: --overwrite) to start over"
            )
        if kind is not None:
            loc.join(MARKER).remove(missing_ok=True)  # laid out: known by its fingerprint
        return zarr_format
    prepare_output_dir(
        loc,
        STORE_KIND,
        # Ours without a fingerprint: cut off while being laid out, no region written.
        overwrite=overwrite or (ours and old is None),
        legacy=_is_store,
        hint="pass resume=True (CLI: drop --no-resume) to continue it or overwrite=True "
        "(CLI: --overwrite) to replace it",
    )
    _initialise(loc, store, ds, fingerprint, grid)
    return 3


def _region_writer(ds: xr.Dataset, store: Any, zarr_format: ZarrFormat) -> Callable[[Region], Any]:
    """Return a function making the Delayed that computes and stores one region."""
    import dask
    import dask.array as dsa
    import zarr
    from dask.base import tokenize

    group = zarr.open_group(store, mode="r+", use_consolidated=False, zarr_format=zarr_format)
    names = list(ds.data_vars)
    targets: list[Any] = [group[str(name)] for name in names]

    def write(region: Region) -> Any:
        sources = [ds[name].data[region.y, region.x] for name in names]
        stored = dsa.store(
            sources,
            targets,
            regions=[(region.y, region.x)] * len(names),
            lock=False,
            compute=False,
            return_stored=False,
        )
        # One Delayed per region (store gives an empty array per variable).
        arrays = stored if isinstance(stored, tuple) else (stored,)
        return dask.delayed(_written, pure=True)(
            *arrays, dask_key_name=f"chm-region-{tokenize(arrays)}"
        )

    return write


def _written(*_: Any) -> None:
    """Join a region's store tasks (their results are empty arrays)."""


def _run_local(pending: list[Region], write: Callable[[Region], Any]) -> Iterator[Region]:
    for region in pending:
        write(region).compute()
        yield region


def _run_distributed(
    client: Any, pending: list[Region], write: Callable[[Region], Any], in_flight: int
) -> Iterator[Region]:
    from distributed import as_completed

    queue = iter(pending)
    futures: dict[Any, Region] = {}

    def submit() -> Any:
        region = next(queue, None)
        if region is None:
            return None
        future = client.compute(write(region))
        futures[future] = region
        return future

    first = [f for f in (submit() for _ in range(in_flight)) if f is not None]
    done = as_completed(first)
    try:
        for future in done:
            future.result()  # raises the task's error (after Dask's retries on worker loss)
            yield futures.pop(future)
            nxt = submit()
            if nxt is not None:
                done.add(nxt)
    finally:
        for future in futures:
            future.cancel()


def _summary(
    ds: xr.Dataset, windows: int, seconds: float, devices: int, computed: int, total: int
) -> str:
    """One line: area, regions computed and skipped, windows, rate overall and per device."""
    chm = ds["chm"]
    km2 = _km2_per_pixel(chm)
    area = f"{km2 * chm.size:.3f} km2, " if km2 else ""
    rate = windows / seconds if seconds > 0 else float("nan")
    return (
        f"xchm: {area}{chm.shape[0]}x{chm.shape[1]} px, {computed}/{total} regions computed "
        f"({total - computed} already done), {windows} windows in {seconds:.1f} s: "
        f"{rate:.1f} windows/s, {rate / max(devices, 1):.1f} per device ({devices} device(s))"
    )


@renamed_keywords(store="output")
def predict_to_zarr(
    obj: xr.DataArray | xr.Dataset,
    model: Any,
    output: PathOrURL,
    *,
    region_size: int | tuple[int, int] = DEFAULT_REGION_SIZE,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    in_flight: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    **predict_kwargs: Any,
) -> xr.Dataset:
    """Predict a canopy height map into a Zarr store region by region; resumable.

    Parameters
    ----------
    obj
        Imagery as for :func:`xchm.predict` (dask-backed for large scenes; in-memory
        input is chunked in 1024-pixel chunks). Its chunks are the store's chunks.
    model
        A checkpoint directory (what a cluster needs: every worker loads it from the
        path), a preset name, or a model object (in-process schedulers only).
    output
        The Zarr store to write, ending in ``.zarr``: a local path (or shared file
        system) or a URL (``s3://``, ``gs://``, ``az://``, ``file://``; credentials
        and endpoint from the standard environment, see ``docs/cloud.md``). It holds
        ``chm`` [and ``chm_std``] on the input grid with its CRS, plus a
        ``xchm_progress`` sub-group; once complete its metadata is consolidated.
        Formerly ``store=``, which still works for one release with a
        ``FutureWarning``.
    region_size
        Side (pixels) of the blocks written and recorded as one unit, rounded to whole
        chunks. Smaller regions lose less work on a crash; larger ones reread fewer
        halo pixels at region borders.
    resume
        Continue an existing store of the same job, skipping finished regions. Same
        job: the same input (same files, unchanged, opened the same way; or the same
        in-memory data), bands, nodata, model and weights, overlap, precision, grid,
        chunks and region size. Anything else is refused (``ResumeError``): a store never
        mixes chunks computed at two precisions. A store laid out before ``precision=``
        existed resumes with the default, ``"auto"``.
    overwrite
        Replace an existing store (``resume`` is then moot). Only an xchm prediction
        store is ever replaced; any other folder is refused, with or without it.
    progress
        Show a bar (windows/s, km2/h, ETA) and print a one-line summary to stderr at
        the end (default: on, as in every long-running xchm function; the summary is
        in ``attrs["xchm_run"]`` either way).
    in_flight
        Regions submitted to a distributed cluster at once (default: 2 per worker).
    storage_options
        fsspec options of ``output``'s backend (``key``, ``secret``,
        ``endpoint_url``...), overriding the environment. They travel in the tasks
        (pickled into the graph): on a cluster prefer the workers' environment.
    **predict_kwargs
        ``overlap``, ``batch_size``, ``device``, ``bands``, ``nodata``,
        ``uncertainty``, ``weights``, ``backbone_weights``, ``precision``: as for
        :func:`xchm.predict`.

    Returns
    -------
    xarray.Dataset
        The finished store, opened lazily (``chm`` with CRS; ``attrs["xchm_status"]``
        is ``"complete"``; ``attrs["xchm_run"]``, not stored, is this call's one-line
        summary: area, regions computed and skipped, windows, windows/s per device).

    Raises
    ------
    ResumeError
        The store is another job's: its input (file, array, or how it was read or
        computed), bands, nodata, model, overlap, precision, grid or layout differ. The message
        names each difference.
    OutputExistsError
        ``output`` exists and is a file, a folder xchm did not write, another kind of
        xchm output, or a store while ``resume=False`` (and no ``overwrite``).
    OutputError
        ``output`` cannot be created or written (a missing bucket, access refused).
    InputError
        Bad options.

    Notes
    -----
    Compute runs here, now: with a ``distributed`` client active on its workers,
    otherwise with Dask's current scheduler. Memory: a few chunks per thread; the
    client holds one small graph per region in flight. Killing the process at any
    time and calling again with the same arguments finishes the same store.

    Examples
    --------
    >>> import numpy as np, rioxarray, xarray as xr, xchm
    >>> image = xr.DataArray(
    ...     np.full((3, 128, 128), 2000, dtype="uint16"), dims=("band", "y", "x"),
    ...     coords={"band": ["nir", "red", "green"], "y": 2.0 * np.arange(128)[::-1],
    ...             "x": 2.0 * np.arange(128)}).rio.write_crs("EPSG:32606")  # 2 m pixels
    >>> ds = xchm.predict_to_zarr(image, "test-tiny", getfixture("tmp_path") / "chm.zarr",
    ...                           region_size=64, progress=False)
    >>> chm = ds["chm"]  # not ds.chm: that is the .chm accessor
    >>> chm.shape, ds.attrs["xchm_status"], chm.rio.crs.to_epsg()
    ((128, 128), 'complete', 32606)
    """
    import dask.array as dsa
    import zarr

    from xchm.cluster import active_client

    if in_flight is not None and (
        isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1
    ):
        raise InputError(f"in_flight must be a positive integer, got {in_flight!r}")
    loc = location(output, storage_options)
    if not loc.name.endswith(".zarr"):
        raise InputError(f"output must be a path ending in .zarr, got {shown(loc)!r}")
    variables = [obj] if isinstance(obj, xr.DataArray) else list(obj.data_vars.values())
    if not all(isinstance(v.variable._data, dsa.Array) for v in variables):
        from xchm.inference.inputs import spatial_dims

        ydim, xdim = spatial_dims(obj)  # (.chunk tokenizes in-memory data by content)
        obj = obj.chunk({ydim: DEFAULT_CHUNK, xdim: DEFAULT_CHUNK})
    from distributed import span

    result = predict(obj, model, **predict_kwargs)  # its model tasks carry the span already
    ds = result.to_dataset() if isinstance(result, xr.DataArray) else result
    chm = ds["chm"]
    chunks = (chm.data.chunks[0][0], chm.data.chunks[1][0])
    step = _region_step(region_size, chunks)
    regions = _regions((chm.shape[0], chm.shape[1]), step)
    grid = (regions[-1].iy + 1, regions[-1].ix + 1)
    fingerprint = job_fingerprint(obj, ds, model, step, predict_kwargs)
    store = loc.zarr_store()
    zarr_format = _prepare(loc, store, ds, fingerprint, grid, resume, overwrite)
    done_flags = zarr.open_array(
        store, mode="r+", path=f"{PROGRESS_GROUP}/done", zarr_format=zarr_format
    )
    finished = np.asarray(done_flags[...], dtype=bool)
    pending = [r for r in regions if not finished[r.iy, r.ix]]
    if pending:  # a finished run's consolidated metadata must not outlive this one
        root = zarr.open_group(store, mode="r+", use_consolidated=False, zarr_format=zarr_format)
        if root.attrs.get("xchm_status") != "incomplete":
            root.attrs["xchm_status"] = "incomplete"  # rewritten without consolidated metadata

    window = int(chm.attrs["xchm_window"])
    stride = window - int(chm.attrs["xchm_overlap"])
    total_windows = scene_windows(chm.shape[0], chm.shape[1], window, stride)
    client = active_client()
    devices = len(client.scheduler_info().get("workers", {})) if client is not None else 1
    from tqdm.auto import tqdm

    skipped_px = chm.size - sum(r.pixels for r in pending)
    bar = tqdm(
        total=total_windows,
        unit="win",
        desc="predicting",
        disable=not progress,
        initial=round(total_windows * skipped_px / chm.size),
    )
    km2_per_px = _km2_per_pixel(chm)
    start, computed, computed_px = time.perf_counter(), 0, 0
    write = _region_writer(ds, store, zarr_format)
    with span("xchm.predict"):  # the region write tasks, built as regions are submitted
        runs = (
            _run_distributed(client, pending, write, in_flight or 2 * max(devices, 1))
            if client is not None
            else _run_local(pending, write)
        )
        try:
            for region in runs:
                done_flags[region.iy, region.ix] = 1
                computed += 1
                computed_px += region.pixels
                # Windows are apportioned by area (the bar's total is the scene's lattice).
                bar.update(round(total_windows * (skipped_px + computed_px) / chm.size) - bar.n)
                if km2_per_px:
                    hours = (time.perf_counter() - start) / 3600
                    rate = km2_per_px * computed_px / max(hours, 1e-12)
                    bar.set_postfix_str(f"{rate:.1f} km2/h", refresh=False)
        finally:
            bar.close()
    _complete(store, zarr_format)
    seconds = time.perf_counter() - start
    windows = round(total_windows * computed_px / chm.size)
    line = _summary(ds, windows, seconds, devices, computed, len(regions))
    logger.info(line)
    if progress:
        print(line, file=sys.stderr)
    opened = open_prediction(loc)
    opened.attrs["xchm_run"] = line  # in memory only: what this call did
    return opened


def _km2_per_pixel(chm: xr.DataArray) -> float | None:
    crs = chm.rio.crs
    if crs is None or not crs.is_projected:
        return None
    res_x, res_y = chm.rio.resolution()
    return abs(res_x * res_y) / 1e6


def open_prediction(
    store: PathOrURL, *, storage_options: Mapping[str, Any] | None = None
) -> xr.Dataset:
    """Open a store written by :func:`predict_to_zarr` lazily, with its CRS.

    Parameters
    ----------
    store
        A local path or a URL (``s3://``...), or a :class:`~xchm.storage.Location`.
    storage_options
        fsspec options of the store's backend, overriding the environment.

    Returns
    -------
    xarray.Dataset
        Read through its consolidated metadata when it has some (a finished store),
        else through each array's own.
    """
    loc = location(store, storage_options)
    zstore = loc.zarr_store(read_only=True)
    try:
        return xr.open_zarr(zstore, decode_coords="all", consolidated=True)
    except (KeyError, ValueError):  # no consolidated metadata yet: an unfinished store
        return xr.open_zarr(zstore, decode_coords="all", consolidated=False)
