"""Throughput of ``xchm.predict`` per device: windows/s, km2/h, MFU and where the time goes.

The benchmark of issue 4 (``xchm bench`` runs the same measurements, from
:mod:`xchm.inference.benchmark`; this script adds the machine's description).

Input: one synthetic scene of ``--size`` x ``--size`` pixels (default 256 on the
CPU, 8192 on CUDA), uint16 DN, bands nir/red/green, EPSG:32617, ``--pixel-size``
m pixels (default 0.5 m, the reference's WorldView resolution; km2/h assume it and
the models are built for it), given to predict in two ways (``--sources``):

* ``memory``: the NumPy array wrapped in a Dask array (``DataArray.chunk``);
* ``cog``: a COG (DEFLATE) written by the script to a temporary folder, opened with
  ``rioxarray.open_rasterio(path, chunks=..., lock=False)`` (warm page cache: the
  file was just written, so this is decode cost, not disk I/O).

Both use ``--chunk`` px Dask chunks (default 2048, ``BenchConfig.chunk``).

For each preset in ``--presets`` (random weights, built with ``load_model`` on the
device; default ``dinov3-vitl16-sat`` and ``dinov3-vits16``, ``test-tiny`` for smoke
runs), after one untimed warm-up run, ``--repeats`` timed repeats, every source
and overlap interleaved within a repeat (background load hits all alike); each
run times

* **read**: the input alone, ``image.data.compute()``;
* **predict**: ``xchm.predict(image, model, overlap=O).compute()`` (the public
  path: graph, halo, reading, kernel, result in memory), with
  ``xchm.inference.telemetry.collect()`` around it for the kernel's own seconds per
  stage (``h2d``, ``normalise``, ``model``, ``blend``; the last includes the copy
  back to the host) and the windows it ran;
* **write**: the computed result to a Zarr store in the temporary folder.

Reported: medians (min-max) over the repeats of windows/s = lattice windows / predict
seconds, where the lattice windows are what the scene needs (``window_span`` count
along y times along x, at stride 64 - overlap; ``--overlaps``, default 0 and
``xchm.inference.DEFAULT_OVERLAP`` = 16); the windows the kernel actually ran (it
evaluates windows near chunk borders once per neighbouring chunk, so more with
several chunks); km2/h; windows/s including the write; achieved TFLOP/s = lattice
windows/s x GFLOP per window (counted with ``torch.utils.flop_counter`` on one
window, backbone + decoder; the backbone of ViT-L is 12.75 GFLOP, issue 4's figure,
and matches benchmarks/model_forward.py's analytic count); MFU = achieved / device
peak (dense bf16, from a small table of known GPUs or ``--peak-tflops``; not
applicable on the CPU unless ``--peak-tflops`` is given). The time split gives each
stage's median seconds as a share of the median (predict + write): read (measured
alone; inside predict it overlaps other work), the kernel stages, write, and
"other" (the rest: graph construction, scheduling, halo assembly, the kernel's
masking and cropping; negative if stages overlapped in threads).

``--precision`` is predict's ``precision=`` (default ``auto``: bf16 autocast on CUDA
and on CPUs with native bf16, fp32 elsewhere); every row names the precision asked
and the dtype the model ran in. Other predict options (decoder, ``torch.compile``)
are timed one configuration per run by ``benchmarks/gpu_predict_options.py``. On
CUDA the stages end with a device synchronisation.

CPU scaling ("1 vs 2 workers", ``--workers``, default 1 2 on the CPU, none on
CUDA), for ``--scaling-preset`` (default: the last of ``--presets``, so
``dinov3-vits16``, which keeps the run short): the same in-memory scene in 4 chunks
(``size // 2``: something for two workers to share), predicted at the first
overlap, first on Dask's local threads (the model object in this process), then on
``xchm.cluster.start(gpus=None, n_workers=N, threads_per_worker=...)`` for each N
(torch gets cores / N threads per worker), with the model saved as a checkpoint
(workers in other processes need a path); each after one warm-up run (each worker
loads the model), ``--repeats`` timed runs; windows/s and the ratio to the first
cluster.

torch uses all cores available to the process. With the defaults the whole run
takes 3-4 minutes on a 2-core CPU. On a shared machine compare only numbers
from one run.

Run it from the repository root::

    .venv/bin/python benchmarks/throughput.py -o /tmp/throughput.json
    .venv/bin/python benchmarks/throughput.py --presets test-tiny --size 128 --repeats 1
    .venv/bin/python benchmarks/throughput.py --presets dinov3-vitl16-sat --size 16384  # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chip_cube import available_cores, cpu_model, load_average, versions  # noqa: E402

from xchm.cli.bench import add_bench_arguments, config_from_args, environment, format_tables  # noqa: E402
from xchm.errors import InputError  # noqa: E402
from xchm.inference.benchmark import VITL_GFLOP, run  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (the same as ``xchm bench``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    return add_bench_arguments(p).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_from_args(args)  # bad options fail here, before anything runs
    except InputError as err:
        raise SystemExit(f"error: {err}") from None
    env: dict[str, Any] = {
        **environment(),
        **versions(),
        "cpu": cpu_model(),
        "cores": available_cores(),
    }
    print(
        f"{env['date']}: xchm {env['xchm']}, torch {env['torch']}, {env['cores']} cores "
        f"({env['cpu']}); load average {env['loadavg_start']}",
        flush=True,
    )
    start = time.perf_counter()
    result = run(config, log=lambda line: print(line, flush=True))
    env["seconds"] = round(time.perf_counter() - start, 1)
    env["loadavg_end"] = load_average()
    for r in result["results"]:
        if r["preset"] == "dinov3-vitl16-sat":
            counted = r["gflop_per_window"]["backbone"]
            print(f"ViT-L backbone: {counted:.3f} GFLOP/window counted, issue 4: {VITL_GFLOP}")
            break
    print(
        f"\nload average (1, 5, 15 min): {env['loadavg_start']} at start, "
        f"{env['loadavg_end']} at end; {env['seconds']} s\n"
    )
    print(format_tables(result))
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"environment": env, **result}, f, indent=2)
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
