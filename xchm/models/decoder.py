"""The canopy height decoder: backbone patch tokens (window/16 grid) to metres per pixel.

This reproduces the reference design: four upsampling stages (transposed conv
k4 s2 -> BatchNorm -> LeakyReLU(0.1) -> Dropout2d, then two residual blocks, the
later stages ending their residual branch with squeeze-and-excitation channel
attention), a convolutional head with channel attention, a 1x1 output conv whose
bias starts at a high label percentile (so early training does not collapse to
short heights) and a non-negative output. With several backbone depths the
feature maps are concatenated and fused by a 1x1 conv first (DPT-style input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xchm.errors import InputError
from xchm.models.presets import DecoderSpec

__all__ = ["CHMDecoder"]

_SLOPE = 0.1


def reset_output_conv(conv: nn.Conv2d, bias: float) -> None:
    """Re-initialise a decoder's output conv: weights ~ N(0, 0.02), bias = ``bias`` metres."""
    with torch.no_grad():
        nn.init.normal_(conv.weight, mean=0.0, std=0.02)
        assert conv.bias is not None  # built with bias=True
        nn.init.constant_(conv.bias, float(bias))


def _act() -> nn.Module:
    return nn.LeakyReLU(_SLOPE, inplace=True)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: rescale channels by a gate computed from their means."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the channel gate."""
        return x * self.gate(x)


class ResidualBlock(nn.Module):
    """conv3x3-BN-act-dropout-conv3x3-BN [-attention], plus the input, then act."""

    def __init__(self, channels: int, dropout: float, attention: ChannelAttention | None) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            _act(),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        ]
        if attention is not None:
            layers.append(attention)
        self.body = nn.Sequential(*layers)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update."""
        return self.act(x + self.body(x))


def _upsample_stage(c_in: int, c_out: int, spec: DecoderSpec, attention: bool) -> nn.Sequential:
    def blocks() -> ResidualBlock:
        se = ChannelAttention(c_out, spec.se_reduction) if attention else None
        return ResidualBlock(c_out, spec.dropout, se)

    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        _act(),
        nn.Dropout2d(spec.dropout),
        blocks(),
        blocks(),
    )


class CHMDecoder(nn.Module):
    """Decode (B, C, h, w) backbone features into (B, 1, 16h, 16w) heights >= 0.

    Parameters
    ----------
    in_channels
        Channels of each backbone feature map (the ViT width).
    num_levels
        How many feature maps (backbone depths) are fused.
    spec
        Widths and dropout.
    output_bias
        Initial bias of the output conv, in metres (the reference: 8.42, the 90th
        percentile of its labels).
    """

    def __init__(
        self, in_channels: int, num_levels: int, spec: DecoderSpec, output_bias: float
    ) -> None:
        super().__init__()
        if len(spec.widths) != 4 or len(spec.head_widths) != 3:
            raise InputError(
                f"the decoder has four x2 stages (16x upsampling) and a 3-layer head: "
                f"DecoderSpec needs 4 widths and 3 head_widths, got {spec.widths} and "
                f"{spec.head_widths}"
            )
        if num_levels > 1:
            self.fuse: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels * num_levels, in_channels, 1, bias=False),
                nn.BatchNorm2d(in_channels),
                _act(),
            )
        else:
            self.fuse = nn.Identity()
        stages = []
        c_in = in_channels
        for i, c_out in enumerate(spec.widths):
            stages.append(_upsample_stage(c_in, c_out, spec, i in spec.attention_stages))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        h1, h2, h3 = spec.head_widths
        self.head = nn.Sequential(
            nn.Conv2d(c_in, h1, 3, padding=1, bias=False),
            nn.BatchNorm2d(h1),
            _act(),
            nn.Dropout2d(spec.dropout),
            ChannelAttention(h1, spec.se_reduction),
            nn.Conv2d(h1, h2, 3, padding=1, bias=False),
            nn.BatchNorm2d(h2),
            _act(),
            nn.Dropout2d(spec.dropout),
            nn.Conv2d(h2, h3, 3, padding=1, bias=False),
            nn.BatchNorm2d(h3),
            _act(),
        )
        self.output = nn.Conv2d(h3, 1, 1)
        self.reset_output(output_bias)

    def reset_output(self, bias: float) -> None:
        """Re-initialise the output conv: weights ~ N(0, 0.02), bias = ``bias`` metres."""
        reset_output_conv(self.output, bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse the feature maps and decode them to heights (metres, >= 0)."""
        x = features[0] if len(features) == 1 else torch.cat(list(features), dim=1)
        x = self.head(self.stages(self.fuse(x)))
        return self.output(x).clamp_min(0.0)
