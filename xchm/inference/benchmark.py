"""Throughput of ``xchm.predict`` per device: windows/s, km2/h, MFU and where time goes.

The measuring core of ``xchm bench`` and ``benchmarks/throughput.py`` (which adds
the machine's description; the method is documented there). :func:`run` builds a
synthetic scene, writes it as a COG to a temporary folder, and for each preset,
source and overlap times the public path ``xchm.predict(image, model).compute()``,
interleaved repeat by repeat, with :func:`xchm.inference.telemetry.collect` around
it for the kernel's seconds per stage; it times reading the input alone and
writing the result (Zarr) apart, and optionally repeats the prediction on
``xchm.cluster.start`` CPU clusters of 1, 2, ... worker processes.

Memory: the scene lives in memory (3 x size^2 uint16) and on disk (the COG); each
result is computed into memory. Imports torch when run, not on import.
"""

from __future__ import annotations

import functools
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from xchm.errors import InputError
from xchm.inference.predict import DEFAULT_OVERLAP
from xchm.inference.telemetry import STAGES, collect
from xchm.inference.windows import window_span

__all__ = ["BenchConfig", "PEAK_TFLOPS", "lattice_windows", "windows_run", "peak_tflops", "run"]

WINDOW = 64
SOURCES = ("memory", "cog")
DEFAULT_PRESETS = ("dinov3-vitl16-sat", "dinov3-vits16")
#: Dense bf16 peak TFLOP/s, by a fragment of the CUDA device name (first match wins).
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
#: Issue 4's figure: GFLOP per ViT-L/16 window of 64 px (backbone; 12.752 counted).
VITL_GFLOP = 12.75


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What :func:`run` measures; ``None`` fields get per-device defaults."""

    presets: tuple[str, ...] = DEFAULT_PRESETS
    """Model presets (random weights)."""
    size: int | None = None
    """Scene side in pixels (default 256 on the CPU, 8192 on CUDA)."""
    chunk: int = 2048
    """Dask chunk side of both sources (``xchm bench --chunk``'s default)."""
    overlaps: tuple[int, ...] = (0, DEFAULT_OVERLAP)
    """Window overlaps (stride = 64 - overlap)."""
    sources: tuple[str, ...] = SOURCES
    """``"memory"`` (a Dask array over a NumPy array) and/or ``"cog"`` (a local COG)."""
    repeats: int = 3
    """Timed repeats (after one untimed warm-up per preset)."""
    batch_size: int | None = None
    """Windows per model call (default: predict's, 16 on CPU, 512 on CUDA)."""
    device: str | None = None
    """Torch device (default: CUDA if present)."""
    workers: tuple[int, ...] | None = None
    """Worker processes of the CPU-cluster runs (default (1, 2) on the CPU, none on CUDA)."""
    scaling_preset: str | None = None
    """Preset of the cluster runs (default: the last of ``presets``, the cheapest by default)."""
    threads_per_worker: int | None = None
    """Threads per cluster worker (default: ``xchm.cluster.start``'s, 2)."""
    pixel_size: float = 0.5
    """Pixel size in metres for km2/h (0.5: the reference's WorldView imagery)."""
    peak_tflops: float | None = None
    """Device peak for MFU (default: :data:`PEAK_TFLOPS` on CUDA, none on the CPU)."""
    precision: str = "auto"
    """Model arithmetic, as ``xchm.predict``'s ``precision=`` (emulated bf16/fp16 on
    CPUs without the instructions are far slower: measure them on a small ``size``)."""

    def __post_init__(self) -> None:
        """Check every option; raise one InputError listing all problems."""
        from xchm.inference.runtime import PRECISIONS
        from xchm.models.presets import PRESETS

        names = [*self.presets, *([self.scaling_preset] if self.scaling_preset else [])]
        checks = [(p in PRESETS, f"unknown preset {p!r} (known: {sorted(PRESETS)})") for p in names]
        checks += [(s in SOURCES, f"unknown source {s!r} (known: {SOURCES})") for s in self.sources]
        checks += [(0 <= o < WINDOW, f"overlap {o} is not in [0, {WINDOW})") for o in self.overlaps]
        checks += [(n >= 1, f"workers must be >= 1, got {n}") for n in self.workers or ()]
        checks.append(
            (
                self.precision in PRECISIONS,
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
            )
        )
        counts = {
            "repeats": self.repeats,
            "batch_size": self.batch_size,
            "threads_per_worker": self.threads_per_worker,
        }
        checks += [(v is None or v >= 1, f"{k} must be >= 1, got {v}") for k, v in counts.items()]
        pixels = {"size": self.size, "chunk": self.chunk}
        checks += [
            (v is None or v >= WINDOW, f"{k} must be >= {WINDOW} px, got {v}")
            for k, v in pixels.items()
        ]
        positive = {"pixel_size": self.pixel_size, "peak_tflops": self.peak_tflops}
        checks += [(v is None or v > 0, f"{k} must be > 0, got {v}") for k, v in positive.items()]
        checks.append(
            (
                bool(self.presets and self.overlaps and self.sources),
                "presets, overlaps and sources need a value each",
            )
        )
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise InputError("bad benchmark options: " + "; ".join(problems))


def lattice_windows(height: int, width: int, stride: int) -> int:
    """Lattice windows touching a scene, ``window_span`` per axis (border cut not applied).

    Examples
    --------
    >>> lattice_windows(256, 256, 64), lattice_windows(256, 256, 48)
    (16, 49)
    """
    return (
        window_span(0, height, WINDOW, stride).count * window_span(0, width, WINDOW, stride).count
    )


def windows_run(height: int, width: int, chunk: int, stride: int) -> int:
    """Windows the kernel runs: each chunk runs the scene's windows touching it (no nodata).

    Mirrors predict's chunking: a last chunk thinner than a window joins its neighbour.

    Examples
    --------
    >>> windows_run(256, 256, 128, 64), windows_run(256, 256, 128, 48)  # lattice: 16, 49
    (16, 64)
    """

    def per_axis(total: int) -> int:
        edges = list(range(0, total, chunk)) + [total]
        if len(edges) > 2 and edges[-1] - edges[-2] < WINDOW:
            del edges[-2]
        return sum(
            window_span(a, b, WINDOW, stride, size=total).count
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        )

    return per_axis(height) * per_axis(width)


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a CUDA device from :data:`PEAK_TFLOPS` (None if unknown)."""
    return next((peak for key, peak in PEAK_TFLOPS if key in device_name), None)


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def make_scene(size: int, pixel_size: float, seed: int = 0) -> Any:
    """Build a (band, y, x) uint16 scene, EPSG:32617, bands nir/red/green/blue (``long_name``).

    Every preset finds its bands in it by name (nir/red/green, or red/green/blue for
    ``chmv2``).
    """
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 2500 + 1500 * np.sin(yy / 9.0) * np.cos(xx / 13.0)
    data = np.stack([base + rng.normal(0, 300, base.shape) * k for k in (1.0, 0.5, 0.4, 0.3)])
    coords = {"band": [1, 2, 3, 4], "y": 7e6 - pixel_size * (np.arange(size) + 0.5)}
    coords["x"] = 4e5 + pixel_size * (np.arange(size) + 0.5)
    image = xr.DataArray(
        np.clip(data, 1, 9000).astype("uint16"),
        dims=("band", "y", "x"),
        coords=coords,
        attrs={"long_name": ("nir", "red", "green", "blue")},  # written as band descriptions
    )
    return image.rio.write_crs("EPSG:32617")


def open_source(source: str, scene: Any, cog: Path, chunk: int) -> Any:
    """Return the scene as a Dask-backed DataArray: over memory, or read from the COG."""
    import rioxarray

    chunks = {"band": -1, "y": chunk, "x": chunk}
    if source == "memory":
        return scene.chunk(chunks)
    return rioxarray.open_rasterio(cog, chunks=chunks, lock=False)


def gflop_per_window(model: Any, device: Any) -> dict[str, float]:
    """GFLOP per window (backbone, decoder, total) counted by ``FlopCounterMode``.

    Matmuls, convolutions and attention, 2 FLOPs per multiply-add; torch has no
    formula for the CPU attention kernel, so CUDA's is used for it.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def sdpa(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
        return 2 * int(np.prod(q[:-2])) * q[-2] * k[-2] * (q[-1] + v[-1])

    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa}
    x = torch.randn(1, model.card.num_bands, WINDOW, WINDOW, device=device)
    with torch.inference_mode():
        with FlopCounterMode(display=False, custom_mapping=custom) as counter:
            features = model.features(x, validate=False)
        flops = [counter.get_total_flops() / 1e9]
        with FlopCounterMode(display=False, custom_mapping=custom) as counter:
            model.decoder(features)
        flops.append(counter.get_total_flops() / 1e9)
    return {"backbone": flops[0], "decoder": flops[1], "total": sum(flops)}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or platform.machine())


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _predict(image: Any, model: Any, overlap: int, cfg: BenchConfig) -> Any:
    from xchm.inference.predict import predict

    chm = predict(
        image,
        model,
        overlap=overlap,
        batch_size=cfg.batch_size,
        device=cfg.device,
        precision=cfg.precision,
    )
    return chm.compute()


def _once(image: Any, model: Any, overlap: int, cfg: BenchConfig, store: Path) -> dict[str, float]:
    """One run: read alone, predict (tallying the kernel's stages), write the result."""
    t_read, _ = _timed(lambda: image.data.compute())
    with collect() as tally:
        t_predict, chm = _timed(lambda: _predict(image, model, overlap, cfg))
    t_write, _ = _timed(lambda: chm.to_dataset().to_zarr(store, mode="w", consolidated=False))
    times = {"read": t_read, "predict": t_predict, "write": t_write}
    return {**times, **{s: tally[s] for s in STAGES}, "windows_run": tally["windows"]}


def _precision(cfg: BenchConfig, model: Any) -> dict[str, str]:
    """Return the precision asked and the dtype the model ran in (``"float32"``...)."""
    import torch

    from xchm.inference.runtime import autocast_dtype

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = autocast_dtype(cfg.precision, device) or torch.float32
    return {"precision": cfg.precision, "dtype": str(dtype).removeprefix("torch.")}


def _row(
    runs: list[dict[str, float]],
    size: int,
    overlap: int,
    gflops: dict[str, float],
    cfg: BenchConfig,
    peak: float | None,
) -> dict[str, Any]:
    """Medians (min-max) of one preset, source and overlap; rates, MFU and shares.

    MFU counts the lattice windows' FLOPs (backbone + decoder; ``mfu_backbone``: the
    backbone's alone, issue 4's definition) per second of predict.
    """
    gflop = gflops["total"]
    windows = lattice_windows(size, size, WINDOW - overlap)
    area = size * size * cfg.pixel_size**2 / 1e6
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    e2e = statistics.median(r["predict"] + r["write"] for r in runs)
    shares = {k: med[k] / e2e for k in ("read", *STAGES, "write")}
    shares["other"] = 1 - sum(shares.values())
    rate = summary([windows / r["predict"] for r in runs])
    tflops = gflop * rate["median"] / 1e3  # useful work: lattice windows
    model_tflops = med["windows_run"] * gflop / med["model"] / 1e3 if med["model"] else None
    return {
        "overlap": overlap,
        "stride": WINDOW - overlap,
        "size": size,
        "area_km2": area,
        "windows": windows,
        "windows_run": int(med["windows_run"]),
        "repeats": len(runs),
        "seconds": {
            k: summary([r[k] for r in runs]) for k in ("read", "predict", "write", *STAGES)
        },
        "windows_per_s": rate,
        "windows_per_s_with_write": windows / e2e,
        "km2_per_h": summary([area * 3600 / r["predict"] for r in runs]),
        "tflops": tflops,
        "model_tflops": model_tflops,
        "mfu": tflops / peak if peak else None,
        "mfu_backbone": gflops["backbone"] * rate["median"] / 1e3 / peak if peak else None,
        "model_mfu": model_tflops / peak if peak and model_tflops else None,
        "shares": shares,
    }


def _scaling(
    model: Any, scene: Any, cfg: BenchConfig, overlap: int, folder: Path, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Windows/s of one prediction on dask's local threads, then on N-process clusters.

    Workers get the model as a checkpoint directory (other processes need a path).
    """
    import contextlib

    import xchm.cluster

    size = scene.shape[1]
    chunk = max(WINDOW, size // 2)  # 4 chunks: work for 2 workers to share
    image = scene.chunk({"band": -1, "y": chunk, "x": chunk})
    windows = lattice_windows(size, size, WINDOW - overlap)
    rows: list[dict[str, Any]] = []
    for n in (0, *(cfg.workers or ())):  # 0: local threads, the model object in this process
        threads = cfg.threads_per_worker
        if n and len(rows) == 1:
            model = str(model.to("cpu").save(folder / f"checkpoint-{model.card.preset}"))
        context = contextlib.nullcontext()
        if n:
            context = xchm.cluster.start(
                None, threads, n_workers=n, dashboard_address=None, quiet=True
            )
        with context:
            _predict(image, model, overlap, cfg)  # warm-up: each worker loads the model
            once = functools.partial(_predict, image, model, overlap, cfg)
            times = [_timed(once)[0] for _ in range(cfg.repeats)]
        rate = summary([windows / t for t in times])
        rows.append(
            {
                "workers": n,
                "threads_per_worker": (threads or 2) if n else None,
                "chunk": chunk,
                "overlap": overlap,
                "windows": windows,
                "windows_run": windows_run(size, size, chunk, WINDOW - overlap),
                "seconds": summary(times),
                "windows_per_s": rate,
            }
        )
        where = f"{n} worker process(es)" if n else "local threads"
        log(f"   {where}: {rate['median']:.1f} windows/s")
    for row in rows:  # relative to the first cluster
        row["speedup"] = (
            row["windows_per_s"]["median"] / rows[min(1, len(rows) - 1)]["windows_per_s"]["median"]
        )
    return rows


def _measure(
    model: Any,
    scene: Any,
    cog: Path,
    cfg: BenchConfig,
    gflop: dict[str, float],
    peak: float | None,
    folder: Path,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """One warm-up, then every source and overlap, interleaved repeat by repeat."""
    size = scene.shape[1]
    preset = model.card.preset
    results: list[dict[str, Any]] = []
    images = {s: open_source(s, scene, cog, cfg.chunk) for s in cfg.sources}
    _once(images[cfg.sources[0]], model, cfg.overlaps[0], cfg, folder / "warm.zarr")
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(cfg.repeats):  # interleaved: background load hits all alike
        for source, image in images.items():
            for overlap in cfg.overlaps:
                store = folder / f"chm-{source}-{overlap}.zarr"
                runs.setdefault((source, overlap), []).append(
                    _once(image, model, overlap, cfg, store)
                )
    for (source, overlap), rs in runs.items():
        row = _row(rs, size, overlap, gflop, cfg, peak)
        results.append(
            {
                "preset": preset,
                "source": source,
                **_precision(cfg, model),
                **row,
                "gflop_per_window": gflop,
            }
        )
        rate = row["windows_per_s"]["median"]
        log(f"   {source}, overlap {overlap}: {rate:.1f} windows/s")
    return results


def run(config: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every preset, source and overlap of ``config``; return a JSON-able dict.

    Parameters
    ----------
    config
        What to measure.
    log
        Called with one line of progress per step.

    Returns
    -------
    dict
        ``device``, ``config`` (defaults resolved), ``results`` (one row per preset,
        source and overlap) and ``scaling`` (one row per preset and worker count); each
        row names ``precision`` (as asked) and ``dtype`` (what the model ran in).

    Raises
    ------
    DeviceError
        A CUDA device was requested but there is none.
    """
    import torch

    from xchm.errors import RandomWeightsWarning
    from xchm.inference.runtime import choose_device
    from xchm.models.api import load_model

    device = choose_device(config.device)
    cuda = device.type == "cuda"
    workers = (() if cuda else (1, 2)) if config.workers is None else config.workers
    scaling_preset = config.scaling_preset or config.presets[-1]
    size = config.size or (8192 if cuda else 256)
    config = replace(config, size=size, workers=workers, scaling_preset=scaling_preset)
    size = int(config.size or 0)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({_cpu_name()})"
    peak = config.peak_tflops or (peak_tflops(name) if cuda else None)
    info = {
        "type": device.type,
        "name": name,
        "peak_tflops": peak,
        "torch_threads": torch.get_num_threads(),
    }
    results: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="xchm-bench-") as tmp:
        folder = Path(tmp)
        scene = make_scene(size, config.pixel_size)
        cog = folder / "scene.tif"
        t, _ = _timed(
            lambda: scene.rio.to_raster(
                cog, driver="COG", compress="DEFLATE", num_threads="all_cpus"
            )
        )
        log(
            f"scene {size}x{size} px at {config.pixel_size:g} m; COG (DEFLATE) written in {t:.1f} s"
        )
        for preset in dict.fromkeys([*config.presets, scaling_preset]):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RandomWeightsWarning)  # speed only
                model = load_model(preset, pixel_size=config.pixel_size, window=WINDOW)
                model = model.to(device).eval()  # every preset at the bench's window
            gflop = gflop_per_window(model, device)
            took = time.perf_counter() - start
            log(f"== {preset}: built in {took:.1f} s, {gflop['total']:.3f} GFLOP/window")
            if preset in config.presets:
                results += _measure(model, scene, cog, config, gflop, peak, folder, log)
            if config.workers and preset == scaling_preset:
                rows = _scaling(model, scene, config, config.overlaps[0], folder, log)
                scaling += [{"preset": preset, **_precision(config, model), **r} for r in rows]
            del model
            if cuda:
                torch.cuda.empty_cache()
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    return {"device": info, "config": cfg, "results": results, "scaling": scaling}
