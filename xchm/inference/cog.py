"""``xchm.write_cog``: a lazy height map to a Cloud Optimized GeoTIFF in bounded memory.

GDAL's COG driver cannot be written window by window, so the map is first written
into a tiled GeoTIFF (windowed writes: memory stays at a few chunks), which GDAL
then copies into a COG. GeoTIFF writes are not safe from several processes, so
with a ``distributed`` client active the workers first compute the map into a
temporary Zarr store next to the output (parallel writes of whole chunks), which
this process then turns into the GeoTIFF with local threads. Everything goes to
temporary names next to the output and is renamed into place at the end: a failed
or killed run leaves no half-written file under the output's name.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from xchm.errors import InputError

__all__ = ["write_cog"]


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_cog(
    chm: Any,
    path: str | os.PathLike[str],
    *,
    int16_dm: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a canopy height map (metres, (y, x) DataArray) as a COG.

    Parameters
    ----------
    chm
        The map, typically lazy (``xchm.predict`` on dask-backed imagery).
    path
        Output file (``.tif``/``.tiff``).
    int16_dm
        Write int16 decimetres with nodata -9999 (the reference's format) instead
        of float32 metres with NaN.
    overwrite
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    InputError
        The path exists (without ``overwrite``) or does not end in .tif/.tiff.

    Notes
    -----
    Computes the map (on the active ``distributed`` client if any). Memory: a few
    chunks per thread; disk: the COG plus a temporary tiled GeoTIFF (and, on a
    cluster, a temporary Zarr store) of similar size.

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

    output = Path(path)
    if output.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"a COG path must end in .tif or .tiff, got {str(output)!r}")
    if output.exists() and not overwrite:
        raise InputError(f"{str(output)!r} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = output.with_name(f".{output.name}.partial-{os.getpid()}")
    staged = output.with_name(f".{output.name}.partial-{os.getpid()}.zarr")
    tiled = output.with_name(f".{output.name}.partial-{os.getpid()}.tiled.tif")
    try:
        if active_client() is not None and hasattr(chm.data, "dask"):
            import xarray as xr

            plain = chm.copy()
            plain.attrs = {k: v for k, v in chm.attrs.items() if k != "_FillValue"}  # encoding
            plain.to_dataset(name="chm").to_zarr(staged, mode="w", consolidated=False)
            chm = xr.open_zarr(staged, decode_coords="all", consolidated=False)["chm"]
        chm = chm.copy()
        chm.encoding.pop("_FillValue", None)  # nodata is set below, as an attribute
        if int16_dm:
            dm = (chm * 10).round().fillna(-9999).astype("int16")
            chm = dm.rio.write_nodata(-9999, encoded=False).assign_attrs(units="dm")
        else:
            chm = chm.rio.write_nodata(np.nan, encoded=False)
        import rasterio.shutil

        with dask.config.set(scheduler="threads"):  # one process writes the GeoTIFF
            chm.rio.to_raster(
                tiled, driver="GTiff", tiled=True, compress="DEFLATE", lock=threading.Lock()
            )
        rasterio.shutil.copy(tiled, tmp, driver="COG", compress="DEFLATE")
        os.replace(tmp, output)
    finally:
        for leftover in (tmp, staged, tiled):
            _remove(leftover)
    return output
