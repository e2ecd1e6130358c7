"""``xchm.predict``: lazy, seam-free canopy height maps from xarray imagery.

The xarray object is reduced to its dask array, haloed by one window with
``dask.array.overlap`` (reflected at the image border), mapped block by block
with :func:`xchm.inference.kernel.predict_block`, and wrapped back with the
input's coordinates, CRS and spatial attributes. Nothing is read and no model is
run until the result is computed.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any

import numpy as np
import xarray as xr

from xchm._version import __version__
from xchm.errors import InputError, XCHMWarning
from xchm.inference.inputs import (
    BandsArg,
    as_band_array,
    check_dtype,
    check_georeferencing,
    check_grid,
)
from xchm.inference.kernel import KernelConfig, predict_block
from xchm.inference.precision import emulation_warning
from xchm.inference.progress import PREDICT_PREFIX
from xchm.inference.runtime import check_precision, compile_mode, spec_for

__all__ = ["predict", "AUTO", "DEFAULT_OVERLAP", "DEFAULT_CHUNK"]

#: Pixels shared by neighbouring 64 px windows (stride 48); predict's default overlap is a
#: quarter of the model's window, this for the 64 px presets (see benchmarks/RESULTS.md).
DEFAULT_OVERLAP = 16
#: Spatial chunk side used for in-memory input and for rechunking pathological chunks.
DEFAULT_CHUNK = 1024


#: ``nodata`` default everywhere in xchm: the input's own nodata value, if it has one.
AUTO = "auto"


def _own_nodata(da: xr.DataArray) -> float | None:
    """Return the nodata value the input carries: ``rio.nodata``, else ``_FillValue``."""
    for value in (da.rio.nodata, da.attrs.get("_FillValue"), da.encoding.get("_FillValue")):
        if value is not None:
            return float(value)
    return None


def _check_nodata(nodata: Any) -> None:
    if nodata is None or nodata == AUTO:
        return
    if isinstance(nodata, bool) or not isinstance(nodata, int | float | np.number):
        raise InputError(f"nodata must be a number, None or 'auto', got {nodata!r}")


def _nodata(da: xr.DataArray, nodata: float | str | None) -> float | None:
    """Return the value predict masks besides NaN (None: NaN only).

    None still means the input's own value, as ``"auto"`` does, for one release (see
    :func:`predict`, which warns when the two meanings differ).
    """
    _check_nodata(nodata)
    if nodata is None or nodata == AUTO:
        return _own_nodata(da)
    return float(nodata)


def _spatial_chunks(sizes: tuple[int, ...], depth: int, target: int) -> tuple[tuple[int, ...], ...]:
    """Chunks for the kernel (each >= ``depth``, as the halo needs) and for the output.

    Inner chunks smaller than the halo make the whole axis ``target``-pixel chunks
    (with a warning). A thin first or last chunk is merged into its neighbour for
    the computation, and the output is cut back to the chunks given, which Zarr
    and COG writers expect.
    """
    total = sum(sizes)
    if any(c < depth for c in sizes[1:-1]):
        warnings.warn(
            f"chunks {sizes[:4]}... are smaller than the {depth}-pixel halo (one window) that "
            f"each chunk reads from its neighbours; rechunking to {target} px",
            XCHMWarning,
            stacklevel=4,
        )
        sizes = tuple(min(target, total - i) for i in range(0, total, target))
    compute = sizes
    if len(compute) > 1 and compute[-1] < depth:
        compute = compute[:-2] + (compute[-2] + compute[-1],)
    if len(compute) > 1 and compute[0] < depth:
        compute = (compute[0] + compute[1],) + compute[2:]
    return compute, sizes


def predict(
    obj: xr.DataArray | xr.Dataset,
    model: Any,
    *,
    overlap: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    bands: BandsArg = None,
    nodata: float | str | None = AUTO,
    uncertainty: bool = False,
    weights: str | os.PathLike[str] | None = None,
    backbone_weights: str | os.PathLike[str] | None = None,
    precision: str = "auto",
    compile: bool | str = False,
) -> xr.DataArray | xr.Dataset:
    """Predict a canopy height map (metres) from imagery, lazily for dask-backed input.

    Parameters
    ----------
    obj
        A (band, y, x) DataArray (e.g. from ``rioxarray.open_rasterio``), or a Dataset
        whose variables are bands. Integer DN or float; normalised with the model card.
    model
        A loaded model (``xchm.load_model``), a checkpoint directory, or a preset name.
    overlap
        Pixels shared by neighbouring windows; stride = window - overlap. More overlap
        blends more predictions per pixel (fewer seams) at more compute:
        (window / stride) ** 2 model calls per window area. Default: a quarter of the
        model's window (16 px for the 64 px presets, 64 px for ``chmv2``'s 256), which
        leaves no visible seam (benchmarks/RESULTS.md).
    batch_size
        Windows per model call (default 512 on CUDA, 16 on CPU).
    device
        ``"cuda"``, ``"cpu"``...; default: chosen on each worker (CUDA if present).
    bands
        Which input band is which, as everywhere in xchm (``docs/bands.md``): a
        mapping ``{model band: input band}`` (band number, from 1 as in GDAL and
        QGIS, or band name; Dataset variable name), a sequence naming every input
        band in order, a sensor layout such as ``"naip-rgbn"``, or one string
        ``"nir=4,red=3,green=2"``. Default: match by name.
    nodata
        Value marking missing pixels besides NaN (always missing): ``"auto"`` (the
        default: the input's own, ``rio.nodata`` or else ``_FillValue``, if it has
        one), a number, or None (none). The same meaning everywhere in xchm
        (:func:`xchm.chips.build`, ``xchm predict --nodata``). For one release None
        still uses the input's own value when it has one, with a ``FutureWarning``;
        pass ``float("nan")`` for no nodata value meanwhile.
    uncertainty
        Also return ``chm_std``: the weighted standard deviation of the overlapping
        window predictions at each pixel (0 where a single window counts).
    weights
        Backbone weights for a preset name (see ``xchm.load_model``); for ``chmv2``
        its head file or snapshot folder.
    backbone_weights
        The backbone file beside ``weights`` (e.g. CHMv2's; see ``xchm.load_model``).
    precision
        Arithmetic of the model: ``"auto"`` (default: bf16 autocast on CUDA and on CPUs
        with native bf16, AVX512_BF16 or AMX; fp32 elsewhere), ``"fp32"``, ``"bf16"``
        or ``"fp16"`` (autocast; honoured anywhere, but emulated bf16 on other CPUs is
        ~100x slower than fp32). Heights differ from fp32 by a few cm at bf16
        (docs/predict.md); at one precision the map is the same whatever the chunking.
    compile
        Run the model through ``torch.compile`` on each worker: False (default), True
        (mode "default") or a mode such as ``"reduce-overhead"`` (CUDA graphs). The first
        block pays the compilation (seconds to minutes); batches are padded to a
        multiple of 32 windows so that few shapes are compiled. Worth it on GPUs for
        large mosaics (benchmarks/RESULTS.md); heights match eager to float rounding.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        ``chm`` (y, x) float32 metres with the input's coordinates and CRS, NaN where
        the input is missing; a Dataset with ``chm`` and ``chm_std`` if ``uncertainty``.
        Lazy (dask) for dask-backed input, computed for in-memory input.

    Raises
    ------
    BandError
        Missing, ambiguous or unnamed bands (all problems listed).
    InputError
        Wrong dimensions or dtype, a scene smaller than one window, a bad overlap,
        x/y coordinates that are not a regular grid (shuffled, repeated, gapped).

    Notes
    -----
    Windows are laid out north-up: an image stored south-up (y increasing) or
    east-to-west (x decreasing) is read in reverse and the map is returned in the
    input's order, so the storage order does not change the heights.

    Examples
    --------
    >>> import numpy as np, rioxarray, xarray as xr, xchm
    >>> image = xr.DataArray(
    ...     np.full((3, 96, 96), 2000, dtype="uint16"), dims=("band", "y", "x"),
    ...     coords={"band": ["nir", "red", "green"]}).rio.write_crs("EPSG:3338")
    >>> chm = xchm.predict(image, "test-tiny")
    >>> chm.dims, chm.shape, chm.attrs["units"]
    (('y', 'x'), (96, 96), 'm')
    """
    import dask.array as dsa

    from xchm.cluster import active_client

    active_client()  # a distributed client's workers get xchm's plugin (GDAL's S3 endpoint)
    spec, card = spec_for(model, weights=weights, backbone_weights=backbone_weights)
    window = card.window
    overlap = window // 4 if overlap is None else overlap
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < window:
        raise InputError(f"overlap must be an integer in [0, {window}), got {overlap!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    _check_nodata(nodata)
    check_precision(precision)
    emulation_warning(precision, device)  # before any work: bf16 emulated on a CPU is slow
    card.require_statistics()
    image = as_band_array(obj, card, bands)
    check_dtype(image)
    steps = check_grid(image)
    _, height, width = image.shape
    if height < window or width < window:
        raise InputError(
            f"the image is {height}x{width} pixels, smaller than one {window}x{window} window; "
            "use a larger area (xchm does not pad scenes smaller than a window)"
        )
    check_georeferencing(image, card, steps)
    own = _own_nodata(image)
    if nodata is None and own is not None and not np.isnan(own):  # NaN: masked anyway
        warnings.warn(
            f"nodata=None uses the input's own nodata value ({own:g}) as 'auto' does, but "
            "will mean 'no nodata value' in a future release, as it does in xchm.chips.build; "
            "pass nodata='auto' (the default) to keep masking it, or nodata=float('nan') to "
            "mask NaN only",
            FutureWarning,
            stacklevel=2,
        )
    config = KernelConfig(
        window=window,
        stride=window - overlap,
        nodata=_nodata(image, nodata),
        batch_size=batch_size,
        device=device,
        uncertainty=uncertainty,
        precision=precision,
        compile=compile_mode(compile),
    )

    data = image.data
    eager = not isinstance(data, dsa.Array)
    if eager:
        data = dsa.from_array(data, chunks=(-1, DEFAULT_CHUNK, DEFAULT_CHUNK))
    depth = window
    (y_compute, y_out), (x_compute, x_out) = (
        _spatial_chunks(c, depth, DEFAULT_CHUNK) for c in data.chunks[1:]
    )
    # Windows run north-up: chunks are planned in the input's order, then reversed with it.
    flip = (
        slice(None),
        slice(None, None, -1 if steps.y is not None and steps.y > 0 else 1),
        slice(None, None, -1 if steps.x is not None and steps.x < 0 else 1),
    )
    if not steps.north_up:
        data = data[flip]
        y_compute, y_out = y_compute[flip[1]], y_out[flip[1]]
        x_compute, x_out = x_compute[flip[2]], x_out[flip[2]]
    chunks = ((data.shape[0],), y_compute, x_compute)
    if chunks != data.chunks:
        data = data.rechunk(chunks)
    haloed = dsa.overlap.overlap(
        data, depth={0: 0, 1: depth, 2: depth}, boundary={0: "none", 1: "reflect", 2: "reflect"}
    )
    starts = [tuple(int(s) for s in np.cumsum((0,) + c[:-1])) for c in chunks[1:]]
    kernel = functools.partial(
        predict_block,
        spec=spec,
        config=config,
        depth=depth,
        y_starts=starts[0],
        x_starts=starts[1],
        size=(int(data.shape[1]), int(data.shape[2])),
    )
    from distributed import span

    with span("xchm.predict"):  # groups the model tasks on the dashboard (any cluster)
        result = dsa.map_blocks(
            kernel,
            haloed,
            chunks=((config.outputs,), chunks[1], chunks[2]),
            dtype=np.float32,
            meta=np.empty((0, 0, 0), dtype=np.float32),
            name=f"{PREDICT_PREFIX}{dsa.core.tokenize(haloed.name, spec, config)}",
        )
    if (y_out, x_out) != (y_compute, x_compute):
        result = result.rechunk(((config.outputs,), y_out, x_out))
    if not steps.north_up:  # back to the input's order (and chunks)
        result = result[flip]
    if eager:
        result = result.compute(scheduler="threads")
    return _wrap(image, result, card, config, overlap, north_up=steps.north_up)


def _wrap(
    image: xr.DataArray,
    result: Any,
    card: Any,
    config: KernelConfig,
    overlap: int,
    *,
    north_up: bool = True,
) -> Any:
    template = image.isel(band=0, drop=True)
    attrs = {
        "units": "m",
        "long_name": "canopy height above ground",
        "xchm_model": card.preset,
        "xchm_card_digest": card.digest(),
        "xchm_version": __version__,
        "xchm_window": config.window,
        "xchm_overlap": overlap,
        "xchm_precision": config.precision,
    }
    crs = image.rio.crs

    def layer(i: int, name: str, long_name: str) -> xr.DataArray:
        out = xr.DataArray(result[i], dims=template.dims, coords=template.coords, name=name)
        out.attrs = {**attrs, "long_name": long_name}
        if crs is not None:
            out = out.rio.write_crs(crs)
        if not north_up:  # a cached GeoTransform may describe another axis order
            out = out.rio.write_transform(out.rio.transform(recalc=True))
        return out.rio.write_nodata(np.nan, encoded=False)

    chm = layer(0, "chm", "canopy height above ground")
    if not config.uncertainty:
        return chm
    std = layer(1, "chm_std", "spread (weighted sd) of overlapping window predictions")
    return xr.Dataset({"chm": chm, "chm_std": std})
