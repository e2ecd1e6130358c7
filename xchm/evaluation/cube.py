"""Evaluate canopy height models: on chip cube splits, and raster against raster.

:func:`evaluate` streams one split of a chip cube through a model in storage
order, one whole 256-chip chunk at a time (the next chunk is read in a background
thread while the model runs), so memory is a couple of chunks plus one batch
whatever the cube size. Image pixels that are nodata/NaN in any band are fed to the
model as 0 after normalisation (the band mean, as in training) and left out of the
metrics. Metrics are sums (:class:`~xchm.evaluation.metrics.MetricAccumulator`), so
per-scene tables and the baseline come from the same pass.

:func:`evaluate_raster` compares two aligned rasters (say, a predicted mosaic and
a lidar CHM) block by block with Dask, never loading whole mosaics.

The baseline, predicting one constant height everywhere (the train split's mean),
is reported next to every chip cube evaluation: a model whose MAE is not clearly
below the baseline's has not learned anything from the imagery.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import numpy as np

from xchm._compat import renamed_keywords
from xchm.chips.cube import BASELINE_MAX_CHIPS, ChipCube, open_cube
from xchm.errors import BandError, InputError, XCHMWarning
from xchm.evaluation.metrics import (
    DEFAULT_CLASSES,
    Classes,
    HistogramAccumulator,
    MetricAccumulator,
)
from xchm.evaluation.raster import evaluate_raster
from xchm.evaluation.report import prepare_report_dir, write_report
from xchm.evaluation.result import EvaluationResult

__all__ = ["EvaluationResult", "evaluate", "evaluate_raster"]

log = logging.getLogger(__name__)

#: Example chips drawn in a report.
N_EXAMPLES = 8


@renamed_keywords(report="output")
def evaluate(
    model: Any,
    cube: ChipCube | str | os.PathLike[str],
    *,
    split: str | None = "val",
    batch_size: int = 64,
    device: str | None = None,
    per_scene: bool = False,
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    classes: Classes = DEFAULT_CLASSES,
    progress: bool = True,
    precision: str = "auto",
) -> EvaluationResult:
    """Accuracy of a canopy height model on a split of a chip cube.

    Parameters
    ----------
    model
        A loaded model (:func:`xchm.load_model`), a checkpoint directory or a preset
        name (presets have an untrained decoder: only useful for testing).
    cube
        A chip cube (:func:`xchm.chips.open`, or a selection of one) or its path.
    split
        Split label to evaluate (``"val"``, ``"test"``, ``"train"``); None for every
        chip of ``cube``.
    batch_size
        Chips per model call.
    device
        Torch device; default the model object's device, else CUDA if available.
    per_scene
        Add ``scenes``: the metrics of each scene's chips.
    output
        Report folder to write: ``metrics.json``, ``density.png``,
        ``error_by_class.png`` and ``examples.png``; it must be absent or empty unless
        ``overwrite``. Default: no report. Formerly ``report=``, which still works for
        one release with a ``FutureWarning``.
    overwrite
        Replace an earlier report in ``output`` (a folder holding anything else is
        refused, with or without it).
    classes
        Reference height classes ``(lo, hi)`` in metres (``lo <= ref < hi``).
    progress
        Show a progress bar (tqdm); on by default, as in every long-running xchm
        function.
    precision
        Arithmetic of the model, as for :func:`xchm.predict`: ``"auto"`` (default:
        bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere),
        ``"fp32"``, ``"bf16"`` or ``"fp16"``. Scores at bf16 differ from fp32 by the
        bf16 rounding of the heights (docs/predict.md, "Precision").

    Returns
    -------
    EvaluationResult
        A dict with the metrics also as attributes (``result.mae``) and
        ``to_dict()`` for JSON. The keys of
        :func:`~xchm.evaluation.metrics.height_metrics` (``mae``, ``rmse``, ``bias``,
        ``r2``, ``pearson_r2``, ``n_pixels``, ``classes``), plus ``model`` (preset name
        or checkpoint path), ``cube`` (path), ``split``, ``n_chips``, ``baseline`` (the
        same metrics for predicting the constant ``height``, the mean reference height
        of ``baseline_source``'s chips: the train split if the cube has one, else the
        evaluated split), ``baseline_source``, ``precision`` (as asked) and ``dtype``
        (what the model ran in: ``"float32"``, ``"bfloat16"`` or ``"float16"``),
        ``scenes`` with ``per_scene``, and ``report`` (the folder) with ``output``.

    Raises
    ------
    BandError
        If the cube's bands are not the model card's bands (in order).
    InputError
        If the split is not in the cube, windows differ, the card has no statistics,
        or ``precision`` is not one of ``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"``.
    OutputExistsError
        If ``output`` holds an earlier report and ``overwrite`` is False, or holds
        anything that is not a report.

    Warns
    -----
    XCHMWarning
        If the cube's pixel size differs from the card's by more than 25 %.

    Notes
    -----
    Reads every selected chip once (whole 256-chip chunks, the next read ahead in
    a thread), plus up to :data:`BASELINE_MAX_CHIPS` train height chips; memory is
    about two chunks and one batch. Runs the model under ``torch.inference_mode``,
    in the autocast dtype ``precision`` picks on the device (bf16 predictions carry
    bf16 rounding, e.g. 1/8 m steps between 16 and 32 m), and restores the model's
    train/eval mode afterwards.

    Examples
    --------
    >>> result = xchm.evaluate("runs/a/best", "chips.zarr")  # doctest: +SKIP
    >>> result.mae, result.baseline["mae"]  # doctest: +SKIP
    (1.31, 3.87)
    """
    import torch

    from xchm.inference.precision import emulation_warning
    from xchm.inference.runtime import autocast_dtype, check_precision, evaluating
    from xchm.models.normalize import normalize_batch

    check_precision(precision)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    report_dir = None if output is None else prepare_report_dir(output, overwrite=overwrite)
    full = cube if isinstance(cube, ChipCube) else open_cube(cube)
    chosen = full.sel(split=split) if split is not None else full
    overall = MetricAccumulator(classes=classes)  # checks classes before any work
    baseline = MetricAccumulator(classes=classes)
    net, model_name, dev = _resolve_model(model, device)
    emulation_warning(precision, dev)  # bf16/fp16 asked on a CPU that emulates them
    card = net.card
    _check_compatible(card, chosen)
    base_height, base_source = _baseline_height(full, split)

    hist = HistogramAccumulator()
    scenes: dict[str, MetricAccumulator] = {}
    scene_ids = chosen.coord("scene") if per_scene else None
    n = len(chosen)
    wanted = set(np.linspace(0, n - 1, min(N_EXAMPLES, n)).round().astype(int).tolist())
    examples: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    dtype = autocast_dtype(precision, dev)
    autocast = torch.autocast(dev.type, dtype=dtype) if dtype is not None else nullcontext()
    from tqdm.auto import tqdm

    bar = tqdm(total=n, unit="chip", desc=f"evaluate {split or 'all'}", disable=not progress)
    with bar, evaluating(net), torch.inference_mode():
        for pos, image, height in _batches(chosen, batch_size):
            missing = _missing(image, chosen.nodata)
            ref = np.where(missing, np.float32(np.nan), height)
            raw = torch.from_numpy(image.astype(np.float32, copy=False)).to(dev)
            x = normalize_batch(raw, card.statistics)
            if missing.any():
                x = x.masked_fill(torch.from_numpy(missing).to(dev)[:, None], 0.0)
            with autocast:
                out = net(x, validate=False)
            pred = out[:, 0].float().cpu().numpy()
            overall.update(pred, ref)
            baseline.update(np.full_like(ref, base_height), ref)
            hist.update(pred, ref)
            if scene_ids is not None:
                ids = scene_ids[pos]
                for scene in np.unique(ids):
                    keep = ids == scene
                    acc = scenes.setdefault(str(scene), MetricAccumulator(classes=classes))
                    acc.update(pred[keep], ref[keep])
            if report_dir is not None:
                for k in np.flatnonzero(np.isin(pos, list(wanted))):
                    examples[int(pos[k])] = (image[k].copy(), ref[k].copy(), pred[k].copy())
            bar.update(len(pos))

    result = EvaluationResult(
        {
            "model": model_name,
            "cube": str(full.path),
            "split": split if split is not None else "all",
            "n_chips": n,
            **overall.result(),
            "baseline_source": base_source,
            "baseline": {"height": base_height, **baseline.result()},
            "precision": precision,
            "dtype": str(dtype or torch.float32).removeprefix("torch."),
        }
    )
    if per_scene:
        result["scenes"] = {s: scenes[s].result() for s in sorted(scenes)}
    if report_dir is not None:
        result["report"] = str(report_dir)
        write_report(
            report_dir,
            result,
            hist,
            examples=[examples[k] for k in sorted(examples)],
            bands=chosen.bands,
            nodata=chosen.nodata,
            overwrite=overwrite,
        )
    log.info("evaluated %s on %s (%s): MAE %.3f m", model_name, full.path, split, result["mae"])
    return result


# -- model and compatibility ---------------------------------------------------------------
def _resolve_model(model: Any, device: str | None) -> tuple[Any, str, Any]:
    """Return (model on its device, name for the report, device).

    The model comes from the loader the prediction workers use (one cache, one
    checkpoint check); a caller's model object is evaluated in place on its own
    device, or as a copy on another ``device``: it is never moved.
    """
    import torch

    from xchm.inference.runtime import choose_device, get_model, spec_for

    spec, card = spec_for(model)  # InputTypeError for anything that is not a model
    if spec.kind == "local":
        param = next(model.parameters(), None)
        current = param.device if param is not None else torch.device("cpu")
        dev = current if device is None else choose_device(device)
        name = str(card.preset)
    else:
        dev, name = choose_device(device), spec.source
    return get_model(spec, dev), name, dev


def _check_compatible(card: Any, cube: ChipCube) -> None:
    if tuple(cube.bands) != tuple(card.bands):
        raise BandError(
            f"the model expects bands {tuple(card.bands)}; the chip cube {cube.path} has "
            f"{tuple(cube.bands)}; evaluate a model trained on the cube's bands or build the "
            "cube with the model's bands (xchm.chips.build(..., bands=...))"
        )
    if cube.window != card.window:
        raise InputError(
            f"the model takes {card.window}x{card.window} px windows; the cube's chips are "
            f"{cube.window}x{cube.window} px"
        )
    if card.statistics is None:
        raise InputError(
            "the model card has no normalisation statistics; load the model with "
            "statistics=cube.statistics or use a trained checkpoint"
        )
    if cube.pixel_size is not None and card.pixel_size:
        ratio = cube.pixel_size / card.pixel_size
        if abs(ratio - 1) > 0.25:
            warnings.warn(
                f"the chip cube's pixels are {cube.pixel_size:g} m but the model was made for "
                f"{card.pixel_size:g} m; heights from imagery at another resolution are "
                "unreliable: resample the imagery (xchm.chips.build(..., resolution=...))",
                XCHMWarning,
                stacklevel=4,  # evaluate's caller (past renamed_keywords' wrapper)
            )


# -- reading -----------------------------------------------------------------------------------
def _chunk_plan(cube: ChipCube) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(first stored chip, selection positions, offsets in the chunk) per stored chunk."""
    index = cube.index
    if index.size == 0:
        return []
    size = int(cube.image.chunks[0])
    ids = index // size
    cuts = np.flatnonzero(np.diff(ids)) + 1
    plan = []
    for part in np.split(np.arange(index.size), cuts):
        start = int(ids[part[0]]) * size
        plan.append((start, part, index[part] - start))
    return plan


def _read_chunk(
    cube: ChipCube, start: int, part: np.ndarray, offsets: np.ndarray, images: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one whole stored chunk; keep the selected chips (images: empty if not wanted)."""
    stop = min(start + int(cube.image.chunks[0]), int(cube.image.shape[0]))
    whole = offsets.size == stop - start
    height = np.asarray(cube.height[start:stop])
    image = np.asarray(cube.image[start:stop]) if images else np.empty((stop - start, 0))
    return (part, image, height) if whole else (part, image[offsets], height[offsets])


def _chunks(
    cube: ChipCube, plan: list[tuple[int, np.ndarray, np.ndarray]], images: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Read the planned chunks in order, the next one in a background thread."""
    if not plan:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_read_chunk, cube, *plan[0], images)
        for k in range(len(plan)):
            done = pending.result()
            if k + 1 < len(plan):
                pending = pool.submit(_read_chunk, cube, *plan[k + 1], images)
            yield done


def _batches(
    cube: ChipCube, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (selection positions, image, height) batches of ``batch_size`` chips in order."""
    held: list[np.ndarray] = []
    for read in _chunks(cube, _chunk_plan(cube)):
        chunk = [np.concatenate(pair) for pair in zip(held, read, strict=True)] if held else [*read]
        full = len(chunk[0]) // batch_size * batch_size
        for i in range(0, full, batch_size):
            pos, image, height = (a[i : i + batch_size] for a in chunk)
            yield pos, image, height
        held = [a[full:] for a in chunk] if full < len(chunk[0]) else []
    if held:
        yield held[0], held[1], held[2]


def _missing(image: np.ndarray, nodata: float | None) -> np.ndarray:
    """(k, y, x) True where any band is not finite or is nodata."""
    from xchm.inference.kernel import valid_mask

    return ~valid_mask(image, nodata, axis=1)


def _baseline_height(full: ChipCube, split: str | None) -> tuple[float, str]:
    """Mean finite reference height of the train split (else the evaluated split)."""
    whole = ChipCube(full.path, full._group, full.attrs, None)  # the cube, not a selection
    if "train" in whole.splits:
        source, chosen = "train", whole.sel(split="train")
    else:
        source, chosen = split or "all", full.sel(split=split) if split is not None else full
    count, total_height = 0, 0.0
    for finite in chosen.finite_heights(BASELINE_MAX_CHIPS):  # evenly spread whole chunks
        count += finite.size
        total_height += float(finite.sum(dtype=np.float64))
    return (total_height / count if count else math.nan), source
