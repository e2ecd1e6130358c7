"""The ``xchm predict`` command: a canopy height map from a GeoTIFF/COG/Zarr image.

Registered on :func:`xchm.cli.build_parser` by :func:`add_predict_parser`. The
``--stac`` options are declared here and turned into a search and load by
:mod:`xchm.cli.stac`. As in every command, what the work needs is imported when it
runs, so ``xchm --help`` stays fast and does not import torch.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

from xchm.cli.common import (
    HOST_HELP,
    SCHEDULER_TIMEOUT_S,
    add_bands_argument,
    add_precision_argument,
    check_device,
    check_writable,
    connect,
    default_of,
    device,
    nodata,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from xchm.cluster import LOOPBACK
from xchm.inference.predict import DEFAULT_CHUNK, DEFAULT_OVERLAP, predict
from xchm.inference.rasters import open_image
from xchm.inference.runtime import COMPILE_MODES
from xchm.inference.scenes import merge_scenes
from xchm.inference.to_zarr import DEFAULT_REGION_SIZE
from xchm.stac.dates import DEFAULT_MONTHS
from xchm.stac.load import DEFAULT_CHUNKS as STAC_CHUNKS
from xchm.stac.search import search
from xchm.storage import Location, location

__all__ = ["add_predict_parser"]

#: ``--months`` default: search's months (leaf-on), as the option spells them.
MONTHS = ",".join(str(m) for m in DEFAULT_MONTHS)
MAX_ITEMS = default_of(search, "max_items")


def _scheduler(spec: str | None, host: str) -> Any:
    """Return a context for ``--scheduler``: local threads, a new local cluster or an address."""
    import contextlib

    if spec in (None, "local"):
        return contextlib.nullcontext(None)
    if spec == "auto":
        from xchm.cluster import start

        return start("auto", host=host)
    return connect(spec)


def _check_output(target: Location, overwrite: bool) -> None:
    """Refuse a local output that cannot be written, before any work.

    An object store says whether it can be written only when written to: the library
    functions check URLs themselves, before any work too.
    """
    from xchm.outputs import prepare_output_file

    if target.is_url:
        return
    output = target.path
    if output.suffix.lower() == ".zarr":  # its folders are made as needed
        folder = output if output.is_dir() else output.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        check_writable(folder, output)
    else:
        prepare_output_file(output, overwrite=overwrite)
        check_writable(output.parent, output)


def _predict(args: argparse.Namespace) -> int:
    import time

    from xchm.errors import InputError
    from xchm.inference import merge_scenes, predict, predict_to_zarr, write_cog
    from xchm.inference.progress import WindowProgress
    from xchm.inference.telemetry import collect
    from xchm.inference.windows import scene_windows

    target = location(args.output)
    output = target.text if target.is_url else target.path
    suffix = Path(target.name).suffix.lower()
    zarr_out = suffix == ".zarr"
    if suffix not in (".tif", ".tiff", ".zarr"):
        raise InputError(f"output must end in .tif, .tiff (COG) or .zarr, got {args.output!r}")
    if args.int16_dm and zarr_out:
        raise InputError("--int16-dm applies to GeoTIFF output only")
    _check_output(target, args.overwrite)
    if args.scheduler in (None, "local", "auto"):  # a remote cluster has its own devices
        check_device(args.device)
    from xchm.models.presets import PRESETS

    trained_head = args.model in PRESETS and PRESETS[args.model].dpt is not None and args.weights
    if args.model in PRESETS and not trained_head:  # (CHMv2's --weights is its trained head)
        logging.getLogger("xchm").warning(
            "%s is a preset: its decoder is untrained, so heights are not meaningful; pass a "
            "trained checkpoint directory with --model",
            args.model,
        )
    if args.stac:  # search -> load (xchm.stac), then the same predict and write
        from xchm.cli.stac import stac_image

        image = stac_image(args)
    elif not args.input:
        raise InputError(
            "give the image(s) to predict, or --stac URL with --collection, --bbox and --datetime"
        )
    elif len(args.input) > 1:
        from xchm.errors import PathNotFoundError

        missing = [p for p in args.input if not location(p).exists()]
        if missing:
            raise PathNotFoundError(f"inputs do not exist: {', '.join(missing)}")
        image = merge_scenes(args.input, combine=args.combine, chunks=args.chunks or DEFAULT_CHUNK)
    else:
        image = open_image(args.input[0], chunks=args.chunks or DEFAULT_CHUNK)
    options = dict(
        weights=args.weights,
        backbone_weights=args.backbone_weights,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        # "none": NaN only. (predict's nodata=None still means the file's own value for
        # one release, with a FutureWarning; NaN, always missing anyway, means none now.)
        nodata=math.nan if args.nodata is None else args.nodata,
        # With --stac the items' bands were chosen when loading (xchm.cli.stac).
        bands=None if args.stac else args.bands,
        precision=args.precision,
        compile=args.compile,
    )
    with _scheduler(args.scheduler, args.host) as client:
        if client is not None:
            print(f"xchm: Dask dashboard: {client.dashboard_link}", file=sys.stderr)
        if zarr_out:  # region by region, resumable: the summary line is printed by it
            ds = predict_to_zarr(
                image,
                args.model,
                output,
                region_size=args.region_size,
                resume=not args.no_resume,
                overwrite=args.overwrite,
                progress=not args.quiet,
                **options,
            )
            if args.quiet:  # otherwise predict_to_zarr printed it already
                print(ds.attrs["xchm_run"], file=sys.stderr)
            print(f"wrote {output} ({ds['chm'].shape[0]}x{ds['chm'].shape[1]} px)")
            return 0
        chm = predict(image, args.model, **options)
        window = chm.attrs["xchm_window"]
        stride = window - chm.attrs["xchm_overlap"]
        height, width = chm.shape
        total = scene_windows(height, width, window, stride)
        area = _area_km2(chm)
        devices = len(client.scheduler_info()["workers"]) if client is not None else 1
        start = time.perf_counter()
        progress = WindowProgress(total, area_km2=area, disable=args.quiet or client is not None)
        with progress, collect() as tally:  # the tally sees local schedulers' kernels only
            write_cog(chm, output, int16_dm=args.int16_dm, overwrite=args.overwrite)
        elapsed = time.perf_counter() - start
    rate = total / elapsed
    where = f"{area:.3f} km2, " if area is not None else ""
    skipped = int(tally["windows_skipped"])
    nodata = f", {skipped} all-nodata windows skipped" if skipped else ""
    print(
        f"wrote {output} ({where}{height}x{width} px, {total} windows in {elapsed:.1f} s, "
        f"{rate:.1f} windows/s, {rate / devices:.1f} per device ({devices} device(s)){nodata})"
    )
    return 0


def _area_km2(chm: Any) -> float | None:
    """Area of a map in a projected CRS (metres), else None."""
    crs = chm.rio.crs
    if crs is None or not crs.is_projected:
        return None
    res_x, res_y = chm.rio.resolution()
    return float(abs(res_x * res_y) * chm.size / 1e6)


def add_predict_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``predict`` command on the ``xchm`` sub-parsers ``sub``."""
    pred = sub.add_parser(
        "predict",
        help="predict a canopy height map from a GeoTIFF/COG/Zarr image",
        description="Predict canopy height (metres) chunk by chunk; memory is bounded by the "
        "chunk size, not the scene size.",
    )
    pred.add_argument(
        "input",
        nargs="*",
        help="GeoTIFF/COG or Zarr store with named bands; several GeoTIFFs in one CRS are "
        "mosaicked (see --combine); none with --stac",
    )
    pred.add_argument("-o", "--output", required=True, help="output .tif (COG) or .zarr")
    pred.add_argument(
        "--model",
        required=True,
        help="trained checkpoint directory (or a preset name: untrained decoder, for testing)",
    )
    pred.add_argument("--weights", help="backbone weights for a preset (Meta .pth, HF or timm)")
    pred.add_argument(
        "--backbone-weights",
        help="the backbone file beside --weights (e.g. CHMv2: --weights the head .pth, "
        "--backbone-weights Meta's ViT-L/16 SAT .pth)",
    )
    add_bands_argument(pred)
    pred.add_argument(
        "--overlap",
        type=nonnegative_int,
        help=f"window overlap (px; default a quarter of the model's window: {DEFAULT_OVERLAP} "
        "for 64 px windows)",
    )
    pred.add_argument(
        "--chunks",
        type=positive_int,
        help=f"chunk side in pixels (default {DEFAULT_CHUNK}; {STAC_CHUNKS} with --stac)",
    )
    pred.add_argument("--batch-size", type=positive_int, help="windows per model call")
    pred.add_argument("--device", type=device, help="torch device (default: CUDA if available)")
    add_precision_argument(pred, default_of(predict, "precision"))
    pred.add_argument(
        "--compile",
        nargs="?",
        const=True,
        default=False,
        choices=[True, *COMPILE_MODES],
        metavar="MODE",
        help="torch.compile the model on each worker (GPUs, large mosaics; the first block "
        "pays minutes of compilation); MODE: " + ", ".join(COMPILE_MODES),
    )
    pred.add_argument(
        "--nodata",
        type=nodata,
        default=default_of(predict, "nodata"),
        metavar="V",
        help="input nodata: a number, none, or auto (default: the file's own)",
    )
    pred.add_argument("--int16-dm", action="store_true", help="write int16 decimetres, -9999")
    pred.add_argument("--overwrite", action="store_true", help="replace an existing output")
    pred.add_argument(
        "--combine",
        choices=("first", "mean"),
        default=default_of(merge_scenes, "combine"),
        help="several inputs: first listed valid pixel wins (list newest first), or mean",
    )
    pred.add_argument(
        "--scheduler",
        help="'local' (threads, default), 'auto' (start a local cluster: one worker per GPU, "
        f"or CPU workers) or a scheduler address (tcp://host:8786; {SCHEDULER_TIMEOUT_S} s to "
        "answer)",
    )
    pred.add_argument("--host", default=LOOPBACK, help=HOST_HELP)
    pred.add_argument(
        "--region-size",
        type=positive_int,
        default=DEFAULT_REGION_SIZE,
        help=".zarr output: pixels per region written and recorded at once "
        f"({DEFAULT_REGION_SIZE})",
    )
    pred.add_argument(
        "--no-resume",
        action="store_true",
        help=".zarr output: refuse to continue an existing store (default: resume it)",
    )
    pred.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    stac = pred.add_argument_group(
        "STAC search (instead of input files; pip install 'xchm[stac]', see docs/stac.md)",
        "--bands maps the model's bands to STAC band names or to a band of an asset, "
        "e.g. nir=image.4,red=image.1,green=image.2 (default: the model's bands by name)",
    )
    stac.add_argument("--stac", metavar="URL", help="STAC API to search for the scenes")
    stac.add_argument("--collection", action="append", help="collection id (repeatable)")
    stac.add_argument(
        "--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"), help="area, degrees"
    )
    stac.add_argument("--datetime", help="interval to search, e.g. 2019/2024 or 2023-06/2023-09")
    stac.add_argument(
        "--months",
        default=MONTHS,
        help=f"months of each year (default {MONTHS}: leaf-on) or 'all'",
    )
    stac.add_argument("--max-cloud", type=nonnegative_float, help="maximum eo:cloud_cover, percent")
    stac.add_argument(
        "--missing-cloud",
        choices=("keep", "drop"),
        help="items without eo:cloud_cover (NAIP has none); default with --max-cloud: drop, warn",
    )
    stac.add_argument("--crs", help="output CRS when the scenes are in several (EPSG:32618)")
    stac.add_argument(
        "--resolution", type=positive_float, help="output pixel size (default: native)"
    )
    stac.add_argument(
        "--max-items",
        type=positive_int,
        default=MAX_ITEMS,
        help=f"most items to use ({MAX_ITEMS})",
    )
    pred.set_defaults(func=_predict)
    return pred
