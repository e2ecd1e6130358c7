"""Synthetic scenes for demos and tests: imagery with a matching canopy height truth.

:func:`synthetic_landscape` draws a seeded, **synthetic** landscape (no real place)
at 2 m: forest stands of varying density and height made of individual tree crowns,
shrubland, open ground, lakes, and a band of missing data along one edge. It
renders a canopy height model (CHM, metres) and NIR/red/green surface reflectance
from it, with crown shading, cast shadows and sensor noise, so that height is
visible in the image the way it is in real VHR imagery: through crown size,
texture, shadow and the NIR/red contrast of vegetation. It is for showing and
testing the pipeline; accuracy on it says nothing about real scenes.

Everything is vectorised NumPy: a 2048 x 2048 scene takes a few seconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["synthetic_landscape"]

# Surface reflectance (nir, red, green) of the cover types; vegetation is bright in NIR.
_CANOPY = np.array([0.42, 0.035, 0.07])
_SHRUB = np.array([0.32, 0.06, 0.08])
_GROUND = np.array([0.24, 0.15, 0.12])
_WATER = np.array([0.02, 0.03, 0.05])


def _smooth_field(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field with features ~``scale`` pixels wide, scaled to [0, 1]."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    kernel = np.exp(-2 * (np.pi * scale) ** 2 * (fy**2 + fx**2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=shape)
    lo, hi = np.percentile(field, [1, 99])
    if not hi - lo > 1e-9 * max(abs(lo), abs(hi), 1e-30):  # a scene narrower than the features
        return np.full(shape, 0.5)
    return np.clip((field - lo) / (hi - lo), 0, 1)


def _crowns(
    shape: tuple[int, int],
    density: np.ndarray,
    stand_height: np.ndarray,
    cell: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Render tree crowns: at most one tree per ``cell`` x ``cell`` block of pixels.

    Each tree is a half-ellipsoid crown whose radius grows with its height; the CHM
    is the maximum over the crowns of the neighbouring cells (vectorised over cell
    offsets instead of looping over trees).
    """
    h, w = shape
    ch, cw = -(-h // cell), -(-w // cell)
    centre = (
        (np.arange(ch) * cell + cell // 2)[:, None],
        (np.arange(cw) * cell + cell // 2)[None, :],
    )
    cy = np.clip(centre[0], 0, h - 1) + np.zeros((1, cw), int)
    cx = np.clip(centre[1], 0, w - 1) + np.zeros((ch, 1), int)
    present = rng.random((ch, cw)) < density[cy, cx]
    tree_h = stand_height[cy, cx] * rng.lognormal(0.0, 0.18, (ch, cw))
    tree_h = np.where(present, np.clip(tree_h, 0.5, 45.0), 0.0)
    radius = 0.9 + 0.11 * tree_h  # pixels (2 m): 2-6 m crown radius for 10-45 m trees
    ty = cy + rng.uniform(-cell / 2, cell / 2, (ch, cw))
    tx = cx + rng.uniform(-cell / 2, cell / 2, (ch, cw))

    yy, xx = np.mgrid[0:h, 0:w]
    cell_y, cell_x = yy // cell, xx // cell
    chm = np.zeros(shape, dtype=np.float64)
    reach = int(np.ceil(radius.max() / cell)) + 1
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            iy, ix = np.clip(cell_y + dy, 0, ch - 1), np.clip(cell_x + dx, 0, cw - 1)
            r = radius[iy, ix]
            d2 = ((yy - ty[iy, ix]) ** 2 + (xx - tx[iy, ix]) ** 2) / r**2
            crown = tree_h[iy, ix] * np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
            np.maximum(chm, crown, out=chm)
    return chm


def _shadows(chm: np.ndarray, pixel_size: float, sun_elevation: float) -> np.ndarray:
    """Pixels in the cast shadow of taller canopy, sun in the south-east (image right, down)."""
    drop = pixel_size * np.tan(np.radians(sun_elevation)) * np.sqrt(2)  # m per diagonal step
    steps = int(np.ceil(chm.max() / drop)) if chm.max() > 0 else 0
    shadow = np.zeros(chm.shape, dtype=bool)
    for k in range(1, steps + 1):
        caster = np.zeros_like(chm)
        caster[:-k, :-k] = chm[k:, k:]  # the pixel k steps toward the sun
        shadow |= caster - k * drop > chm + 0.5
    return shadow


def synthetic_landscape(
    size: int | tuple[int, int] = 1024,
    *,
    seed: int = 0,
    pixel_size: float = 2.0,
    crs: str = "EPSG:3338",
    nodata_edge: bool = True,
) -> Any:
    """Draw a synthetic landscape: NIR/red/green reflectance and its canopy height truth.

    Parameters
    ----------
    size
        Scene side in pixels, or ``(height, width)``.
    seed
        Everything is drawn from this seed: the same seed gives the same scene.
    pixel_size
        Pixel size in metres (crowns are drawn for 2 m; other sizes scale the map).
    crs
        CRS written on the result (default Alaska Albers, EPSG:3338).
    nodata_edge
        Cut a wedge of missing data (NaN) into the west edge, as at a scene border.

    Returns
    -------
    xarray.Dataset
        ``image`` (band: nir, red, green; y; x) float32 surface reflectance and ``chm``
        (y, x) float32 canopy height in metres, NaN where missing; a ``cover`` (y, x)
        uint8 map (0 ground, 1 shrub, 2 forest, 3 water); georeferenced (CRS,
        north-up, ``pixel_size``) and flagged ``attrs["synthetic"] = True``.

    Examples
    --------
    >>> import xchm.datasets
    >>> scene = xchm.datasets.synthetic_landscape(256, seed=1)
    >>> scene["image"].shape, scene["image"].band.values.tolist(), scene["chm"].attrs["units"]
    ((3, 256, 256), ['nir', 'red', 'green'], 'm')
    >>> bool(scene["chm"].max() > 15) and bool((scene["chm"] == 0).any())
    True
    """
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    shape = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(shape) < 64:
        from xchm.errors import InputError

        raise InputError(f"size must be at least 64 pixels per side, got {size!r}")
    rng = np.random.default_rng(seed)
    forest_field = _smooth_field(shape, 60, rng)
    shrub_field = _smooth_field(shape, 25, rng)
    water_field = _smooth_field(shape, 80, rng)
    height_field = _smooth_field(shape, 90, rng)

    water = water_field > 0.88
    forest = (forest_field > 0.55) & ~water
    shrub = ~forest & ~water & (shrub_field > 0.55)
    # Stands: taller where denser (old growth), 6-35 m; shrubs 0.5-2.5 m.
    density = np.where(forest, 0.35 + 0.6 * forest_field, np.where(shrub, 0.8, 0.03))
    density = np.where(water, 0.0, density)
    stand = np.where(forest, 6 + 29 * (0.5 * height_field + 0.5 * forest_field), 1.5)
    stand = np.where(shrub, 0.5 + 2.0 * shrub_field, stand)
    chm = np.maximum(
        _crowns(shape, np.where(forest | ~shrub, density, 0), stand, 3, rng),
        _crowns(shape, np.where(shrub, density, 0), np.where(shrub, stand, 0), 2, rng),
    )
    chm[water] = 0.0

    cover = np.zeros(shape, dtype=np.uint8)
    cover[shrub] = 1
    cover[chm > 3] = 2
    cover[water] = 3
    base = np.where(
        (chm > 3)[..., None],
        _CANOPY,
        np.where((chm > 0.3)[..., None], _SHRUB, _GROUND),
    )
    base = np.where(water[..., None], _WATER, base)
    # Crown shading: sunlit (south-east) flanks brighter, far flanks darker.
    gy, gx = np.gradient(chm, pixel_size)
    shade = np.clip(1.0 + 0.35 * (gy + gx) / np.sqrt(2) / (1 + np.hypot(gy, gx)), 0.55, 1.3)
    shade = np.where(chm > 0.3, shade, 1.0)
    shade = np.where(_shadows(chm, pixel_size, 40.0), 0.35 * shade, shade)
    grass = 0.85 + 0.3 * shrub_field  # ground brightness varies (soil, grass, moss)
    refl = base * shade[..., None] * np.where(chm > 0.3, 1.0, grass)[..., None]
    refl = refl * rng.lognormal(0.0, 0.04, shape)[..., None] + rng.normal(0, 0.006, (*shape, 3))
    refl = np.clip(refl, 0.001, 1.0).astype(np.float32).transpose(2, 0, 1)
    truth = chm.astype(np.float32)
    if nodata_edge:
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        missing = xx < 0.04 * shape[1] * (1 + np.sin(yy / max(shape[0], 1) * np.pi))
        refl[:, missing] = np.nan
        truth[missing] = np.nan

    y = (shape[0] - np.arange(shape[0]) - 0.5) * pixel_size + 1_000_000.0
    x = (np.arange(shape[1]) + 0.5) * pixel_size + 200_000.0
    coords = {"y": y, "x": x}
    ds = xr.Dataset(
        {
            "image": xr.DataArray(
                refl,
                dims=("band", "y", "x"),
                coords={"band": ["nir", "red", "green"], **coords},
                attrs={"units": "1", "long_name": "surface reflectance"},
            ),
            "chm": xr.DataArray(
                truth,
                dims=("y", "x"),
                coords=coords,
                attrs={"units": "m", "long_name": "canopy height"},
            ),
            "cover": xr.DataArray(
                cover,
                dims=("y", "x"),
                coords=coords,
                attrs={"flag_values": [0, 1, 2, 3], "flag_meanings": "ground shrub forest water"},
            ),
        },
        attrs={"synthetic": True, "seed": seed, "source": "xchm.datasets.synthetic_landscape"},
    )
    ds = ds.rio.write_crs(crs)
    for name in ("image", "chm"):
        ds[name] = ds[name].rio.write_nodata(np.nan, encoded=False)
    return ds
