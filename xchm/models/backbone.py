"""The DINOv3 backbone: timm's ViT, sized to the window, with band-adapted input.

timm provides the exact DINOv3 architecture (``Eva`` with DINOv3 RoPE, register
tokens, layer scale). This module only sizes it to the model's window (a fixed
patch grid, so the RoPE table is cached), rebuilds the patch embedding for the
model's bands and handles the RoPE periods, which timm keeps as a non-persistent
buffer but Meta's releases store (bf16-rounded) with the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import timm
import torch
from torch import nn

from xchm.errors import InputError, WeightsError
from xchm.models.presets import Preset

#: timm's ``Eva``; its submodules (patch_embed, rope, blocks) are dynamic to type checkers.
Backbone: TypeAlias = Any

__all__ = [
    "Backbone",
    "build_backbone",
    "adapt_patch_embed",
    "get_rope_periods",
    "set_rope_periods",
    "backbone_features",
]


def build_backbone(preset: Preset, window: int, *, empty: bool = False) -> Backbone:
    """Create the preset's timm ViT for ``window`` x ``window`` RGB input.

    The patch embedding has 3 input channels (the pretrained RGB layout); call
    :func:`adapt_patch_embed` after loading pretrained weights. Parameters are
    random, or with ``empty=True`` left uninitialised (for a full load right after:
    skips seconds of random init for ViT-L); non-persistent buffers (RoPE table,
    zero key bias) are always valid.
    """
    kwargs = dict(
        pretrained=False,
        num_classes=0,
        img_size=window,
        dynamic_img_size=False,
        in_chans=3,
        **preset.timm_kwargs,
    )
    if not empty:
        return timm.create_model(preset.timm_name, **kwargs)
    with torch.device("meta"):
        backbone = timm.create_model(preset.timm_name, **kwargs)
    backbone = backbone.to_empty(device="cpu")
    for module in backbone.modules():  # timm's convention for buffers kept out of state dicts
        init = getattr(module, "init_non_persistent_buffers", None)
        if callable(init):
            init()
    return backbone


def adapt_patch_embed(backbone: Backbone, band_map: Sequence[int]) -> None:
    """Replace the RGB patch embedding with one channel per band, in place.

    Input channel ``i`` gets a copy of the pretrained filter ``band_map[i]``
    (0 red, 1 green, 2 blue); the bias is kept. Filters are copied, not rescaled,
    as in the reference.
    """
    old = backbone.patch_embed.proj
    if old.in_channels != 3:
        raise InputError(
            f"adapt_patch_embed needs the pretrained RGB patch embedding (3 channels); this "
            f"backbone's takes {old.in_channels} (already adapted?): adapt a fresh backbone once"
        )
    if not band_map or any(isinstance(i, bool) or i not in (0, 1, 2) for i in band_map):
        raise InputError(
            f"band_map must give one RGB filter index (0 red, 1 green, 2 blue) per band, "
            f"got {tuple(band_map)}"
        )
    new = nn.Conv2d(
        len(band_map),
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(old.weight[:, list(band_map)])
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias)
    backbone.patch_embed.proj = new


def get_rope_periods(backbone: Backbone) -> torch.Tensor:
    """Return the backbone's RoPE periods (float32)."""
    return backbone.rope.periods


def set_rope_periods(backbone: Backbone, periods: torch.Tensor) -> None:
    """Set the RoPE periods and rebuild the cached position table.

    Meta's files store the periods rounded to bf16; timm recomputes them in fp32
    (about 1e-3 different features), so loaders copy the stored values here.
    """
    rope = backbone.rope
    if tuple(periods.shape) != tuple(rope.periods.shape):
        # The periods come from a weights file or checkpoint: a mismatch means foreign weights.
        raise WeightsError(
            f"RoPE periods of shape {tuple(periods.shape)} do not fit the backbone's "
            f"{tuple(rope.periods.shape)}: the weights come from another architecture"
        )
    with torch.no_grad():
        rope.periods.copy_(periods.to(rope.periods.dtype))
    # timm offers no public call to rebuild the cache from the current periods.
    rope._cache_embed(list(rope.feat_shape))


def backbone_features(
    backbone: Backbone, x: torch.Tensor, indices: Sequence[int]
) -> list[torch.Tensor]:
    """Patch-token maps (B, C, H/16, W/16) of the given blocks, final norm applied.

    With the last block's index this equals Meta's ``x_norm_patchtokens``.
    """
    return backbone.forward_intermediates(
        x, indices=list(indices), norm=True, intermediates_only=True, stop_early=True
    )
