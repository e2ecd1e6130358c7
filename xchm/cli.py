"""The ``xchm`` command line.

Sub-commands live in small functions registered in :func:`build_parser`; each
imports what it needs, so ``xchm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from xchm._version import __version__
from xchm.errors import XCHMError

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


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``xchm`` command."""
    parser = argparse.ArgumentParser(
        prog="xchm",
        description="Canopy height maps from very-high-resolution imagery (DINOv3, xarray, Dask).",
    )
    parser.add_argument("--version", action="version", version=f"xchm {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    models = sub.add_parser("models", help="list model presets with parameter counts and bands")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xchm`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except XCHMError as err:
        print(f"xchm: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
