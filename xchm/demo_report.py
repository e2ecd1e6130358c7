"""Pictures of a demo run: image quicklook, predicted and true CHM, error map (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_maps"]

_MAX_SIDE = 1024  # pixels drawn per side (larger maps are subsampled)


def _step(shape: tuple[int, ...]) -> int:
    return max(1, -(-max(shape) // _MAX_SIDE))


def _map(
    values: np.ndarray, title: str, path: Path, *, cmap: str, vmin: float, vmax: float, label: str
) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 5.6), constrained_layout=True)
    ax = fig.subplots()
    shown = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()
    fig.colorbar(shown, ax=ax, shrink=0.8, label=label)
    fig.savefig(path, dpi=110)
    return path


def write_maps(report: Path, image_path: Path, chm: Any, truth: Any) -> list[Path]:
    """Write ``quicklook.png``, ``chm_predicted.png``, ``chm_truth.png`` and ``error.png``.

    Parameters
    ----------
    report
        Folder to write into (created if needed; same-named files are replaced).
    image_path
        The scene (GeoTIFF, three bands drawn as red, green, blue in file order).
    chm, truth
        Predicted and reference heights (y, x) on the same grid, metres.

    Returns
    -------
    list of Path
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import rioxarray
    from matplotlib.figure import Figure

    report.mkdir(parents=True, exist_ok=True)
    step = _step(chm.shape)
    scene: Any = rioxarray.open_rasterio(image_path)
    image = np.asarray(scene.values)[:3, ::step, ::step].astype(np.float64)
    lo, hi = np.nanpercentile(image, 2, axis=(1, 2)), np.nanpercentile(image, 98, axis=(1, 2))
    rgb = np.clip((image - lo[:, None, None]) / (hi - lo)[:, None, None], 0, 1)
    rgb = np.nan_to_num(rgb.transpose(1, 2, 0))
    fig = Figure(figsize=(6.4, 5.6), constrained_layout=True)
    ax = fig.subplots()
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(f"{image_path.name} (bands 1-3 as RGB, 2-98 % stretch)")
    ax.set_axis_off()
    written = [report / "quicklook.png"]
    fig.savefig(written[0], dpi=110)

    pred = np.asarray(chm.values, dtype=np.float64)[::step, ::step]
    ref = np.asarray(truth.values, dtype=np.float64).squeeze()[::step, ::step]
    top = (
        float(
            np.nanpercentile(np.concatenate([pred[np.isfinite(pred)], ref[np.isfinite(ref)]]), 99)
        )
        if np.isfinite(ref).any()
        else 30.0
    )
    written.append(
        _map(
            pred,
            "predicted canopy height",
            report / "chm_predicted.png",
            cmap="viridis",
            vmin=0,
            vmax=top,
            label="m",
        )
    )
    written.append(
        _map(
            ref,
            "reference canopy height",
            report / "chm_truth.png",
            cmap="viridis",
            vmin=0,
            vmax=top,
            label="m",
        )
    )
    err = pred - ref
    span = float(np.nanpercentile(np.abs(err), 98)) if np.isfinite(err).any() else 1.0
    written.append(
        _map(
            err,
            "prediction - reference",
            report / "error.png",
            cmap="RdBu_r",
            vmin=-span,
            vmax=span,
            label="m",
        )
    )
    return written
