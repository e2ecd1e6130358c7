"""Multi-crop views of normalised multispectral chips for DINO (torch, on the device).

Each chip gives two **global** crops at the window size (a random resized crop
covering ``global_scale_min``..1 of the chip) and ``local_crops`` **local** crops of
``local_size`` px (``local_scale_min``..``local_scale_max`` of the chip), each with
a random flip / 90-degree rotation and a per-band radiometric jitter on the
normalised values: gain ``1 + N(0, gain_std)``, offset ``N(0, offset_std)`` and
per-pixel noise ``N(0, noise_std)``. Band ratios change only mildly, unlike
ImageNet colour jitter (hue, saturation, greyscale), which has no meaning for NIR.

Crop, flip and rotation are one affine map per view (``affine_grid`` +
``grid_sample``, bilinear), so a batch is transformed in a single call. Local crops
are resized to the window afterwards: the backbone's RoPE grid is fixed to the
window, so a 32 px crop reaches the ViT as 64 px of 32 px detail (it costs as much
compute as a global crop). Random numbers come from a CPU ``torch.Generator``, so
views depend only on its seed, never on the device.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from xchm.pretraining.config import PretrainConfig

__all__ = ["multicrop", "random_views"]

# Flip (x -> -x) and rotations by k * 90 degrees as 2 x 2 matrices: the 8 dihedral maps.
_ROT = ((1, 0, 0, 1), (0, -1, 1, 0), (-1, 0, 0, -1), (0, 1, -1, 0))


def random_views(
    x: torch.Tensor,
    size: int,
    scale: tuple[float, float],
    *,
    generator: torch.Generator,
    dihedral: bool = True,
    gain_std: float = 0.0,
    offset_std: float = 0.0,
    noise_std: float = 0.0,
) -> torch.Tensor:
    """One random resized, flipped, rotated and jittered crop of every chip in ``x``.

    Parameters
    ----------
    x
        Normalised chips ``(B, band, W, W)`` (float, any device).
    size
        Output side in pixels.
    scale
        Range of the area fraction of the chip a crop covers (aspect ratio 3/4..4/3).
    generator
        CPU generator of every random choice.
    dihedral
        Apply one of the 8 flips / 90-degree rotations per crop.
    gain_std, offset_std, noise_std
        Per-band gain and offset and per-pixel noise (normalised units).

    Returns
    -------
    torch.Tensor
        ``(B, band, size, size)`` float32 on the device of ``x``.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> random_views(torch.zeros(2, 3, 64, 64), 32, (0.1, 0.4), generator=g).shape
    torch.Size([2, 3, 32, 32])
    """
    import torch
    import torch.nn.functional as F

    b, c = x.shape[:2]
    lo, hi = scale
    area = lo + (hi - lo) * torch.rand(b, generator=generator, dtype=torch.float64)
    log_ratio = (torch.rand(b, generator=generator, dtype=torch.float64) * 2 - 1) * math.log(4 / 3)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the chip side
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator, dtype=torch.float64) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=generator, dtype=torch.float64) * 2 - 1) * (1 - h)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 1, 1] = w, h
    if dihedral:
        codes = torch.randint(0, 8, (b,), generator=generator)
        rot = torch.tensor(_ROT, dtype=torch.float64)[codes % 4].view(b, 2, 2)
        flip = torch.where(codes >= 4, -1.0, 1.0).to(torch.float64)
        rot = rot.clone()
        rot[:, :, 0] *= flip[:, None]  # flip the output's x before rotating
        theta[:, :, :2] = theta[:, :, :2] @ rot
    theta[:, 0, 2], theta[:, 1, 2] = cx, cy
    theta = theta.to(device=x.device, dtype=torch.float32)
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    out = F.grid_sample(
        x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    if gain_std or offset_std:
        gain = 1 + gain_std * torch.randn(b, c, 1, 1, generator=generator)
        offset = offset_std * torch.randn(b, c, 1, 1, generator=generator)
        out = out * gain.to(out.device) + offset.to(out.device)
    if noise_std:
        noise = torch.randn(out.shape, generator=generator)
        out = out + noise_std * noise.to(out.device)
    return out


def multicrop(
    x: torch.Tensor, config: PretrainConfig, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Global and local views of normalised chips ``(B, band, W, W)`` for one DINO step.

    Returns
    -------
    globals, locals
        ``(2 * B, band, W, W)`` (first crop of every chip, then the second) and
        ``(local_crops * B, band, W, W)`` resized to the window (None without
        local crops).

    Examples
    --------
    >>> import torch
    >>> from xchm.pretraining import PretrainConfig
    >>> g = torch.Generator().manual_seed(0)
    >>> glob, loc = multicrop(torch.zeros(4, 3, 64, 64), PretrainConfig(local_crops=2), generator=g)
    >>> glob.shape, loc.shape
    (torch.Size([8, 3, 64, 64]), torch.Size([8, 3, 64, 64]))
    """
    import torch
    import torch.nn.functional as F

    window = int(x.shape[-1])
    jitter: dict[str, Any] = {
        "dihedral": config.dihedral,
        "gain_std": config.gain_std,
        "offset_std": config.offset_std,
        "noise_std": config.noise_std,
    }
    views = [
        random_views(x, window, (config.global_scale_min, 1.0), generator=generator, **jitter)
        for _ in range(2)
    ]
    glob = torch.cat(views)
    if not config.local_crops:
        return glob, None
    scale = (config.local_scale_min, config.local_scale_max)
    small = [
        random_views(x, config.local_size, scale, generator=generator, **jitter)
        for _ in range(config.local_crops)
    ]
    loc = torch.cat(small)
    if config.local_size != window:
        loc = F.interpolate(loc, size=(window, window), mode="bilinear", align_corners=False)
    return glob, loc
