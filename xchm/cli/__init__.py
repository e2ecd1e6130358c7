"""The ``xchm`` command line.

Sub-commands live in small functions registered in :func:`build_parser`; each
imports what it needs, so ``xchm --help`` stays fast. The ``chips`` group lives in
:mod:`xchm.cli.chips`; the parser class, option types, exit statuses and early
checks shared by every command in :mod:`xchm.cli.common`.

Every failure ends in one line ``xchm: error: ...`` on stderr and a documented exit
status (1: the command failed, 2: usage); a traceback only with ``xchm --debug`` or
``XCHM_DEBUG=1``. Library exceptions that are not xchm's (an ``OSError`` of
rasterio, a ``KeyError`` of a bug) get the same one line, naming their type.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xchm._version import __version__
from xchm.cli.bench import add_bench_parser
from xchm.cli.chips import add_chips_parser
from xchm.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    SCHEDULER_TIMEOUT_S,
    Parser,
    check_device,
    check_writable,
    connect,
    device,
    int_at_least,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from xchm.cli.pretrain import add_pretrain_parser
from xchm.cli.train import add_evaluate_parser, add_train_parser
from xchm.errors import XCHMError

# Kept in sync with xchm.inference.predict.DEFAULT_OVERLAP without importing xarray here.
DEFAULT_OVERLAP = 16
# Kept in sync with xchm.demo.MIN_SIZE (a test checks), without importing numpy here.
MIN_DEMO_SIZE = 256
_HOST_HELP = (
    "interface a cluster xchm starts listens on: scheduler, workers, dashboard (default "
    "127.0.0.1: this machine only; 0.0.0.0: every interface, and the dashboard has no login)"
)

__all__ = ["main", "build_parser"]


def _models(args: argparse.Namespace) -> int:
    from xchm.models import list_models, model_info

    infos = [model_info(name) for name in list_models()]
    if args.json:
        print(json.dumps(infos, indent=2, default=list))
        return 0
    header = (
        f"{'preset':<20} {'backbone params':>16} {'decoder params':>15}  bands           backbone"
    )
    print(header)
    print("-" * len(header))
    for info in infos:
        print(
            f"{info['name']:<20} {info['backbone_parameters'] / 1e6:>15.1f}M "
            f"{info['decoder_parameters'] / 1e6:>14.1f}M  {','.join(info['bands']):<15} "
            f"{info['backbone']}"
        )
    print()
    for info in infos:
        print(f"{info['name']}: {info['summary']}. {info['notes']}")
    return 0


def _open_image(path: Path, chunks: int) -> Any:
    """Open a GeoTIFF/COG lazily (rioxarray) or a Zarr store (a band array or band variables)."""
    import rioxarray
    import xarray as xr

    from xchm.errors import InputError, PathNotFoundError

    if not path.exists():
        raise PathNotFoundError(f"input {str(path)!r} does not exist")
    if path.suffix == ".zarr" or path.is_dir():
        try:
            try:
                ds = xr.open_zarr(path.resolve(), decode_coords="all", consolidated=True)
            except (KeyError, ValueError, FileNotFoundError):  # no consolidated metadata
                ds = xr.open_zarr(path.resolve(), decode_coords="all", consolidated=False)
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise InputError(
                f"cannot read {str(path)!r} as a Zarr store ({type(err).__name__}: "
                f"{err}); give a GeoTIFF/COG or a Zarr store of a (band, y, x) array"
            ) from None
        arrays = [v for v in ds.data_vars.values() if v.ndim == 3]
        return arrays[0] if len(arrays) == 1 else ds
    try:
        # The absolute path: a resumed store then recognises the same file however
        # it is spelled on the command line (the input's token includes the path).
        return rioxarray.open_rasterio(
            str(path.resolve()), chunks={"band": -1, "y": chunks, "x": chunks}, lock=False
        )
    except OSError as err:  # rasterio's RasterioIOError is an OSError
        raise InputError(
            f"cannot read {str(path)!r} as an image ({err}); give a GeoTIFF/COG (or a Zarr "
            "store) with one band per model band"
        ) from None


def _scheduler(spec: str | None, host: str) -> Any:
    """Return a context for ``--scheduler``: local threads, a new local cluster or an address."""
    import contextlib

    if spec in (None, "local"):
        return contextlib.nullcontext(None)
    if spec == "auto":
        from xchm.cluster import start

        return start("auto", host=host)
    return connect(spec)


def _check_output(output: Path, overwrite: bool) -> None:
    """Refuse an output that cannot be written, before any work."""
    from xchm.outputs import prepare_output_file

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
    from xchm.inference.windows import window_span

    output = Path(args.output)
    zarr_out = output.suffix.lower() == ".zarr"
    if output.suffix.lower() not in (".tif", ".tiff", ".zarr"):
        raise InputError(f"output must end in .tif, .tiff (COG) or .zarr, got {str(output)!r}")
    if args.int16_dm and zarr_out:
        raise InputError("--int16-dm applies to GeoTIFF output only")
    _check_output(output, args.overwrite)
    if args.scheduler in (None, "local", "auto"):  # a remote cluster has its own devices
        check_device(args.device)
    from xchm.models.presets import PRESETS

    if args.model in PRESETS:
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

        missing = [p for p in args.input if not Path(p).exists()]
        if missing:
            raise PathNotFoundError(f"inputs do not exist: {', '.join(missing)}")
        image = merge_scenes(args.input, combine=args.combine, chunks=args.chunks)
    else:
        image = _open_image(Path(args.input[0]), args.chunks)
    options = dict(
        weights=args.weights,
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        nodata=args.nodata,
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
        window, stride = chm.attrs["xchm_window"], chm.attrs["xchm_window"] - args.overlap
        height, width = chm.shape
        total = (
            window_span(0, height, window, stride).count
            * window_span(0, width, window, stride).count
        )
        area = _area_km2(chm)
        devices = len(client.scheduler_info()["workers"]) if client is not None else 1
        start = time.perf_counter()
        with WindowProgress(total, area_km2=area, disable=args.quiet or client is not None):
            write_cog(chm, output, int16_dm=args.int16_dm, overwrite=args.overwrite)
        elapsed = time.perf_counter() - start
    rate = total / elapsed
    where = f"{area:.3f} km2, " if area is not None else ""
    print(
        f"wrote {output} ({where}{height}x{width} px, {total} windows in {elapsed:.1f} s, "
        f"{rate:.1f} windows/s, {rate / devices:.1f} per device ({devices} device(s)))"
    )
    return 0


def _area_km2(chm: Any) -> float | None:
    """Area of a map in a projected CRS (metres), else None."""
    crs = chm.rio.crs
    if crs is None or not crs.is_projected:
        return None
    res_x, res_y = chm.rio.resolution()
    return float(abs(res_x * res_y) * chm.size / 1e6)


def _demo(args: argparse.Namespace) -> int:
    from xchm.demo import run_demo

    check_device(args.device)
    summary = run_demo(
        args.out,
        size=args.size,
        seed=args.seed,
        device=args.device,
        real=args.real,
        resolution=args.resolution,
        epochs=args.epochs,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.quiet,
        host=args.host,
    )
    return 0 if summary["better_than_mean"] else 3


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``xchm`` command."""
    parser = Parser(
        prog="xchm",
        description="Canopy height maps from very-high-resolution imagery (DINOv3, xarray, Dask).",
    )
    parser.add_argument("--version", action="version", version=f"xchm {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of an error (also: XCHM_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = sub.add_parser("models", help="list model presets with parameter counts and bands")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=_models)

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
        "--overlap", type=nonnegative_int, default=DEFAULT_OVERLAP, help="window overlap (px)"
    )
    pred.add_argument("--chunks", type=positive_int, default=2048, help="chunk side in pixels")
    pred.add_argument("--batch-size", type=positive_int, help="windows per model call")
    pred.add_argument("--device", type=device, help="torch device (default: CUDA if available)")
    pred.add_argument("--nodata", type=float, help="input nodata value (default: from the file)")
    pred.add_argument("--int16-dm", action="store_true", help="write int16 decimetres, -9999")
    pred.add_argument("--overwrite", action="store_true", help="replace an existing output")
    pred.add_argument(
        "--combine",
        choices=("first", "mean"),
        default="first",
        help="several inputs: first listed valid pixel wins (list newest first), or mean",
    )
    pred.add_argument(
        "--scheduler",
        help="'local' (threads, default), 'auto' (start a local cluster: one worker per GPU, "
        f"or CPU workers) or a scheduler address (tcp://host:8786; {SCHEDULER_TIMEOUT_S} s to "
        "answer)",
    )
    pred.add_argument("--host", default="127.0.0.1", help=_HOST_HELP)
    pred.add_argument(
        "--region-size",
        type=positive_int,
        default=8192,
        help=".zarr output: pixels per region written and recorded at once (8192)",
    )
    pred.add_argument(
        "--no-resume",
        action="store_true",
        help=".zarr output: refuse to continue an existing store (default: resume it)",
    )
    pred.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    stac = pred.add_argument_group(
        "STAC search (instead of input files; pip install 'xchm[stac]', see docs/stac.md)"
    )
    stac.add_argument("--stac", metavar="URL", help="STAC API to search for the scenes")
    stac.add_argument("--collection", action="append", help="collection id (repeatable)")
    stac.add_argument(
        "--bbox", nargs=4, type=float, metavar=("W", "S", "E", "N"), help="area, degrees"
    )
    stac.add_argument("--datetime", help="interval to search, e.g. 2019/2024 or 2023-06/2023-09")
    stac.add_argument(
        "--months", default="7,8", help="months of each year (default 7,8: leaf-on) or 'all'"
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
        "--max-items", type=positive_int, default=1000, help="most items to use (1000)"
    )
    pred.set_defaults(func=_predict)

    demo = sub.add_parser(
        "demo",
        help="run the whole pipeline offline: scene -> chips -> training -> mosaic -> evaluation",
        description="Build a chip cube, train test-tiny, predict a scene on a local Dask cluster "
        "and evaluate it on held-out data; writes chm.tif, report/ and summary.json. Exits 3 if "
        "the model is not better than predicting the training mean.",
    )
    demo.add_argument("--out", default="out/demo", help="output folder (out/demo)")
    demo.add_argument(
        "--size",
        type=int_at_least(MIN_DEMO_SIZE),
        default=1536,
        help=f"synthetic scene side, px (1536; at least {MIN_DEMO_SIZE})",
    )
    demo.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of scene, split, training (0)"
    )
    demo.add_argument("--device", type=device, help="torch device (default: CUDA if available)")
    demo.add_argument("--real", help="folder of NAME_rgb.tif + NAME_chm*.tif pairs to use instead")
    demo.add_argument(
        "--resolution", type=positive_float, default=0.5, help="--real pixel size, m (0.5)"
    )
    demo.add_argument("--epochs", type=positive_int, help="training epochs (16 synthetic, 25 real)")
    demo.add_argument("--workers", type=positive_int, default=1, help="CPU worker processes (1)")
    demo.add_argument("--host", default="127.0.0.1", help=_HOST_HELP)
    demo.add_argument("--overwrite", action="store_true", help="replace a previous demo in --out")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    add_chips_parser(sub)
    add_train_parser(sub)
    add_pretrain_parser(sub)
    add_evaluate_parser(sub)
    add_bench_parser(sub)
    return parser


def describe(err: BaseException) -> str:
    """Return the one-line message ``xchm: error: ...`` gives for ``err``.

    xchm's own errors say what is wrong and what to do; others (a library's
    ``OSError``, a bug's ``KeyError``) are named by type, with what to try.

    Examples
    --------
    >>> describe(KeyError(101)).split(";")[0]
    'unexpected KeyError: 101'
    """
    text = " ".join(str(err).split())  # one line, whatever the message holds
    if isinstance(err, XCHMError):
        return text or type(err).__name__
    named = f"{type(err).__name__}: {text}" if text else type(err).__name__
    if isinstance(err, OSError):
        return f"{named}; check the path and its permissions"
    if isinstance(err, MemoryError):
        return f"out of memory ({named}); try smaller --chunks or --batch-size"
    return (
        f"unexpected {named}; run again with xchm --debug (or XCHM_DEBUG=1) to see where, "
        "and please report it"
    )


def _debugging(args: argparse.Namespace | None) -> bool:
    flag = os.environ.get("XCHM_DEBUG", "").strip().lower()
    return bool(getattr(args, "debug", False)) or flag not in ("", "0", "false", "no")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xchm`` command; return its exit status.

    0 success, 1 the command failed, 2 usage error (the parser's, before any work),
    3 ``xchm demo``'s model did not beat the training mean, 130 interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version (0) or a usage error (2, one line)
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if _debugging(args):
            raise
        print("xchm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - every failure ends in one line
        if _debugging(args):
            raise
        print(f"xchm: error: {describe(err)}", file=sys.stderr)
        return EXIT_ERROR
