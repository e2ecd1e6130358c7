"""A light CHM decoder: the same contract as the reference decoder at a tenth of its cost.

The reference decoder (:mod:`xchm.models.decoder`) costs about 7.2 GFLOP per 64x64
window whatever the backbone: 89 % of the FLOPs (and most of the time) of a
``dinov3-vits16`` model. This one keeps its interface (a list of (B, C, h, w) feature
maps in, (B, 1, 16h, 16w) heights >= 0 out, an output bias set by
:meth:`LightDecoder.reset_output`) with a plain design of about 0.6 GFLOP per window
for the ViT presets:

* a 1x1 projection of the (concatenated) feature maps to ``widths[0]`` channels;
* four stages of bilinear x2 upsampling then conv3x3 (``widths``), each followed by
  BatchNorm, LeakyReLU(0.1) and Dropout2d; no residual blocks, no channel attention;
* a head of 3x3 convolutions (``head_widths``) and the 1x1 output conv, clamped >= 0.

Bilinear upsampling before the convolution (rather than transposed convolutions)
avoids checkerboard artefacts at no extra FLOPs. Every BatchNorm2d directly follows
its convolution inside an ``nn.Sequential``, so inference can fold the pair into one
convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xchm.errors import InputError
from xchm.models.decoder import reset_output_conv
from xchm.models.presets import DecoderSpec

__all__ = ["LightDecoder"]

_SLOPE = 0.1  # as the reference decoder


def _conv_bn_act(c_in: int, c_out: int, kernel: int, dropout: float) -> list[nn.Module]:
    """Return Conv2d (no bias: BatchNorm has one), BatchNorm2d, LeakyReLU [, Dropout2d]."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(_SLOPE, inplace=True),
    ]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return layers


class LightDecoder(nn.Module):
    """Decode (B, C, h, w) backbone features into (B, 1, 16h, 16w) heights >= 0, cheaply.

    Parameters
    ----------
    in_channels
        Channels of each backbone feature map (the ViT width).
    num_levels
        How many feature maps (backbone depths) are concatenated before the projection.
    spec
        ``widths``: the projection's and the four stages' channels; ``head_widths``: the
        head's 3x3 convolutions; ``dropout``.
    output_bias
        Initial bias of the output conv, in metres.
    """

    def __init__(
        self, in_channels: int, num_levels: int, spec: DecoderSpec, output_bias: float
    ) -> None:
        super().__init__()
        if len(spec.widths) != 4 or not spec.head_widths:
            raise InputError(
                f"the light decoder has four x2 stages (16x upsampling) and a head of at least "
                f"one conv: DecoderSpec needs 4 widths and 1 or more head_widths, got "
                f"{spec.widths} and {spec.head_widths}"
            )
        c_in = spec.widths[0]
        self.project = nn.Sequential(*_conv_bn_act(in_channels * num_levels, c_in, 1, 0.0))
        stages = []
        for c_out in spec.widths:
            stages.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    *_conv_bn_act(c_in, c_out, 3, spec.dropout),
                )
            )
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        head: list[nn.Module] = []
        for c_out in spec.head_widths:
            head += _conv_bn_act(c_in, c_out, 3, 0.0)
            c_in = c_out
        self.head = nn.Sequential(*head)
        self.output = nn.Conv2d(c_in, 1, 1)
        self.reset_output(output_bias)

    def reset_output(self, bias: float) -> None:
        """Re-initialise the output conv: weights ~ N(0, 0.02), bias = ``bias`` metres."""
        reset_output_conv(self.output, bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate the feature maps and decode them to heights (metres, >= 0)."""
        x = features[0] if len(features) == 1 else torch.cat(list(features), dim=1)
        x = self.head(self.stages(self.project(x)))
        return self.output(x).clamp_min(0.0)
