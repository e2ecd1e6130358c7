"""Evaluation reports: ``metrics.json``, PNG plots and a short text table.

Kept apart from :mod:`xchm.evaluation.cube` so that module holds the data flow
and this one the presentation. Plots use matplotlib's object API on an Agg canvas
(no pyplot, no global backend switch, safe in threads); matplotlib is imported
only when a report is written. Every file is written under a temporary name in the
report directory and renamed, so a reader never sees half a file, and nothing is
written outside that directory.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xchm.errors import MissingDependencyError
from xchm.evaluation.metrics import HistogramAccumulator
from xchm.outputs import prepare_output_dir, write_atomic
from xchm.runs.result import jsonable
from xchm.storage import Location, PathOrURL, location

__all__ = ["format_metrics", "jsonable", "prepare_report_dir", "write_report"]

#: File names of a report.
METRICS_JSON = "metrics.json"
DENSITY_PNG = "density.png"
CLASSES_PNG = "error_by_class.png"
EXAMPLES_PNG = "examples.png"


def prepare_report_dir(path: PathOrURL, *, overwrite: bool) -> Path | Location:
    """Create the report folder ``path``: new, empty, or an earlier report.

    The rule of :mod:`xchm.outputs`: an earlier report is replaced only with
    ``overwrite``; a folder holding anything else is refused and never touched.
    ``path`` may be a URL (``s3://``...): its ``Location`` is returned, else the
    local ``Path``.

    Raises
    ------
    OutputExistsError
        If ``path`` is a file, holds files that are not a report, or holds a report
        and ``overwrite`` is False.
    """
    where = location(path)
    out: Path | Location = where if where.is_url else Path(where.text).expanduser()
    prepare_output_dir(out, "report", overwrite=overwrite, legacy=_is_old_report)
    return out


def _is_old_report(folder: Path | Location) -> bool:
    """Recognise a report written before output markers: only report files."""
    names = (
        set(folder.listdir())
        if isinstance(folder, Location)
        else {p.name for p in folder.iterdir()}
    )
    ours = {METRICS_JSON, DENSITY_PNG, CLASSES_PNG, EXAMPLES_PNG}
    return METRICS_JSON in names and names <= ours


def _replace_into(directory: Path, name: str, write: Any) -> Path:
    """Call ``write(tmp_path)`` then rename the file to ``directory / name``."""
    return write_atomic(directory / name, write)


def _figure(width: float, height: float, *, constrained: bool = True) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise MissingDependencyError(
            f"evaluation reports need matplotlib ({err}); install it with: pip install matplotlib"
        ) from err
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, directory: Path, name: str) -> Path:
    return _replace_into(directory, name, lambda tmp: fig.savefig(tmp, format="png"))


def _title(metrics: dict[str, Any]) -> str:
    return (
        f"MAE {metrics['mae']:.2f} m, RMSE {metrics['rmse']:.2f} m, bias {metrics['bias']:+.2f} m"
        f"\nR2 {metrics['r2']:.3f}, Pearson r2 {metrics['pearson_r2']:.3f}, "
        f"n = {metrics['n_pixels']:,} px"
    )


def plot_density(hist: HistogramAccumulator, metrics: dict[str, Any], directory: Path) -> Path:
    """Predicted-vs-reference 2-D histogram (log counts) with the 1:1 line."""
    from matplotlib.colors import LogNorm

    fig = _figure(6.0, 5.4)
    ax = fig.add_subplot()
    counts = hist.counts
    edges = hist.edges
    if counts.sum() > 0:
        used = np.flatnonzero(counts.sum(axis=0) + counts.sum(axis=1))
        top = float(edges[min(used.max() + 2, hist.bins)])
        masked = np.ma.masked_equal(counts.T, 0)  # rows: predicted, columns: reference
        mesh = ax.pcolormesh(
            edges, edges, masked, norm=LogNorm(vmin=1, vmax=max(int(counts.max()), 2))
        )
        fig.colorbar(mesh, ax=ax, label="pixels (log scale)")
    else:
        top = float(edges[-1])
        ax.text(0.5, 0.5, "no pixels", ha="center", va="center", transform=ax.transAxes)
    ax.plot([0, top], [0, top], color="black", linewidth=1, linestyle="--", label="1:1")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("reference height (m)")
    ax.set_ylabel("predicted height (m)")
    ax.legend(loc="upper left")
    ax.set_title(_title(metrics), fontsize=9)
    return _save(fig, directory, DENSITY_PNG)


def plot_classes(metrics: dict[str, Any], directory: Path) -> Path:
    """Bar chart of MAE and bias per reference height class."""
    rows = metrics["classes"]
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    mae = [r["mae"] if r["n_pixels"] else 0.0 for r in rows]
    bias = [r["bias"] if r["n_pixels"] else 0.0 for r in rows]
    ax.bar(x - 0.2, mae, width=0.4, label="MAE")
    ax.bar(x + 0.2, bias, width=0.4, label="bias (pred - ref)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [f"{r['class']} m\nn={r['n_pixels']:,}" for r in rows], fontsize=8)
    ax.set_xlabel("reference (lidar) height class")
    ax.set_ylabel("error (m)")
    ax.legend()
    ax.set_title("Error by reference height class", fontsize=10)
    return _save(fig, directory, CLASSES_PNG)


def plot_examples(
    examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    bands: tuple[str, ...],
    nodata: float | None,
    directory: Path,
) -> Path:
    """Grid of chips: image quicklook, reference, prediction and error (one row each)."""
    from xchm.chips.preview import _quicklook

    k = max(len(examples), 1)
    # Fixed margins in inches (no constrained layout: 32 panels would make it slow).
    cell, top, bottom = 1.9, 0.3, 0.7
    height = k * cell + top + bottom
    fig = _figure(4 * cell, height, constrained=False)
    axes = fig.subplots(
        k,
        4,
        squeeze=False,
        gridspec_kw={
            "left": 0.01,
            "right": 0.99,
            "top": 1 - top / height,
            "bottom": bottom / height,
            "wspace": 0.04,
            "hspace": 0.04,
        },
    )
    if not examples:
        axes[0, 0].text(0.5, 0.5, "no chips", ha="center", va="center")
    refs = np.stack([e[1] for e in examples]) if examples else np.zeros((0, 1, 1))
    finite = refs[np.isfinite(refs)]
    vmax = max(float(np.percentile(finite, 99)) if finite.size else 1.0, 1.0)
    # One stretch for all chips, so their brightness can be compared.
    rgbs: Any = _quicklook(np.stack([e[0] for e in examples]), bands, nodata) if examples else []
    styles = [
        ({}, "image"),
        ({"cmap": "viridis", "vmin": 0, "vmax": vmax}, "reference (m)"),
        ({"cmap": "viridis", "vmin": 0, "vmax": vmax}, "prediction (m)"),
        ({"cmap": "RdBu_r", "vmin": -vmax / 2, "vmax": vmax / 2}, "error: pred - ref (m)"),
    ]
    shown: list[Any] = [None] * 4
    for row, (_, ref, pred) in enumerate(examples):
        for col, data in enumerate((rgbs[row], ref, pred, pred - ref)):
            style = styles[col][0]
            shown[col] = axes[row, col].imshow(
                np.ma.masked_invalid(data) if data.ndim == 2 else data, **style
            )
    for col, (_, label) in enumerate(styles):
        axes[0, col].set_title(label, fontsize=9)
        if col and shown[col] is not None:  # one colour bar per column, under it
            box = axes[-1, col].get_position()
            cax = fig.add_axes((box.x0, 0.3 / height, box.width, 0.12 / height))
            fig.colorbar(shown[col], cax=cax, orientation="horizontal")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, directory, EXAMPLES_PNG)


def write_report(
    directory: PathOrURL,
    result: dict[str, Any],
    hist: HistogramAccumulator,
    *,
    examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    bands: tuple[str, ...] = (),
    nodata: float | None = None,
    overwrite: bool = False,
) -> list[Path] | list[Location]:
    """Write ``metrics.json``, ``density.png``, ``error_by_class.png`` [and ``examples.png``].

    Parameters
    ----------
    directory
        Report directory, a local path or a URL: created if absent; must be empty or,
        with ``overwrite``, an earlier report (see :func:`prepare_report_dir`). For a
        URL the files are drawn in a temporary folder, then each is sent in one request.
    result
        What :func:`~xchm.evaluate` returns (metrics dict).
    hist
        The (reference, prediction) histogram of the same pixels.
    examples
        ``(image (band, y, x), reference (y, x), prediction (y, x))`` chips to draw.
    bands, nodata
        The image's band names and nodata value (for the quicklook).
    overwrite
        Replace an earlier report in ``directory``.

    Returns
    -------
    list of Path or list of Location
        The files written.

    Examples
    --------
    >>> write_report("report", result, hist)  # doctest: +SKIP
    [PosixPath('report/metrics.json'), PosixPath('report/density.png'), ...]
    """
    out = prepare_report_dir(directory, overwrite=overwrite)
    if isinstance(out, Path):
        return _draw(out, result, hist, examples, bands, nodata)
    with tempfile.TemporaryDirectory(prefix="xchm-report-") as tmp:
        drawn = _draw(Path(tmp), result, hist, examples, bands, nodata)
        sent = [out.join(file.name) for file in drawn]
        for file, target in zip(drawn, sent, strict=True):
            target.write_bytes(file.read_bytes())
    return sent


def _draw(
    out: Path,
    result: dict[str, Any],
    hist: HistogramAccumulator,
    examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] | None,
    bands: tuple[str, ...],
    nodata: float | None,
) -> list[Path]:
    """Write the report's files into the local folder ``out``; return them."""
    text = json.dumps(jsonable(result), indent=2, allow_nan=False) + "\n"
    written = [_replace_into(out, METRICS_JSON, lambda tmp: tmp.write_text(text))]
    written.append(plot_density(hist, result, out))
    written.append(plot_classes(result, out))
    if examples is not None:
        written.append(plot_examples(examples, bands, nodata, out))
    return written


def _row(name: str, m: dict[str, Any], width: int) -> str:
    def num(key: str, fmt: str, size: int) -> str:
        v = m[key]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return f"{'-':>{size}}"
        return format(v, fmt)

    return (
        f"{name:<{width}} {m['n_pixels']:>12,} {num('mae', '8.3f', 8)} {num('rmse', '8.3f', 8)} "
        f"{num('bias', '+8.3f', 8)} {num('r2', '8.3f', 8)} {num('pearson_r2', '11.3f', 11)}"
    )


def format_metrics(result: dict[str, Any]) -> str:
    """Render an evaluation result as a short text table (what ``xchm evaluate`` prints).

    Examples
    --------
    >>> import numpy as np
    >>> from xchm.evaluation.metrics import height_metrics
    >>> print(format_metrics(height_metrics(np.array([1.0, 3]), np.array([1.5, 2]))))
                   pixels      MAE     RMSE     bias       R2  Pearson r2
    all                 2    0.750    0.791   +0.250   -9.000       1.000
    0-2 m               1    0.500    0.500   -0.500        -           -
    2-5 m               1    1.000    1.000   +1.000        -           -
    5-10 m              0        -        -        -        -           -
    10-20 m             0        -        -        -        -           -
    20+ m               0        -        -        -        -           -
    """
    classes = [(f"{row['class']} m", row) for row in result.get("classes", [])]
    scenes = [(f"scene {s}", m) for s, m in (result.get("scenes") or {}).items()]
    width = max([8] + [len(name) for name, _ in classes + scenes])
    lines = []
    if "split" in result:
        lines.append(
            f"model {result['model']} on {result['cube']} split {result['split']}: "
            f"{result['n_chips']:,} chips"
        )
    lines.append(
        f"{'':<{width}} {'pixels':>12} {'MAE':>8} {'RMSE':>8} {'bias':>8} {'R2':>8} "
        f"{'Pearson r2':>11}"
    )
    lines.append(_row("all", result, width))
    lines += [_row(name, row, width) for name, row in classes]
    base = result.get("baseline")
    if base is not None:
        lines.append(_row("baseline", base, width))
    lines += [_row(name, m, width) for name, m in scenes]
    if base is not None:
        lines.append(
            f"baseline: predict {base['height']:.2f} m everywhere (mean height of the "
            f"{result['baseline_source']} split)"
        )
    if "split" in result:
        lines.append("R2 = 1 - SSres/SStot; Pearson r2 = squared correlation (the reference's R2)")
    return "\n".join(lines)
