"""The ``xchm demo`` command: the whole pipeline, offline, on a synthetic or real scene.

Registered on :func:`xchm.cli.build_parser` by :func:`add_demo_parser`; the work is
:func:`xchm.demo.run_demo`'s.
"""

from __future__ import annotations

import argparse
from typing import Any

from xchm.cli.common import (
    HOST_HELP,
    check_device,
    device,
    int_at_least,
    nonnegative_int,
    positive_float,
    positive_int,
)
from xchm.demo import MIN_SIZE

__all__ = ["add_demo_parser"]


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


def add_demo_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``demo`` command on the ``xchm`` sub-parsers ``sub``."""
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
        type=int_at_least(MIN_SIZE),
        default=1536,
        help=f"synthetic scene side, px (1536; at least {MIN_SIZE})",
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
    demo.add_argument("--host", default="127.0.0.1", help=HOST_HELP)
    demo.add_argument("--overwrite", action="store_true", help="replace a previous demo in --out")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)
    return demo
