"""The block kernel: the one place where arrays become tensors.

``predict_block`` receives one chunk plus a halo of one window on each side
(reflected at the image border), evaluates every lattice window touching the
chunk (but for the scene's negligible border windows, ``windows.scene_origins``),
blends the window predictions with the global weights, and returns the chunk's
heights. Invalid pixels never reach the model: they are replaced by the mean of the
window's valid pixels (a window-local rule, so the result does not depend on the
chunking) and come out as NaN; windows without any valid pixel are not run at all
(and are counted as skipped). The model is the worker's inference copy
(``runtime.get_model``), run under autocast at the precision asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xchm.inference.runtime import (
    ModelSpec,
    autocast_dtype,
    choose_device,
    device_lock,
    evaluating,
    get_model,
    tune_cpu_allocator,
    use_cpu_threads,
)
from xchm.inference.telemetry import count_windows, stage
from xchm.inference.windows import blend_weights, window_span
from xchm.models.normalize import normalize_batch

__all__ = ["KernelConfig", "predict_block", "valid_mask"]


@dataclass(frozen=True)
class KernelConfig:
    """Settings every block needs (small and picklable: it travels in the graph)."""

    window: int
    stride: int
    nodata: float | None = None
    batch_size: int | None = None
    device: str | None = None
    uncertainty: bool = False
    precision: str = "auto"
    compile: str | None = None
    """``torch.compile`` mode, or None for eager (see ``runtime.compile_mode``)."""

    @property
    def outputs(self) -> int:
        """Number of output layers (height, and its spread with ``uncertainty``)."""
        return 2 if self.uncertainty else 1


def valid_mask(block: np.ndarray, nodata: float | None, *, axis: int = 0) -> np.ndarray:
    """Pixels where every band is finite and differs from ``nodata`` (bands on ``axis``).

    The one nodata rule of xchm: prediction, chip building, chip streaming, evaluation
    and previews all call it.
    """
    valid = np.ones(block.shape[:axis] + block.shape[axis + 1 :], dtype=bool)
    if np.issubdtype(block.dtype, np.floating):
        valid &= np.isfinite(block).all(axis=axis)
    if nodata is not None and not np.isnan(nodata):
        valid &= (block != nodata).all(axis=axis)
    return valid


def predict_block(
    block: np.ndarray,
    *,
    spec: ModelSpec,
    config: KernelConfig,
    depth: int,
    y_starts: Sequence[int],
    x_starts: Sequence[int],
    size: tuple[int, int],
    block_id: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Predict one chunk from its haloed block; see the module docstring.

    ``block`` is (bands, h + 2 * depth, w + 2 * depth); ``y_starts``/``x_starts``
    are the global first rows/columns of every chunk, indexed by ``block_id``;
    ``size`` is the scene's (height, width), which decides the border windows run.
    Returns (outputs, h, w) float32: height in metres [, spread].
    """
    h, w = block.shape[1] - 2 * depth, block.shape[2] - 2 * depth
    out = np.full((config.outputs, h, w), np.nan, dtype=np.float32)
    if block_id is None or h <= 0 or w <= 0:  # dask's metadata probe
        return out
    y0, x0 = y_starts[block_id[1]], x_starts[block_id[2]]
    win, stride = config.window, config.stride
    span_y = window_span(y0, y0 + h, win, stride, size=size[0])
    span_x = window_span(x0, x0 + w, win, stride, size=size[1])
    valid = valid_mask(block, config.nodata)
    core = valid[depth : depth + h, depth : depth + w]
    if not core.any():
        count_windows(0, skipped=span_y.count * span_x.count)
        return out  # all nodata: the model is not even loaded

    oy, ox = span_y.first - (y0 - depth), span_x.first - (x0 - depth)
    ry, rx = span_y.extent(win, stride), span_x.extent(win, stride)
    region = block[:, oy : oy + ry, ox : ox + rx]
    region_valid = valid[oy : oy + ry, ox : ox + rx]

    sums = _blend_windows(region, region_valid, spec, config, span_y.count, span_x.count)
    y_crop, x_crop = slice(depth - oy, depth - oy + h), slice(depth - ox, depth - ox + w)
    weight = sums[0][y_crop, x_crop]
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 only off the valid core
        mean = sums[1][y_crop, x_crop] / weight
        out[0] = np.where(core, mean, np.nan)
        if config.uncertainty:
            var = np.maximum(sums[2][y_crop, x_crop] / weight - mean**2, 0.0)
            out[1] = np.where(core, np.sqrt(var), np.nan)
    return out


#: A compiled model sees batches padded to a multiple of this: a few shapes, few recompiles.
_SHAPE_STEP = 32


def _static_batch(x: Any, batch: int) -> Any:
    """Pad ``x`` with copies of its first window to a multiple of :data:`_SHAPE_STEP`.

    A compiled model (``torch.compile``, CUDA graphs) specialises on the batch size;
    the last batch of every block has another one. The padded rows are discarded.
    """
    import torch

    target = min(batch, -(-len(x) // _SHAPE_STEP) * _SHAPE_STEP)
    if len(x) >= target:
        return x
    return torch.cat([x, x[:1].expand(target - len(x), *x.shape[1:])])


def _blend_windows(
    region: np.ndarray,
    region_valid: np.ndarray,
    spec: ModelSpec,
    config: KernelConfig,
    ny: int,
    nx: int,
) -> np.ndarray:
    """Run the model on the region's lattice windows; return folded sums.

    Returns (2 or 3, ry, rx): sum of weights, weighted sum of predictions
    [, weighted sum of squared predictions].
    """
    import torch
    import torch.nn.functional as F

    device = choose_device(config.device)
    model = get_model(spec, device, config.compile)
    if device.type == "cpu":
        use_cpu_threads()
        tune_cpu_allocator()
    card = model.card
    stats = card.require_statistics()
    win, stride = config.window, config.stride
    cuda = device.type == "cuda"
    dtype = autocast_dtype(config.precision, device)

    with stage("h2d", device):
        raw = torch.from_numpy(np.where(region_valid, region, 0).astype(np.float32, copy=False))
        mask = torch.from_numpy(region_valid)
        if cuda:  # page-locked copies (torch reuses them) let the copy overlap other work
            raw = raw.pin_memory().to(device, non_blocking=True)
            mask = mask.pin_memory().to(device, non_blocking=True)
    with stage("normalise", device):
        z = normalize_batch(raw[None], stats)[0]

    # Views (bands, ny, nx, win, win): windows are gathered batch by batch, not copied whole.
    z_windows = z.unfold(1, win, stride).unfold(2, win, stride)
    m_windows = mask.unfold(0, win, stride).unfold(1, win, stride).reshape(ny * nx, win, win)
    counts = m_windows.sum(dim=(1, 2))
    run = torch.nonzero(counts > 0).flatten()
    preds = torch.zeros(ny * nx, win, win, device=device)
    # CPU: 16 beats 64 by ~1.16x for ViT-S (fewer fresh pages for activations; RESULTS.md).
    batch = config.batch_size or (512 if cuda else 16)
    with torch.inference_mode(), device_lock(device), evaluating(model):
        with stage("model", device):
            for start in range(0, len(run), batch):
                idx = run[start : start + batch]
                x = z_windows[:, idx // nx, idx % nx].permute(1, 0, 2, 3)
                m = m_windows[idx].unsqueeze(1)
                fill = (x * m).sum(dim=(2, 3), keepdim=True) / counts[idx].view(-1, 1, 1, 1)
                x = torch.where(m, x, fill)
                if config.compile is not None:
                    x = _static_batch(x, batch)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    preds[idx] = model(x, validate=False)[: len(idx), 0].float()
        count_windows(len(run), skipped=ny * nx - len(run))

        with stage("blend", device):
            # Sums in float64: E[p^2] - E[p]^2 (the spread) cancels badly in float32.
            preds = preds.double()
            weights = torch.from_numpy(blend_weights(win)).to(device, torch.float64)
            used = (counts > 0).to(preds.dtype).view(-1, 1, 1) * weights
            layers = [used, preds * used]
            if config.uncertainty:
                layers.append(preds * preds * used)
            cols = torch.stack(layers).reshape(len(layers), ny * nx, win * win).transpose(1, 2)
            ry, rx = (ny - 1) * stride + win, (nx - 1) * stride + win
            folded = F.fold(cols, output_size=(ry, rx), kernel_size=win, stride=stride)
            result = folded[:, 0].cpu().numpy()
    return result
