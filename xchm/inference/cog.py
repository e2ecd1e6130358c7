"""``xchm.write_cog``: a lazy height map to a Cloud Optimized GeoTIFF in bounded memory.

GDAL's COG driver cannot be written window by window, so the map is first written
into a tiled GeoTIFF (windowed writes: memory stays at a few chunks), which GDAL
then copies into a COG. GeoTIFF writes are not safe from several processes, so
with a ``distributed`` client active the workers first compute the map into a
temporary Zarr store next to the output (parallel writes of whole chunks), which
this process then turns into the GeoTIFF with local threads. Everything goes to
temporary names next to the output (``.NAME.partial-HOST-PID...``) and is renamed
into place at the end: a failed or killed run leaves no half-written file under the
output's name. The leftovers of a killed run are removed by the next write of the
same file (see :func:`write_cog`).

To an object store (``s3://``, ``gs://``, ``az://``) the COG is made the same way in a
temporary folder of the system's temp dir (``xchm-cog-PID-...``), then streamed up
(:func:`xchm.outputs.upload_file`: a multipart upload the store shows only when whole,
aborted on any failure); on a cluster the workers' Zarr staging store goes next to the
output in the object store (the one place both sides reach). The whole COG passes
through this machine's disk, not its memory.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xchm._compat import renamed_keywords
from xchm.errors import InputError, XCHMWarning
from xchm.outputs import prepare_output_file, shown, upload_file
from xchm.storage import Location, PathOrURL, location

__all__ = ["write_cog", "INT16_DM_RANGE_M", "INT16_DM_NODATA"]

#: Nodata of int16 decimetre files (``int16_dm=True``).
INT16_DM_NODATA = -9999
#: Heights (metres) an int16 decimetre file holds; others are clipped to these bounds.
#: The top is int16's largest value; the bottom stays clear of the nodata value.
INT16_DM_RANGE_M = (-999.8, 3276.7)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _host() -> str:
    """Return this machine's name as it may appear in a file name."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _running(pid: int) -> bool:
    """Tell whether process ``pid`` runs on this machine (unsure counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _stale_partials(output: Location) -> list[Location]:
    """Leftovers of killed writes of ``output`` on this machine (their process is gone).

    Temporary files are named ``.NAME.partial-HOST-PID`` (plus ``.tiled.tif`` or
    ``.zarr``); earlier versions wrote ``.NAME.partial-PID...``, taken as this
    machine's. A leftover is stale when it names this machine and its process no
    longer runs; a running write, or one on another machine sharing the folder (or
    the object store), is left alone.
    """
    pattern = re.compile(
        rf"^\.{re.escape(output.name)}\.partial-(?:(?P<host>[A-Za-z0-9._]+)-)?(?P<pid>\d+)"
        r"(?:\.tiled\.tif|\.zarr)?$"
    )
    host = _host()
    stale: list[Location] = []
    if not output.parent.is_dir():  # an object store's prefix that holds nothing yet
        return stale
    for name in output.parent.listdir():
        match = pattern.match(name)
        if match is None or match["host"] not in (None, host):
            continue
        if not _running(int(match["pid"])):
            stale.append(output.parent.join(name))
    return stale


#: Prefix of the temporary folders (system temp dir) of COGs bound for object stores.
_STAGING_PREFIX = "xchm-cog-"


def _staging_dir() -> Path:
    """Make this write's temporary folder; remove those of killed writes of this machine.

    Named ``xchm-cog-PID-RANDOM`` in the system's temp dir (``TMPDIR``); a folder whose
    process no longer runs is a killed write's (folders of other users are skipped).
    """
    root = Path(tempfile.gettempdir())
    pattern = re.compile(rf"^{_STAGING_PREFIX}(\d+)-")
    for old in root.glob(f"{_STAGING_PREFIX}*"):
        match = pattern.match(old.name)
        if match and old.is_dir() and not _running(int(match[1])):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-"))


def _layers(obj: Any) -> xr.DataArray:
    """Return ``obj`` as a (band, y, x) array with one band per layer, named.

    A (y, x) DataArray is one band; a Dataset (``xchm.predict(..., uncertainty=True)``
    or an opened ``predict_to_zarr`` store) gives one band per 2-D variable, ``chm``
    first. The band names go to ``long_name`` (GeoTIFF band descriptions).
    """
    if isinstance(obj, xr.Dataset):
        names = [str(n) for n in obj.data_vars if obj[n].ndim == 2]
        other = [str(n) for n in obj.data_vars if obj[n].ndim not in (0, 2)]
        if other or not names:
            raise InputError(
                f"write_cog writes 2-D (y, x) layers; the Dataset has variables "
                f"{[str(n) for n in obj.data_vars]} ({', '.join(other) or 'none'} not 2-D). "
                "Pass a height map from xchm.predict or select its layers, e.g. ds[['chm']]"
            )
        names.sort(key=lambda n: n != "chm")  # chm first, then the others in order
        arrays = [obj[n] for n in names]
        if len({a.dims for a in arrays}) > 1:
            raise InputError(
                f"the layers {names} have different dimensions {[a.dims for a in arrays]}; "
                "write_cog needs them on one (y, x) grid"
            )
        crs = obj.rio.crs
    elif isinstance(obj, xr.DataArray):
        if obj.ndim != 2:
            raise InputError(
                f"write_cog writes a (y, x) height map, got dims {tuple(obj.dims)}; select "
                "one layer (e.g. da.isel(band=0)) or pass xchm.predict's result"
            )
        names = [str(obj.name) if obj.name is not None else "chm"]
        arrays = [obj]
        crs = obj.rio.crs
    else:
        raise InputError(
            f"write_cog takes an xarray DataArray or Dataset (what xchm.predict returns), got "
            f"{type(obj).__name__}"
        )
    plain = []
    for a in arrays:
        a = a.copy()
        a.attrs = {k: v for k, v in a.attrs.items() if k not in ("_FillValue", "long_name")}
        a.encoding = {}  # nodata and dtype are set below; a store's encoding would clash
        plain.append(a)
    stacked = xr.concat(plain, dim="band", coords="minimal", compat="override", join="exact")
    ydim, xdim = arrays[0].dims
    stacked = stacked.assign_coords(band=np.arange(1, len(names) + 1)).transpose("band", ydim, xdim)
    stacked.attrs = {**plain[0].attrs, "long_name": tuple(names)}
    return stacked.rio.write_crs(crs) if crs is not None else stacked


def _stage(layers: xr.DataArray, staged: Location) -> xr.DataArray:
    """Compute ``layers`` on the cluster into a Zarr store; return it opened lazily."""
    names = list(layers.attrs["long_name"])
    ds = xr.Dataset({n: layers.isel(band=i, drop=True) for i, n in enumerate(names)})
    for n in names:
        ds[n].attrs = {}
    ds.to_zarr(staged.zarr_store(), mode="w", consolidated=False)
    back = xr.open_zarr(staged.zarr_store(read_only=True), decode_coords="all", consolidated=False)
    restaged = _layers(back[names])
    restaged.attrs = layers.attrs
    return restaged


def _to_int16_dm(layers: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """Return int16 decimetres (clipped, nodata -9999) and the clipped pixels per band."""
    low, high = INT16_DM_RANGE_M
    outside = ((layers < low) | (layers > high)).sum(dim=layers.dims[1:])  # NaN: neither
    dm = (layers.clip(low, high) * 10).round().fillna(INT16_DM_NODATA).astype("int16")
    dm.attrs = {**layers.attrs, "units": "dm"}
    return dm.rio.write_nodata(INT16_DM_NODATA, encoded=False), outside


def _render(
    layers: xr.DataArray,
    staged: Location | None,
    tiled: Path,
    cog: Path,
    int16_dm: bool,
) -> tuple[xr.DataArray, Any]:
    """Write ``layers`` as the COG ``cog`` through the tiled GeoTIFF ``tiled``.

    With ``staged``, the workers first compute the layers into that Zarr store.
    Returns the layers written and, for ``int16_dm``, the clipped pixels per band.
    """
    import dask
    import rasterio.shutil

    if staged is not None:
        layers = _stage(layers, staged)
    outside = None
    if int16_dm:
        layers, outside = _to_int16_dm(layers)
    else:
        layers = layers.astype("float32").rio.write_nodata(np.nan, encoded=False)
    with dask.config.set(scheduler="threads"):  # one process writes the GeoTIFF
        write = layers.rio.to_raster(
            tiled,
            driver="GTiff",
            tiled=True,
            compress="DEFLATE",
            lock=threading.Lock(),
            compute=False,
        )
        # One pass: the clipped pixels are counted from the chunks being written.
        if write is not None and outside is not None:
            _, outside = dask.compute(write, outside)
        elif write is not None:
            dask.compute(write)
    rasterio.shutil.copy(tiled, cog, driver="COG", compress="DEFLATE")
    return layers, outside


@renamed_keywords(path="output")
def write_cog(
    chm: Any,
    output: PathOrURL,
    *,
    int16_dm: bool = False,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Path | Location:
    """Write a canopy height map (metres) as a COG.

    Parameters
    ----------
    chm
        What :func:`xchm.predict` returns, typically lazy: a (y, x) DataArray (one
        band), or the Dataset of ``uncertainty=True`` (bands ``chm`` and ``chm_std``).
        Any Dataset of (y, x) layers works, e.g. a :func:`xchm.predict_to_zarr` store;
        ``chm`` is band 1. Band descriptions are the layer names.
    output
        The file to write (``.tif``/``.tiff``): a local path, whose folder must
        exist, or a URL (``s3://``, ``gs://``, ``az://``; the bucket must exist).
        Formerly ``path=``, which still works for one release with a
        ``FutureWarning``.
    int16_dm
        Write int16 decimetres with nodata -9999 (the reference's format) instead
        of float32 metres with NaN. Heights outside :data:`INT16_DM_RANGE_M`
        (-999.8 to 3276.7 m) do not fit: they are clipped to it, counted, and an
        :class:`~xchm.errors.XCHMWarning` says how many.
    overwrite
        Replace an existing file (or object).
    storage_options
        fsspec options of ``output``'s backend (``key``, ``secret``,
        ``endpoint_url``...), overriding the environment.

    Returns
    -------
    pathlib.Path or Location
        The written file: a ``Path`` on the local disk, else its
        :class:`~xchm.storage.Location`.

    Raises
    ------
    OutputExistsError
        The file exists (without ``overwrite``) or ``output`` is a folder.
    OutputError
        The folder (bucket) does not exist or is not writable, the upload failed, or
        ``output`` does not end in .tif/.tiff.
    InputError
        ``chm`` is not a height map (not (y, x) layers).

    Warns
    -----
    XCHMWarning
        ``int16_dm`` clipped heights (the message gives the count per layer).

    Notes
    -----
    Checks ``output`` before any work. Computes the map (on the active ``distributed``
    client if any). Memory: a few chunks per thread; disk: the COG plus a temporary
    tiled GeoTIFF (and, on a cluster, a temporary Zarr store) of similar size, named
    ``.NAME.partial-HOST-PID...`` next to the output. A write that was killed leaves
    these behind; the next write of the same file removes those of this machine
    whose process no longer runs (a write still running, or one from another machine
    sharing the folder, is left alone).

    To an object store, the COG and the tiled GeoTIFF are written in a temporary
    folder of the system's temp dir (``TMPDIR``: room for about twice the COG), then
    the COG is streamed up: the object appears only when whole, and a failure at any
    point leaves no object (a multipart upload is aborted). An existing object is
    refused unless ``overwrite`` (checked before any work and again before the
    upload). On a cluster, the workers' temporary Zarr store goes next to the output
    in the object store and is removed at the end.

    Examples
    --------
    >>> import numpy as np, rioxarray, xarray as xr, xchm
    >>> image = xr.DataArray(
    ...     np.full((3, 96, 96), 2000, dtype="uint16"), dims=("band", "y", "x"),
    ...     coords={"band": ["nir", "red", "green"], "y": 2.0 * np.arange(96)[::-1],
    ...             "x": 2.0 * np.arange(96)}).rio.write_crs("EPSG:32606")
    >>> out = xchm.write_cog(xchm.predict(image, "test-tiny"), getfixture("tmp_path") / "c.tif")
    >>> out.name
    'c.tif'
    """
    import dask

    from xchm.cluster import active_client

    loc = location(output, storage_options)
    checked = prepare_output_file(loc, overwrite=overwrite, suffixes=(".tif", ".tiff"))
    layers = _layers(chm)
    staging = active_client() is not None and dask.is_dask_collection(layers)
    stem = f".{loc.name}.partial-{_host()}-{os.getpid()}"
    if isinstance(checked, Path):  # local: temporary names beside it, then a rename
        target: Path | Location = checked
        for killed in _stale_partials(location(checked)):
            _remove(killed.path)
        tmp = checked.with_name(stem)
        staged = location(checked.with_name(f"{stem}.zarr"))
        tiled = checked.with_name(f"{stem}.tiled.tif")
        try:
            layers, outside = _render(layers, staged if staging else None, tiled, tmp, int16_dm)
            os.replace(tmp, checked)
        finally:
            for leftover in (tmp, staged.path, tiled):
                _remove(leftover)
    else:  # an object store: made in the system's temp dir, then uploaded whole
        target = checked
        folder = _staging_dir()
        staged = checked.parent.join(f"{stem}.zarr")
        try:
            if staging:
                for killed in _stale_partials(checked):
                    killed.remove(missing_ok=True)
            cog = folder / checked.name
            layers, outside = _render(
                layers, staged if staging else None, folder / "tiled.tif", cog, int16_dm
            )
            upload_file(cog, checked, overwrite=overwrite)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            if staging:
                staged.remove(missing_ok=True)
    if outside is not None and int(np.sum(outside)) > 0:
        names = layers.attrs["long_name"]
        counts = ", ".join(
            f"{int(n)} in {name}" for name, n in zip(names, np.asarray(outside), strict=True)
        )
        low, high = INT16_DM_RANGE_M
        warnings.warn(
            f"{shown(target)}: {counts} pixels were outside the int16 decimetre range "
            f"[{low}, {high}] m and were clipped to it; write float32 metres "
            "(int16_dm=False, CLI: without --int16-dm) to keep them",
            XCHMWarning,
            stacklevel=3,  # the caller of write_cog (past renamed_keywords' wrapper)
        )
    return target
