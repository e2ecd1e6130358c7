"""The ``xchm demo`` command: the whole pipeline, offline, on a synthetic or real scene.

Registered on :func:`xchm.cli.build_parser` by :func:`add_demo_parser`; the work is
:func:`xchm.demo.run_demo`'s.
"""

from __future__ import annotations

import argparse
from typing import Any

from xchm.cli.common import (
    HOST_HELP,
    add_deprecated_alias,
    check_device,
    default_of,
    device,
    int_at_least,
    nonnegative_int,
    positive_float,
    positive_int,
)
from xchm.cluster import LOOPBACK
from xchm.demo import DEMO_SIZE, MIN_SIZE, run_demo

__all__ = ["add_demo_parser"]


def _demo(args: argparse.Namespace) -> int:
    check_device(args.device)
    summary = run_demo(
        args.output,
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
    output, seed = default_of(run_demo, "output"), default_of(run_demo, "seed")
    resolution, workers = default_of(run_demo, "resolution"), default_of(run_demo, "workers")
    demo.add_argument("-o", "--output", default=output, help=f"output folder ({output})")
    add_deprecated_alias(demo, "--out", "-o/--output", dest="output")
    demo.add_argument(
        "--size",
        type=int_at_least(MIN_SIZE),
        default=DEMO_SIZE,
        help=f"synthetic scene side, px ({DEMO_SIZE}; at least {MIN_SIZE})",
    )
    demo.add_argument(
        "--seed",
        type=nonnegative_int,
        default=seed,
        help=f"seed of scene, split, training ({seed})",
    )
    demo.add_argument("--device", type=device, help="torch device (default: CUDA if available)")
    demo.add_argument("--real", help="folder of NAME_rgb.tif + NAME_chm*.tif pairs to use instead")
    demo.add_argument(
        "--resolution",
        type=positive_float,
        default=resolution,
        help=f"--real pixel size, m ({resolution})",
    )
    demo.add_argument("--epochs", type=positive_int, help="training epochs (16 synthetic, 25 real)")
    demo.add_argument(
        "--workers", type=positive_int, default=workers, help=f"CPU worker processes ({workers})"
    )
    demo.add_argument("--host", default=LOOPBACK, help=HOST_HELP)
    demo.add_argument(
        "--overwrite", action="store_true", help="replace a previous demo in --output"
    )
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)
    return demo
