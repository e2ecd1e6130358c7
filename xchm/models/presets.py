"""Model presets: named architectures with their default data contract.

A preset names a timm DINOv3 backbone, the CHM decoder's widths and the defaults
of the model card. Presets are pure data (no torch), so ``xchm.list_models()`` is
instant. Weights are never bundled: pretrained backbones come from a file the
user gives (``weights=``); ``test-tiny`` is random from a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Preset", "DecoderSpec", "PRESETS", "get_preset"]


@dataclass(frozen=True, kw_only=True)
class DecoderSpec:
    """Widths and regularisation of the CHM decoder (see ``xchm.models.decoder``)."""

    widths: tuple[int, ...] = (512, 256, 128, 64)
    """Channels of the upsampling stages; each stage doubles the resolution."""
    head_widths: tuple[int, int, int] = (128, 64, 32)
    """Channels of the three convolutions of the head before the 1x1 output conv."""
    attention_stages: tuple[int, ...] = (2, 3)
    """Stages (0-based) whose residual blocks end with channel attention."""
    dropout: float = 0.1
    """Dropout2d probability (0.1 is what the reference actually trained with)."""
    se_reduction: int = 16
    """Channel reduction of the squeeze-and-excitation attention."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "widths": list(self.widths),
            "head_widths": list(self.head_widths),
            "attention_stages": list(self.attention_stages),
            "dropout": self.dropout,
            "se_reduction": self.se_reduction,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            widths=tuple(data["widths"]),
            head_widths=tuple(data["head_widths"]),
            attention_stages=tuple(data["attention_stages"]),
            dropout=float(data["dropout"]),
            se_reduction=int(data["se_reduction"]),
        )


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A named model architecture."""

    name: str
    """Stable preset name, e.g. ``"dinov3-vitl16-sat"``."""
    timm_name: str
    """timm architecture; ``_qkvb`` variants keep the q/v biases of Meta's files."""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    """Overrides passed to ``timm.create_model`` (only ``test-tiny`` shrinks the model)."""
    pretrained_tag: str | None = None
    """timm tag of the matching Meta weights (``sat493m`` or ``lvd1689m``)."""
    decoder: DecoderSpec = DecoderSpec()
    """The CHM decoder."""
    embed_dim: int = 1024
    """Backbone width (channels of each feature map)."""
    depth: int = 24
    """Number of transformer blocks."""
    seed: int | None = None
    """If set, weights are random from this seed (no pretrained weights exist)."""
    summary: str = ""
    """One line for ``xchm models``."""
    notes: str = ""
    """Requirements and caveats (memory, licence)."""

    @property
    def multilevel_indices(self) -> tuple[int, ...]:
        """Four evenly spaced blocks, e.g. (5, 11, 17, 23) for a 24-block ViT."""
        step = self.depth // 4
        return tuple(step * (i + 1) - 1 for i in range(4))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="dinov3-vitl16-sat",
            timm_name="vit_large_patch16_dinov3_qkvb",
            pretrained_tag="sat493m",
            summary="DINOv3 ViT-L/16 pretrained on SAT-493M satellite imagery (the reference)",
            notes="Meta's weights file: dinov3_vitl16_pretrain_sat493m-*.pth (gated, request "
            "access from Meta); pass it as weights=PATH.",
        ),
        Preset(
            name="dinov3-vits16",
            timm_name="vit_small_patch16_dinov3_qkvb",
            pretrained_tag="lvd1689m",
            embed_dim=384,
            depth=12,
            summary="DINOv3 ViT-S/16 pretrained on LVD-1689M web images (fast, small)",
            notes="Meta's weights file: dinov3_vits16_pretrain_lvd1689m-*.pth.",
        ),
        Preset(
            name="dinov3-vit7b16-sat",
            timm_name="vit_7b_patch16_dinov3",
            pretrained_tag="sat493m",
            embed_dim=4096,
            depth=40,
            summary="DINOv3 ViT-7B/16 pretrained on SAT-493M (research scale)",
            notes="6.7B backbone parameters: needs a large GPU (>= 40 GB for inference in "
            "bf16, 80 GB+ to train the decoder); ran out of memory on 32 GB V100s.",
        ),
        Preset(
            name="test-tiny",
            timm_name="vit_large_patch16_dinov3_qkvb",
            # init_values=1.0: with timm's default 1e-5 all depths give near-identical features.
            timm_kwargs={"embed_dim": 64, "depth": 4, "num_heads": 4, "init_values": 1.0},
            embed_dim=64,
            depth=4,
            decoder=DecoderSpec(widths=(32, 16, 8, 8), head_widths=(16, 8, 8), se_reduction=4),
            seed=0,
            summary="Same DINOv3 architecture, 64-d, 4 blocks, random weights (tests, CPU demos)",
            notes="Random weights from a fixed seed; never pretrained.",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """Return the preset called ``name`` (raises ``ModelNotFoundError``)."""
    from xchm.errors import ModelNotFoundError

    try:
        return PRESETS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=2)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ModelNotFoundError(
            f"no model preset {name!r}{hint} Available presets: {sorted(PRESETS)}"
        ) from None
