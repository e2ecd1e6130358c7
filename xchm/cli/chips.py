"""The ``xchm chips`` commands: build, inspect and preview chip cubes.

Kept apart from :mod:`xchm.cli` so that module stays a short index of commands;
:func:`add_chips_parser` registers the group there. As in :mod:`xchm.cli`, every
command imports what it needs when it runs, so ``xchm --help`` stays fast and
``import xchm.cli`` does not import torch.

Errors make these commands exit with status 1 after one line on stderr
(:func:`xchm.cli.main` prints it); bad option values are the parser's usage errors
(status 2, before any work), and ``xchm chips`` without a command prints its help
and exits with 2 too.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from xchm.chips.builder import build as build_cube
from xchm.chips.preview import preview
from xchm.chips.splits import SPLIT_METHODS
from xchm.cli.common import (
    add_bands_argument,
    add_deprecated_alias,
    default_of,
    nodata,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)

__all__ = ["add_chips_parser", "read_pairs_csv"]

_CSV_COLUMNS = ("image", "chm", "scene", "date")


def read_pairs_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read scene pairs from a CSV file with columns ``image,chm[,scene,date]``.

    Relative paths are taken relative to the CSV file's directory; empty ``scene``
    and ``date`` cells mean "default" (the image's file name, its date tag). A CSV
    without a ``chm`` column (``image[,scene,date]``) lists images alone, for an
    unlabeled cube: its dicts have no ``chm`` key.

    Parameters
    ----------
    path
        The CSV file (with a header line).

    Returns
    -------
    list of dict
        One dict per row, for :func:`xchm.chips.build`'s ``pairs``.

    Raises
    ------
    PathNotFoundError
        If the file does not exist (a ``FileNotFoundError``).
    InputError
        If a column is missing or unknown, an image or chm cell is empty, or there
        are no rows.

    Examples
    --------
    >>> read_pairs_csv("pairs.csv")  # doctest: +SKIP
    [{'image': PosixPath('/data/a.tif'), 'chm': PosixPath('/data/a_chm.tif')}]
    >>> read_pairs_csv("images.csv")  # header image,scene  # doctest: +SKIP
    [{'image': PosixPath('/data/a.tif'), 'scene': 'a'}]
    """
    from xchm.errors import InputError, PathNotFoundError

    source = Path(path).expanduser()
    if not source.is_file():
        raise PathNotFoundError(
            f"no such pairs CSV file: {source}; give a CSV with the columns image,chm[,scene,date]"
        )
    with source.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("image",) if c not in header]
        unknown = [c for c in header if c not in _CSV_COLUMNS]
        if missing or unknown:
            raise InputError(
                f"{source}: columns must be image,chm[,scene,date] (or image[,scene,date] for "
                f"images without CHM); got {','.join(header)!r}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unknown {unknown})" if unknown else "")
            )
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    paths = ("image", "chm") if "chm" in header else ("image",)
    pairs = []
    for line, row in enumerate(rows, start=2):
        empty = [k for k in paths if not row[k]]
        if empty:
            hint = " (for images without CHM, leave out the chm column)" if "chm" in empty else ""
            raise InputError(f"{source} line {line}: {' and '.join(empty)} must not be empty{hint}")
        pair: dict[str, Any] = {k: _cell_path(source, row[k]) for k in paths}
        pair.update({k: row[k] for k in ("scene", "date") if row.get(k)})
        pairs.append(pair)
    if not pairs:
        raise InputError(f"{source} lists no pairs; add rows below the header {','.join(header)}")
    return pairs


def _cell_path(source: Path, cell: str) -> str | Path:
    """Return a CSV cell as a path under the CSV's folder, or a URL as written."""
    from xchm.storage import location

    return cell if location(cell).is_url else source.parent / Path(cell).expanduser()


def _build(args: argparse.Namespace) -> int:
    import xchm.chips
    from xchm.errors import InputError

    pairs: list[Any] = [tuple(p) for p in args.pair or []]
    from xchm.storage import location

    pairs += [p if location(p).is_url else Path(p) for p in args.image or []]  # images alone
    if args.pairs_csv:
        pairs += read_pairs_csv(args.pairs_csv)
    if not pairs:
        raise InputError(
            "no scenes: give --pair IMAGE CHM (repeatable), --image IMAGE (repeatable; images "
            "without CHM make an unlabeled cube, for pretraining) or --pairs-csv FILE"
        )
    fractions = {
        "train": round(1 - args.val_fraction - args.test_fraction, 12),
        "val": args.val_fraction,
        "test": args.test_fraction,
    }
    if min(fractions.values()) < 0:
        raise InputError(
            f"--val-fraction {args.val_fraction} and --test-fraction {args.test_fraction} must "
            "be >= 0 and sum to at most 1 (the rest is train)"
        )
    cube = xchm.chips.build(
        pairs,
        args.output,
        window=args.window,
        stride=args.stride,
        bands=args.bands,
        resolution=args.resolution,
        nodata=args.nodata,
        min_valid=args.min_valid,
        # None: the default (drop for labeled scenes; not applicable to images alone).
        drop_no_positive=False if args.keep_no_positive else None,
        split_by=args.split_by,
        fractions={k: v for k, v in fractions.items() if v > 0},
        block_size=args.block_size,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(cube.summary())
    return 0


def _info(args: argparse.Namespace) -> int:
    import xchm.chips

    cube = xchm.chips.open(args.store)
    if args.json:
        info = {
            "path": str(cube.path),
            "chips": len(cube),
            "labeled": cube.labeled,
            "splits": cube.splits,
        }
        print(json.dumps({**info, "attrs": cube.attrs}, indent=2, default=str))
    else:
        print(cube.summary())
    return 0


def _preview(args: argparse.Namespace) -> int:
    import xchm.chips

    cube = xchm.chips.open(args.store)
    out = preview(
        cube,
        args.output,
        n=args.n,
        split=args.split,
        seed=args.seed,
        columns=args.columns,
        scale=args.scale,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def add_chips_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``chips`` command group on the ``xchm`` sub-parsers ``sub``.

    Parameters
    ----------
    sub
        What ``ArgumentParser.add_subparsers`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``chips`` parser.

    Examples
    --------
    >>> parser = argparse.ArgumentParser(prog="xchm")
    >>> chips = add_chips_parser(parser.add_subparsers())
    >>> parser.parse_args(["chips", "info", "cube.zarr"]).store
    'cube.zarr'
    """
    chips = sub.add_parser(
        "chips",
        help="build, inspect and preview chip cubes (training data)",
        description="Chip cubes: Zarr stores of image chips and canopy height chips (or image "
        "chips alone, for pretraining).",
    )
    chips.set_defaults(func=lambda _: _help(chips))
    commands = chips.add_subparsers(dest="chips_command", metavar="COMMAND")

    build = commands.add_parser(
        "build",
        help="cut chips from (image, CHM) scene pairs, or images alone, into a new chip cube",
        description="Cut image and canopy height chips from scene pairs into a Zarr chip cube "
        "(see docs/chip-cube-format.md). Images without CHM (--image, or a CSV without a chm "
        "column) make an unlabeled cube of image chips alone, for pretraining; a cube is "
        "either labeled or not, so do not mix the two. Memory is bounded by one strip of chips "
        "per scene.",
    )
    build.add_argument("-o", "--output", required=True, metavar="STORE", help="new cube (.zarr)")
    build.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("IMAGE", "CHM"),
        help="an image GeoTIFF/COG and its CHM (metres); repeat for more scenes",
    )
    build.add_argument(
        "--image",
        action="append",
        metavar="IMAGE",
        help="an image without CHM (unlabeled cube, for pretraining); repeat for more scenes",
    )
    build.add_argument(
        "--pairs-csv",
        metavar="FILE",
        help="CSV with columns image,chm[,scene,date], or image[,scene,date] for images "
        "without CHM (paths relative to the CSV)",
    )
    add_bands_argument(build, words=True, what="image", old="--band-map")
    window = default_of(build_cube, "window")
    build.add_argument(
        "--window", type=positive_int, default=window, help=f"chip side in px (default {window})"
    )
    build.add_argument(
        "--stride", type=positive_int, help="px between chip origins (default: window)"
    )
    build.add_argument(
        "--resolution", type=positive_float, metavar="M", help="resample to M metres"
    )
    build.add_argument(
        "--nodata",
        type=nodata,
        default=default_of(build_cube, "nodata"),
        metavar="V",
        help="image nodata: a number, none, or auto (default: the file's own)",
    )
    build.add_argument(
        "--min-valid",
        type=nonnegative_float,
        default=default_of(build_cube, "min_valid"),
        metavar="F",
        help="valid share a chip needs",
    )
    build.add_argument(
        "--keep-no-positive",
        action="store_true",
        help="keep chips without a height > 0 (images without CHM: always kept)",
    )
    build.add_argument(
        "--split-by",
        choices=SPLIT_METHODS,
        default=default_of(build_cube, "split_by"),
        help="how chips are split into train/val/test: blocks of chips, whole scenes, or chip "
        "by chip (default: %(default)s)",
    )
    add_deprecated_alias(build, "--split", "--split-by", dest="split_by", choices=SPLIT_METHODS)
    build.add_argument("--val-fraction", type=nonnegative_float, default=0.2, metavar="F")
    build.add_argument("--test-fraction", type=nonnegative_float, default=0.0, metavar="F")
    build.add_argument(
        "--block-size",
        type=positive_int,
        default=default_of(build_cube, "block_size"),
        help="split block side in chips",
    )
    build.add_argument(
        "--seed",
        type=nonnegative_int,
        default=default_of(build_cube, "seed"),
        help="seed of shuffle, split, statistics",
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing store")
    build.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    build.set_defaults(func=_build)

    info = commands.add_parser("info", help="describe a chip cube")
    info.add_argument("store", help="chip cube (.zarr)")
    info.add_argument("--json", action="store_true", help="print attrs, chips and splits as JSON")
    info.set_defaults(func=_info)

    prev = commands.add_parser(
        "preview",
        help="write a PNG grid of random image/height chip pairs",
        description="Write a PNG of randomly picked chips: each image chip as a quicklook next "
        "to its height chip (colour ramp; grey = no height).",
    )
    prev.add_argument("store", help="chip cube (.zarr)")
    prev.add_argument("-o", "--output", required=True, help="output .png")
    n = default_of(preview, "n")
    prev.add_argument("--n", type=positive_int, default=n, help=f"chips to show (default {n})")
    prev.add_argument("--split", help="only chips of this split (train, val, test)")
    prev.add_argument(
        "--seed", type=nonnegative_int, default=default_of(preview, "seed"), help="seed of the pick"
    )
    prev.add_argument(
        "--columns", type=positive_int, default=default_of(preview, "columns"), help="pairs per row"
    )
    prev.add_argument(
        "--scale", type=positive_int, default=default_of(preview, "scale"), help="upscaling factor"
    )
    prev.add_argument("--overwrite", action="store_true", help="replace an existing file")
    prev.set_defaults(func=_preview)
    return chips


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
