"""The ``xchm`` command line: :func:`main` and :func:`build_parser`.

One module per command, each registering its sub-parser with an ``add_*_parser``
function: :mod:`~xchm.cli.models`, :mod:`~xchm.cli.predict` (and
:mod:`~xchm.cli.stac` for ``--stac``), :mod:`~xchm.cli.demo`, :mod:`~xchm.cli.chips`,
:mod:`~xchm.cli.train` (``train`` and ``evaluate``), :mod:`~xchm.cli.pretrain`,
:mod:`~xchm.cli.bench`; the parser class, option types, exit statuses and early checks
shared by every command are in :mod:`~xchm.cli.common`, and :mod:`~xchm.cli.reference`
renders ``docs/cli.md``. Each command imports what it needs when it runs, so
``xchm --help`` stays fast. Option defaults are the library's constants, never copies.

Logging: warnings and errors only by default (Dask's start-up and shutdown lines
included, see :func:`xchm.cluster.dask_log_level`); ``-v`` adds INFO lines, ``-vv``
DEBUG ones.

Every failure ends in one line ``xchm: error: ...`` on stderr and a documented exit
status (1: the command failed, 2: usage); a traceback only with ``xchm --debug`` or
``XCHM_DEBUG=1``. Library exceptions that are not xchm's (an ``OSError`` of
rasterio, a ``KeyError`` of a bug) get the same one line, naming their type.

This package is the top layer: it may import any part of xchm, and nothing in xchm
imports it but ``xchm/__main__.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from xchm._version import __version__
from xchm.cli.bench import add_bench_parser
from xchm.cli.chips import add_chips_parser
from xchm.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, Parser
from xchm.cli.demo import add_demo_parser
from xchm.cli.models import add_models_parser
from xchm.cli.predict import add_predict_parser
from xchm.cli.pretrain import add_pretrain_parser
from xchm.cli.train import add_evaluate_parser, add_train_parser
from xchm.errors import XCHMError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``xchm`` command."""
    parser = Parser(
        prog="xchm",
        description="Canopy height maps from very-high-resolution imagery (DINOv3, xarray, Dask).",
    )
    parser.add_argument("--version", action="version", version=f"xchm {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output: -v adds INFO lines (xchm's, and Dask's from the clusters xchm "
        "starts), -vv DEBUG; by default only warnings and errors",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of an error (also: XCHM_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    add_models_parser(sub)
    add_predict_parser(sub)
    add_demo_parser(sub)
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
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # xchm's own level even where logging was configured before (basicConfig then does
    # nothing); Dask clusters xchm starts follow it (xchm.cluster.dask_log_level).
    logging.getLogger("xchm").setLevel(level)
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
