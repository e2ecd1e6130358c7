"""The ``xchm bench`` command: throughput of ``xchm.predict`` on this machine.

Registered on :func:`xchm.cli.build_parser` by :func:`add_bench_parser`; the
measurements are :func:`xchm.inference.benchmark.run`'s, the same as
``benchmarks/throughput.py`` (which shares these options through
:func:`add_bench_arguments` and :func:`format_tables`). Progress goes to stderr,
the markdown tables to stdout. As in :mod:`xchm.cli`, torch is imported only when
the command runs. Option values of the wrong kind are the parser's usage errors
(exit 2); bad combinations raise :class:`~xchm.errors.InputError` (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime
from typing import Any

from xchm.cli.common import (
    add_deprecated_alias,
    add_precision_argument,
    check_device,
    check_writable,
    device,
    nonnegative_int,
    positive_float,
    positive_int,
)

__all__ = [
    "add_bench_arguments",
    "add_bench_parser",
    "config_from_args",
    "environment",
    "format_tables",
]


def add_bench_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the benchmark's options to ``parser`` (shared with benchmarks/throughput.py).

    Parameters
    ----------
    parser
        The parser of ``xchm bench`` or of the benchmark script.

    Returns
    -------
    argparse.ArgumentParser
        ``parser``.
    """
    from xchm.inference.benchmark import DEFAULT_PRESETS, SOURCES, BenchConfig
    from xchm.inference.predict import DEFAULT_OVERLAP

    p = parser
    p.add_argument(
        "--presets",
        nargs="+",
        default=list(DEFAULT_PRESETS),
        help="model presets, random weights (default: %(default)s; test-tiny for smoke runs)",
    )
    p.add_argument(
        "--size", type=positive_int, help="scene side in px (default 256 on CPU, 8192 on CUDA)"
    )
    chunk, repeats = BenchConfig.chunk, BenchConfig.repeats
    p.add_argument(
        "--chunk", type=positive_int, default=chunk, help=f"Dask chunk side in px ({chunk})"
    )
    p.add_argument(
        "--overlaps",
        type=nonnegative_int,
        nargs="+",
        default=[0, DEFAULT_OVERLAP],
        help=f"window overlaps; stride = 64 - overlap (default 0 {DEFAULT_OVERLAP})",
    )
    p.add_argument(
        "--sources",
        nargs="+",
        default=list(SOURCES),
        help="inputs: memory (Dask over NumPy) and/or cog (a local COG) (default: both)",
    )
    p.add_argument(
        "--repeats", type=positive_int, default=repeats, help=f"timed repeats (default {repeats})"
    )
    p.add_argument(
        "--batch-size", type=positive_int, help="windows per model call (default: predict's)"
    )
    p.add_argument("--device", type=device, help="torch device (default: CUDA if available)")
    p.add_argument(
        "--workers",
        type=positive_int,
        nargs="*",
        help="worker processes for the CPU-cluster scaling runs (default 1 2 on CPU, none on "
        "CUDA; --workers with no number skips them)",
    )
    p.add_argument(
        "--scaling-preset", help="preset of the cluster runs (default: the last of --presets)"
    )
    p.add_argument("--threads-per-worker", type=positive_int, help="threads per cluster worker (2)")
    p.add_argument(
        "--pixel-size",
        type=positive_float,
        default=BenchConfig.pixel_size,
        help=f"pixel size in m for km2/h ({BenchConfig.pixel_size}, WorldView)",
    )
    p.add_argument(
        "--peak-tflops", type=positive_float, help="device peak for MFU (default: from a table)"
    )
    add_precision_argument(p, BenchConfig.precision)
    p.add_argument(
        "-o", "--output", metavar="PATH", help="also write the results to this JSON file"
    )
    add_deprecated_alias(p, "--json", "-o/--output", dest="output", metavar="PATH")
    return p


def config_from_args(args: argparse.Namespace) -> Any:
    """Return the :class:`~xchm.inference.benchmark.BenchConfig` of parsed options.

    Raises
    ------
    InputError
        Bad options (all problems in one message).
    """
    from xchm.inference.benchmark import BenchConfig

    return BenchConfig(
        presets=tuple(args.presets),
        size=args.size,
        chunk=args.chunk,
        overlaps=tuple(args.overlaps),
        sources=tuple(args.sources),
        repeats=args.repeats,
        batch_size=args.batch_size,
        device=args.device,
        workers=None if args.workers is None else tuple(args.workers),
        scaling_preset=args.scaling_preset,
        threads_per_worker=args.threads_per_worker,
        pixel_size=args.pixel_size,
        peak_tflops=args.peak_tflops,
        precision=args.precision,
    )


def _mm(s: dict[str, float], fmt: str = ".1f") -> str:
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}-{s['max']:{fmt}})"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _scheduler(row: dict[str, Any]) -> str:
    if not row["workers"]:
        return "local threads"
    return f"{row['workers']} worker(s) x {row['threads_per_worker']} threads"


def format_tables(result: dict[str, Any]) -> str:
    """Markdown tables of :func:`~xchm.inference.benchmark.run`'s result.

    Throughput (medians, min-max), the time split (shares of predict + write) and,
    when measured, the CPU-cluster scaling.
    """
    device = result["device"]
    pixel = result["config"]["pixel_size"]
    if device["peak_tflops"]:
        mfu_note = f"MFU (of {device['peak_tflops']:g} TFLOP/s)"
    else:
        mfu_note = "MFU n/a" + (" (CPU)" if device["type"] == "cpu" else " (peak unknown)")
    head = ["preset", "source", "overlap (stride)", "scene px", "windows (run)", "predict s"]
    head += ["windows/s", f"km2/h at {pixel:g} m", "windows/s incl. write"]
    head += ["GFLOP/window (backbone)"]
    head += ["TFLOP/s", mfu_note]
    rows = []
    for r in result["results"]:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        gflop = r["gflop_per_window"]
        rows.append(
            [r["preset"], r["source"], f"{r['overlap']} ({r['stride']})"]
            + [f"{r['size']}x{r['size']}", f"{r['windows']} ({r['windows_run']})"]
            + [_mm(r["seconds"]["predict"], ".3f"), _mm(r["windows_per_s"])]
            + [f"{r['km2_per_h']['median']:.1f}", f"{r['windows_per_s_with_write']:.1f}"]
            + [f"{gflop['total']:.2f} ({gflop['backbone']:.2f})", f"{r['tflops']:.3g}", mfu]
        )
    precision = ""
    if result["results"]:  # one precision per run; older results have none
        first = result["results"][0]
        if "precision" in first:
            precision = f", precision {first['precision']} (ran in {first['dtype']})"
    parts = [f"Device: {device['name']}, torch threads {device['torch_threads']}{precision}."]
    parts.append(_table(head, rows))
    stages = ["read", "h2d", "normalise", "model", "blend", "write", "other"]
    rows = [
        [r["preset"], r["source"], str(r["overlap"])]
        + [f"{r['shares'][s]:.1%}" for s in stages]
        + [f"{r['seconds']['predict']['median'] + r['seconds']['write']['median']:.3f}"]
        for r in result["results"]
    ]
    parts.append(_table(["preset", "source", "overlap", *stages, "predict + write s"], rows))
    if result["scaling"]:
        head = ["preset", "scheduler", "chunk px", "overlap", "windows (run)"]
        head += ["predict s", "windows/s", "x first cluster"]
        rows = [
            [r["preset"], _scheduler(r), str(r["chunk"])]
            + [str(r["overlap"]), f"{r['windows']} ({r['windows_run']})"]
            + [_mm(r["seconds"], ".3f"), _mm(r["windows_per_s"]), f"{r['speedup']:.2f}"]
            for r in result["scaling"]
        ]
        parts.append(_table(head, rows))
    return "\n\n".join(parts)


def environment() -> dict[str, Any]:
    """Date, command, versions and load average (other processes disturb timings)."""
    import dask
    import torch

    from xchm._version import __version__

    try:
        load: list[float] | None = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "python": platform.python_version(),
        "xchm": __version__,
        "torch": torch.__version__,
        "dask": dask.__version__,
        "loadavg_start": load,
    }


def _bench(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from xchm.inference.benchmark import run

    config = config_from_args(args)
    check_device(args.device)
    if args.output:  # before the minutes of measuring, not after
        check_writable(Path(args.output).absolute().parent, args.output)
    env = environment()
    start = time.perf_counter()
    result = run(config, log=lambda line: print(line, file=sys.stderr, flush=True))
    env["seconds"] = round(time.perf_counter() - start, 1)
    env["loadavg_end"] = [round(v, 2) for v in os.getloadavg()] if env["loadavg_start"] else None
    print(format_tables(result))
    print(
        f"\n{env['seconds']} s; load average (1, 5, 15 min) {env['loadavg_start']} at start, "
        f"{env['loadavg_end']} at end"
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"environment": env, **result}, f, indent=2)
        print(f"wrote {args.output}")
    return 0


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``bench`` command on the ``xchm`` sub-parsers ``sub``.

    Parameters
    ----------
    sub
        What ``ArgumentParser.add_subparsers`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``bench`` parser.
    """
    bench = sub.add_parser(
        "bench",
        help="measure prediction throughput (windows/s, km2/h, MFU, time per stage)",
        description="Time xchm.predict end to end on a synthetic scene, in memory and from a "
        "local COG, per preset and overlap (random weights: speed only); see "
        "benchmarks/throughput.py for the method.",
    )
    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)
    return bench
