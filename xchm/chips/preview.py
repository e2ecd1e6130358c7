"""A PNG contact sheet of a chip cube: image chips next to their height chips.

The reference project checked its chips by eye with a grid of (image, height)
pairs; :func:`preview` draws the same grid with Pillow alone (no matplotlib):

* the image chip as a quicklook: red/green/blue as true colour if the cube has
  those bands, else nir/red/green as a false-colour composite (nir -> R, red -> G,
  green -> B), else its first three bands in order (one band: grey); each band is
  stretched to its 2-98 percentile over the picked chips; nodata pixels are black;
* the height chip through a small colour ramp from 0 m to the 99th percentile of
  the picked heights, with missing heights (NaN) in neutral grey.

Layout: pairs fill ``columns`` columns row by row (fewer columns when fewer chips
are picked), with a :data:`MARGIN` px white margin around and between pairs and a
:data:`LEGEND_HEIGHT` px legend line at the bottom ("height 0 - X m" and the ramp).
A window of ``w`` px, ``k`` picked chips, ``c = min(columns, k)`` columns and
``r = ceil(k / c)`` rows give an image of
``c * 2 * w * scale + (c + 1) * MARGIN`` by
``r * w * scale + (r + 1) * MARGIN + LEGEND_HEIGHT`` px.

An unlabeled cube (imagery alone) has no heights: each cell is the image chip
alone (``c * w * scale + (c + 1) * MARGIN`` px wide) and the legend line says
"image chips only (unlabeled cube)".
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xchm._compat import renamed_keywords
from xchm.errors import InputError, MissingDependencyError
from xchm.outputs import prepare_output_file
from xchm.storage import Location, location

if TYPE_CHECKING:
    from xchm.chips.cube import ChipCube

__all__ = ["preview", "MARGIN", "LEGEND_HEIGHT", "NODATA_GREY"]

log = logging.getLogger(__name__)

#: White margin around and between pairs, in output pixels (not scaled).
MARGIN = 4
#: Height of the legend line at the bottom, in output pixels.
LEGEND_HEIGHT = 16
#: Colour of missing heights (NaN): a neutral grey that the ramp never produces.
NODATA_GREY = (128, 128, 128)

# Height colour ramp: five anchors sampled from matplotlib's "viridis" (dark purple ->
# blue -> teal -> green -> yellow), interpolated linearly. Viridis is perceptually
# ordered (lightness rises monotonically, readable in greyscale and by colour-blind
# viewers) and never neutral grey, so NaN stays distinct. Defined here so that a
# preview needs only Pillow, not matplotlib.
_RAMP = np.array(
    [
        (68, 1, 84),
        (59, 82, 139),
        (33, 145, 140),
        (94, 201, 98),
        (253, 231, 37),
    ],
    dtype=np.float64,
)
# Cube bands shown as (R, G, B), in order of preference.
_COMPOSITES = (("red", "green", "blue"), ("nir", "red", "green"))


@renamed_keywords(path="output")
def preview(
    cube: ChipCube,
    output: str | Path | Location,
    *,
    n: int = 16,
    split: str | None = None,
    seed: int = 0,
    columns: int = 4,
    scale: int = 4,
    overwrite: bool = False,
) -> Path | Location:
    """Write a PNG grid of randomly picked image/height chip pairs.

    For an unlabeled cube (no heights) the grid shows the image chips alone.

    Parameters
    ----------
    cube
        An open chip cube (:func:`xchm.chips.open`) or a selection of one.
    output
        The ``.png`` file to write: a local path (its directory must exist; nothing
        else is created) or a URL (``s3://``..., its bucket must exist). Formerly
        ``path=``, which still works for one release with a ``FutureWarning``.
    n
        Chips to show (all chips of the selection if it has fewer).
    split
        Pick only chips of this split label (``"train"``, ``"val"``, ``"test"``).
    seed
        Seed of the random pick: the same seed shows the same chips.
    columns
        Pairs per row.
    scale
        Nearest-neighbour upscaling factor of each chip.
    overwrite
        Replace an existing file at ``output``.

    Returns
    -------
    Path or Location
        ``output``: a ``Path`` on the local disk, else its
        :class:`~xchm.storage.Location`.

    Raises
    ------
    OutputExistsError
        If ``output`` exists and ``overwrite`` is False, or is a folder.
    OutputError
        If the directory of ``output`` does not exist or is not writable.
    InputError
        If ``n``, ``columns`` or ``scale`` is not a positive integer, ``output`` does
        not end in ``.png``, ``split`` is not in the cube, or there are no chips.
    MissingDependencyError
        If Pillow is not installed.

    Notes
    -----
    Reads only the ``n`` picked chips (eagerly); the PNG is built in memory, about
    ``6 * n * (window * scale) ** 2`` bytes. The file is written to a temporary name
    next to ``output`` and renamed, so a reader never sees a half-written PNG; to an
    object store it is sent in one request.

    Examples
    --------
    >>> import xchm.chips
    >>> from xchm.chips.preview import preview
    >>> cube = xchm.chips.open("chips.zarr")  # doctest: +SKIP
    >>> preview(cube, "preview.png", n=8, split="val", scale=2)  # doctest: +SKIP
    PosixPath('preview.png')
    """
    image_module, draw_module, font_module = _pillow()
    for name, value in (("n", n), ("columns", columns), ("scale", scale)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    target = location(output)
    out: Path | Location = Path(target.text).expanduser() if not target.is_url else target
    if Path(target.name).suffix.lower() != ".png":
        raise InputError(f"preview output must end in .png, got {str(out)!r}")
    prepare_output_file(out, overwrite=overwrite)

    chosen = cube.sel(split=split) if split is not None else cube
    if len(chosen) == 0:
        raise InputError(f"chip cube {cube.path} has no chips to preview")
    count = min(n, len(chosen))
    # Sorted positions: the grid shows chips in cube order, so it is easy to find them.
    positions = np.sort(np.random.default_rng(seed).choice(len(chosen), count, replace=False))
    # Panels per cell: the quicklook, then the heights if the cube has any.
    vmax: float | None = None
    if cube.labeled:
        images, heights = chosen.read(positions)
        vmax = _height_max(heights)
        panels = [_quicklook(images, cube.bands, cube.nodata), _height_colours(heights, vmax)]
    else:
        panels = [_quicklook(chosen.read_images(positions), cube.bands, cube.nodata)]

    cell = cube.window * scale
    span = len(panels) * cell
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    width = cols * span + (cols + 1) * MARGIN
    height = rows * cell + (rows + 1) * MARGIN + LEGEND_HEIGHT
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for i in range(count):
        top = MARGIN + (i // cols) * (cell + MARGIN)
        left = MARGIN + (i % cols) * (span + MARGIN)
        for k, panel in enumerate(panels):
            x0 = left + k * cell
            canvas[top : top + cell, x0 : x0 + cell] = _upscale(panel[i], scale)
    sheet = image_module.fromarray(canvas)  # (y, x, 3) uint8: RGB
    _draw_legend(sheet, (image_module, draw_module, font_module), vmax, top=height - LEGEND_HEIGHT)
    _save_atomic(sheet, out)
    if vmax is None:
        log.info("wrote %s: %d image chips (unlabeled cube)", out, count)
    else:
        log.info("wrote %s: %d chip pairs, heights 0 - %.1f m", out, count, vmax)
    return out


def _pillow() -> tuple[Any, Any, Any]:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as err:
        raise MissingDependencyError(
            f"chip previews need Pillow, which could not be imported ({err}); install it "
            "with: pip install pillow"
        ) from err
    return Image, ImageDraw, ImageFont


def _display_bands(bands: tuple[str, ...]) -> list[int]:
    """Return the indices of the cube bands shown as R, G, B (one index: grey)."""
    for names in _COMPOSITES:
        if set(names) <= set(bands):
            return [bands.index(b) for b in names]
    return list(range(3)) if len(bands) >= 3 else [0]


def _quicklook(images: np.ndarray, bands: tuple[str, ...], nodata: float | None) -> np.ndarray:
    """(chips, band, y, x) -> (chips, y, x, 3) uint8, stretched 2-98 %, nodata black."""
    from xchm.inference.kernel import valid_mask

    picks = _display_bands(bands)
    values = images[:, picks].astype(np.float64)
    missing = ~valid_mask(values, nodata, axis=1)  # missing in any shown band: black
    out = np.zeros(values.shape, dtype=np.uint8)
    for b in range(len(picks)):
        band = values[:, b]
        valid = band[~missing]
        if valid.size == 0:
            continue
        lo, hi = np.percentile(valid, [2, 98])
        span = hi - lo if hi > lo else 1.0
        stretched = np.clip((band - lo) / span, 0, 1) * 255
        out[:, b] = np.where(missing, 0, np.round(np.nan_to_num(stretched))).astype(np.uint8)
    if len(picks) == 1:
        out = np.repeat(out, 3, axis=1)
    return out.transpose(0, 2, 3, 1)


def _height_max(heights: np.ndarray) -> float:
    """Top of the colour ramp: the 99th percentile of finite heights (1 m if none > 0)."""
    finite = heights[np.isfinite(heights)]
    top = float(np.percentile(finite, 99)) if finite.size else 0.0
    return top if top > 0 else 1.0


def _height_colours(heights: np.ndarray, vmax: float) -> np.ndarray:
    """(..., y, x) metres -> (..., y, x, 3) uint8 through the ramp, NaN grey."""
    finite = np.isfinite(heights)
    t = np.clip(np.where(finite, heights, 0) / vmax, 0, 1) * (len(_RAMP) - 1)
    low = np.minimum(np.floor(t).astype(np.int64), len(_RAMP) - 2)
    frac = (t - low)[..., None]
    colours = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    colours = np.round(colours).astype(np.uint8)
    colours[~finite] = NODATA_GREY
    return colours


def _upscale(chip: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of a (y, x, 3) chip."""
    return np.repeat(np.repeat(chip, scale, axis=0), scale, axis=1)


def _draw_legend(sheet: Any, pillow: tuple[Any, Any, Any], vmax: float | None, top: int) -> None:
    """Write "height 0 - X m" and, where it fits, a small ramp after it (vmax None: no heights)."""
    image_module, draw_module, font_module = pillow
    draw = draw_module.Draw(sheet)
    font = font_module.load_default()
    text = "image chips only (unlabeled cube)" if vmax is None else f"height 0 - {vmax:.1f} m"
    draw.text((MARGIN, top + 1), text, fill=(0, 0, 0), font=font)
    if vmax is None:
        return
    start = MARGIN + int(draw.textlength(text, font=font)) + 2 * MARGIN
    ramp_width = min(64, sheet.width - start - MARGIN)
    if ramp_width >= 16:
        ramp = _height_colours(np.linspace(0, vmax, ramp_width)[None, :], vmax)
        bar = np.repeat(ramp, LEGEND_HEIGHT - 2 * MARGIN, axis=0)
        sheet.paste(image_module.fromarray(bar), (start, top + MARGIN))


def _save_atomic(sheet: Any, out: Path | Location) -> None:
    """Save as PNG under a temporary name next to ``out``, then rename (a URL: one PUT)."""
    from xchm.outputs import write_atomic

    if isinstance(out, Location) and not out.is_local:
        import io

        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        out.write_bytes(buffer.getvalue())
        return
    write_atomic(location(out).path, lambda tmp: sheet.save(tmp, format="PNG"))
