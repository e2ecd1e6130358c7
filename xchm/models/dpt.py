"""CHMv2's head: a DPT decoder over four backbone depths and 256 height bins.

Written from the architecture Meta released with CHMv2 (``dinov3/eval/depth/models/
dpt_head.py`` and ``eval/depth/utils.py``, described in ``CHMV2.md``), because no
library offers it as a trainable module: transformers' ``CHMv2ForDepthEstimation`` is
inference-only and carries its own backbone. The submodules carry the names of Meta's
head file (``reassemble_blocks.projects.0.conv.weight``...), so that file loads with
``load_state_dict(strict=True)`` and no key table; Hugging Face's names are mapped in
:mod:`xchm.models.chmv2`.

The head ends in :func:`heights_from_logits`: the bin logits become weights by
Meta's "mixlog" *linear* normalisation (ReLU, a 1e-8 shift, divide by the sum: not a
softmax) and the height is the weighted mean of the bin centres, times 8.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xchm.models.presets import DPTSpec

__all__ = ["DPTHead", "mixlog_bins", "heights_from_logits"]

# Meta's constants (eval/depth/utils.py): the bins are built up to max/8, output x 8.
_SCALE = 8.0
_SHIFT_MAX, _SHIFT_EPS, _EPS = 1e-4, 1e-8, 1e-12


def mixlog_bins(spec: DPTSpec, *, device: torch.device | None = None) -> torch.Tensor:
    """Bin centres (before the factor 8) blending a log and a linear spacing.

    Bin 0 is purely logarithmic, the last purely linear:
    ``t * logspace + (1 - t) * linspace`` with ``t`` from 1 to 0.
    """
    top = spec.max_height / _SCALE
    linear = torch.linspace(spec.min_height, top, spec.bins, device=device)
    log = torch.exp(
        torch.linspace(
            torch.log(torch.full((), spec.min_height, device=device)),
            torch.log(torch.full((), top, device=device)),
            spec.bins,
            device=device,
        )
    )
    t = torch.linspace(1.0, 0.0, spec.bins, device=device)
    return t * log + (1.0 - t) * linear


def heights_from_logits(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """(B, bins, H, W) logits to (B, 1, H, W) metres, as Meta's ``chmv2_mixlog`` norm."""
    y = torch.relu(logits)
    shift = (-y.amin(dim=1, keepdim=True)).clamp(0.0, _SHIFT_MAX) + _SHIFT_EPS
    y = y + shift
    total = torch.nan_to_num(y.sum(dim=1, keepdim=True), nan=1.0, posinf=1.0, neginf=1.0)
    weights = y / total.clamp_min(_EPS)
    centres = bins.view(1, -1, 1, 1).clamp_min(_EPS)
    return (weights * centres).sum(dim=1, keepdim=True).clamp_min(_EPS) * _SCALE


class _Conv(nn.Module):
    """A convolution kept under ``.conv`` (the name Meta's ConvModule gives it)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the convolution."""
        return self.conv(x)


class _ResidualUnit(nn.Module):
    """Pre-activation residual unit: ``x + conv2(relu(conv1(relu(x))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _Conv(channels, channels, 3)
        self.conv2 = _Conv(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update (the input is not modified in place)."""
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class _Fusion(nn.Module):
    """Add the skip level (through a residual unit), refine, upsample x2, project."""

    def __init__(self, channels: int, *, first: bool) -> None:
        super().__init__()
        if not first:
            self.res_conv_unit1 = _ResidualUnit(channels)
        self.res_conv_unit2 = _ResidualUnit(channels)
        self.project = _Conv(channels, channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse ``skip`` into ``x`` (resized to it when their sizes differ)."""
        if skip is not None:
            if skip.shape != x.shape:
                skip = F.interpolate(skip, size=x.shape[2:], mode="bilinear", align_corners=False)
            x = x + self.res_conv_unit1(skip)
        x = self.res_conv_unit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


class _Reassemble(nn.Module):
    """Per level: class-token readout, 1x1 projection, resize to x4, x2, x1, /2."""

    def __init__(self, width: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.readout_projects = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * width, width), nn.GELU()) for _ in channels
        )
        self.projects = nn.ModuleList(_Conv(width, c, 1) for c in channels)
        c0, c1, _, c3 = channels
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4),
                nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),
            ]
        )

    def forward(self, levels: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """(patch map (B, C, h, w), class token (B, C)) per level to four feature maps."""
        out = []
        for i, (patches, cls) in enumerate(levels):
            b, c, h, w = patches.shape
            tokens = patches.flatten(2).transpose(1, 2)
            tokens = torch.cat([tokens, cls[:, None, :].expand_as(tokens)], dim=-1)
            x = self.readout_projects[i](tokens).transpose(1, 2).reshape(b, c, h, w)
            out.append(self.resize_layers[i](self.projects[i](x)))
        return out


class _UpConvHead(nn.Module):
    """3x3 conv, bilinear x2, 3x3 conv, ReLU, 1x1 conv to the bin logits."""

    def __init__(self, channels: int, hidden: int, bins: int) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(channels // 2, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, bins, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bin logits at twice the input resolution."""
        return self.head(x)


class DPTHead(nn.Module):
    """Decode four (patch map, class token) levels into (B, 1, 16h, 16w) metres.

    The ``decoder`` of a CHMv2 :class:`~xchm.models.network.CanopyHeightModel`; its
    state dict has exactly the keys of Meta's ``dinov3_vitl16_chmv2_dpt_head-*.pth``.

    Parameters
    ----------
    width
        Channels of the backbone's tokens.
    spec
        The head's widths and bins.
    """

    #: The backbone levels come with their class tokens (see ``CanopyHeightModel.features``).
    uses_class_token = True

    def __init__(self, width: int, spec: DPTSpec) -> None:
        super().__init__()
        self.spec = spec
        fusion = spec.fusion_channels
        self.reassemble_blocks = _Reassemble(width, spec.channels)
        self.convs = nn.ModuleList(_Conv(c, fusion, 3, bias=False) for c in spec.channels)
        self.fusion_blocks = nn.ModuleList(_Fusion(fusion, first=i == 0) for i in range(4))
        self.conv_depth = _UpConvHead(fusion, spec.head_channels, spec.bins)

    def reset_output(self, height: float) -> None:
        """Re-initialise the last (1x1, bin logits) convolution to predict about ``height`` m.

        The counterpart of the CHM decoder's output bias, called by training
        (``TrainConfig.output_bias_percentile``): bias 1 on the bin nearest ``height``
        and 0 elsewhere, weights ~ N(0, 1e-4), so the linear normalisation puts almost
        all weight on that bin while the other bins' logits are small but not all zero
        (ReLU passes gradients only to positive logits). The rest of the head (a
        pretrained CHMv2's) is kept.
        """
        conv = self.conv_depth.head[4]
        assert isinstance(conv, nn.Conv2d) and conv.bias is not None  # built so
        centres = mixlog_bins(self.spec) * _SCALE
        nearest = int(torch.argmin((centres - float(height)).abs()))
        with torch.no_grad():
            nn.init.normal_(conv.weight, mean=0.0, std=1e-4)
            conv.bias.zero_()
            conv.bias[nearest] = 1.0

    def logits(self, levels: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Bin logits (B, bins, 16h, 16w) from the four levels, shallowest first."""
        maps = [conv(x) for conv, x in zip(self.convs, self.reassemble_blocks(levels), strict=True)]
        x = self.fusion_blocks[0](maps[3])
        for block, skip in zip(self.fusion_blocks[1:], reversed(maps[:3]), strict=True):
            x = block(x, skip)
        return self.conv_depth(x)

    def forward(self, levels: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Heights in metres (B, 1, 16h, 16w), between 0.008 and ``spec.max_height``.

        With an odd patch grid the fusion overshoots by 16 px (the /2 level rounds up);
        the heights are then resized to the input, as Meta's notebook does.
        """
        logits = self.logits(levels)
        heights = heights_from_logits(logits, mixlog_bins(self.spec, device=logits.device))
        h, w = levels[0][0].shape[2:]
        if heights.shape[2:] != (16 * h, 16 * w):
            heights = F.interpolate(heights, size=(16 * h, 16 * w), mode="bilinear")
        return heights
