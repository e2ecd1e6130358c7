"""Model presets: named architectures with their default data contract.

A preset names a timm DINOv3 backbone, the CHM decoder's widths and the defaults
of the model card. Presets are pure data (no torch), so ``xchm.list_models()`` is
instant. Weights are never bundled: pretrained backbones come from a file the
user gives (``weights=``); ``test-tiny`` is random from a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Preset",
    "DecoderSpec",
    "DPTSpec",
    "DECODER_KINDS",
    "LIGHT_DECODER",
    "PRESETS",
    "get_preset",
]

#: The CHM decoder designs: ``reference`` (``xchm.models.decoder``, the default) and
#: ``light`` (``xchm.models.light_decoder``, under 1 GFLOP per 64x64 window).
DECODER_KINDS = ("reference", "light")


@dataclass(frozen=True, kw_only=True)
class DecoderSpec:
    """Design, widths and regularisation of the CHM decoder.

    ``kind`` picks the network: ``"reference"`` (``xchm.models.decoder``) or
    ``"light"`` (``xchm.models.light_decoder``); the other fields are its widths.
    """

    kind: str = "reference"
    """One of ``DECODER_KINDS``; a card without it (xchm before the light decoder)
    means ``"reference"``."""
    widths: tuple[int, ...] = (512, 256, 128, 64)
    """Channels of the upsampling stages; each stage doubles the resolution."""
    head_widths: tuple[int, ...] = (128, 64, 32)
    """Channels of the head's 3x3 convolutions before the 1x1 output conv (three for
    the reference decoder)."""
    attention_stages: tuple[int, ...] = (2, 3)
    """Stages (0-based) whose residual blocks end with channel attention (reference only)."""
    dropout: float = 0.1
    """Dropout2d probability (0.1 is what the reference actually trained with)."""
    se_reduction: int = 16
    """Channel reduction of the squeeze-and-excitation attention (reference only)."""

    def __post_init__(self) -> None:
        if self.kind not in DECODER_KINDS:
            from xchm.errors import InputError

            raise InputError(
                f"DecoderSpec kind must be one of {list(DECODER_KINDS)}, got {self.kind!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "kind": self.kind,
            "widths": list(self.widths),
            "head_widths": list(self.head_widths),
            "attention_stages": list(self.attention_stages),
            "dropout": self.dropout,
            "se_reduction": self.se_reduction,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderSpec:
        """Inverse of :meth:`to_dict` (no ``kind``: the reference decoder, as saved before)."""
        return cls(
            kind=str(data.get("kind", "reference")),
            widths=tuple(data["widths"]),
            head_widths=tuple(data["head_widths"]),
            attention_stages=tuple(data["attention_stages"]),
            dropout=float(data["dropout"]),
            se_reduction=int(data["se_reduction"]),
        )


#: The light decoder of the ViT presets: 1x1 projection to 256 channels, four
#: (bilinear x2, conv3x3) stages of 256, 128, 64, 32 channels, one 3x3 conv of 32 in the
#: head; about 0.62 GFLOP per 64x64 window (the reference: about 7.2). Thinner ends at
#: full resolution (8 channels, in benchmarks/light_decoder.py) learned much worse.
LIGHT_DECODER = DecoderSpec(
    kind="light", widths=(256, 128, 64, 32), head_widths=(32,), attention_stages=()
)


@dataclass(frozen=True, kw_only=True)
class DPTSpec:
    """Widths and height bins of a CHMv2-style DPT head (see ``xchm.models.dpt``)."""

    channels: tuple[int, int, int, int] = (128, 256, 512, 1024)
    """Channels of the four reassembled levels (resized x4, x2, x1, /2)."""
    fusion_channels: int = 256
    """Channels of the fusion blocks."""
    head_channels: int = 128
    """Hidden channels of the last convolution before the bin logits."""
    bins: int = 256
    """Number of height bins (logits per pixel)."""
    min_height: float = 0.001
    """Smallest bin edge of Meta's ``min_depth`` (before its factor 8)."""
    max_height: float = 96.0
    """Largest height in metres (Meta's ``max_depth``)."""


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
    """The CHM decoder (the reference design; the default of new models)."""
    light_decoder: DecoderSpec = LIGHT_DECODER
    """The light decoder of this preset (``decoder="light"``)."""
    dpt: DPTSpec | None = None
    """If set, the model has a CHMv2 DPT head with height bins instead of the CHM decoder;
    it reads four backbone depths (:attr:`multilevel_indices`) with their class tokens."""
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
    bands: tuple[str, ...] | None = None
    """Default input bands of the card (None: the reference's nir, red, green)."""
    statistics: tuple[tuple[float, float, float], ...] | None = None
    """Default (clip_max, mean, std) per default band (None: the card's defaults)."""
    window: int = 64
    """Default window in pixels."""
    pixel_size: float = 2.0
    """Default ground sampling distance in metres."""
    statistics_source: str = ""
    """Where the default statistics come from."""

    @property
    def multilevel_indices(self) -> tuple[int, ...]:
        """Four evenly spaced blocks, e.g. (5, 11, 17, 23) for a 24-block ViT."""
        step = self.depth // 4
        return tuple(step * (i + 1) - 1 for i in range(4))

    def decoder_spec(self, kind: str = "reference") -> DecoderSpec:
        """Return this preset's decoder of ``kind`` (``"reference"`` or ``"light"``).

        Raises
        ------
        InputError
            An unknown kind (the message lists them), or a preset with a DPT head
            (CHMv2), whose head is fixed: it has no CHM decoder of any kind.

        Examples
        --------
        >>> get_preset("dinov3-vits16").decoder_spec("light").widths
        (256, 128, 64, 32)
        """
        from xchm.errors import InputError

        if kind not in DECODER_KINDS:
            raise InputError(
                f"unknown decoder {kind!r}; choose one of {list(DECODER_KINDS)} or pass a "
                "DecoderSpec"
            )
        if self.dpt is not None:
            raise InputError(
                f"{self.name!r} has CHMv2's DPT head (height bins), not a CHM decoder: "
                f"decoder={kind!r} applies to the CHM-decoder presets only "
                f"({[n for n, p in PRESETS.items() if p.dpt is None]})"
            )
        return self.light_decoder if kind == "light" else self.decoder

    def feature_indices(self, multilevel: bool) -> tuple[int, ...]:
        """Blocks feeding the head: four with ``multilevel`` or a DPT head, else the last."""
        return self.multilevel_indices if multilevel or self.dpt is not None else ()

    def default_card(self) -> Any:
        """Return the :class:`~xchm.models.card.ModelCard` of this preset with every default."""
        from xchm.models.card import BandStats, ModelCard

        stats = None
        if self.statistics is not None:
            stats = tuple(BandStats(clip_max=c, mean=m, std=s) for c, m, s in self.statistics)
        return ModelCard(
            preset=self.name,
            bands=self.bands if self.bands is not None else ModelCard(preset=self.name).bands,
            statistics=stats,
            statistics_source=self.statistics_source if stats is not None else "",
            feature_indices=self.feature_indices(False),
            window=self.window,
            pixel_size=self.pixel_size,
        )


#: CHMv2's input: RGB, 8-bit values divided by 255, then its mean and std (Meta's
#: chmv2 notebook and transformers' CHMv2ImageProcessor: mean 0.420, not the 0.430 of
#: the SAT backbone's README).
CHMV2_BANDS = ("red", "green", "blue")
CHMV2_STATISTICS = (
    (255.0, 0.420, 0.213),
    (255.0, 0.411, 0.156),
    (255.0, 0.296, 0.143),
)
CHMV2_SOURCE = (
    "CHMv2 (Meta): 8-bit RGB / 255, mean (0.420, 0.411, 0.296), std (0.213, 0.156, 0.143)"
)
#: Default CHMv2 window: chosen by seams and speed on CPU (benchmarks/RESULTS.md).
CHMV2_WINDOW = 256

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
            name="chmv2",
            timm_name="vit_large_patch16_dinov3_qkvb",
            pretrained_tag="sat493m",
            dpt=DPTSpec(),
            bands=CHMV2_BANDS,
            statistics=CHMV2_STATISTICS,
            statistics_source=CHMV2_SOURCE,
            window=CHMV2_WINDOW,
            pixel_size=0.6,
            summary="Meta's CHMv2: DINOv3 ViT-L/16 SAT-493M + DPT head, trained canopy heights",
            notes="Meta's two files (gated, DINOv3 License): weights=dinov3_vitl16_chmv2_dpt_"
            "head-*.pth, backbone_weights=dinov3_vitl16_pretrain_sat493m-*.pth; or weights= a "
            "facebook/dinov3-vitl16-chmv2-dpt-head snapshot folder. RGB 8-bit, ~0.6 m.",
        ),
        Preset(
            name="test-tiny-chmv2",
            timm_name="vit_large_patch16_dinov3_qkvb",
            timm_kwargs={"embed_dim": 64, "depth": 4, "num_heads": 4, "init_values": 1.0},
            embed_dim=64,
            depth=4,
            dpt=DPTSpec(channels=(8, 16, 32, 64), fusion_channels=16, head_channels=8),
            bands=CHMV2_BANDS,
            statistics=CHMV2_STATISTICS,
            statistics_source=CHMV2_SOURCE,
            window=64,
            pixel_size=0.6,
            seed=0,
            summary="CHMv2's architecture (DPT head, 256 height bins) on test-tiny's backbone "
            "(tests, CPU demos)",
            notes="Random weights from a fixed seed; never pretrained.",
        ),
        Preset(
            name="test-tiny",
            timm_name="vit_large_patch16_dinov3_qkvb",
            # init_values=1.0: with timm's default 1e-5 all depths give near-identical features.
            timm_kwargs={"embed_dim": 64, "depth": 4, "num_heads": 4, "init_values": 1.0},
            embed_dim=64,
            depth=4,
            decoder=DecoderSpec(widths=(32, 16, 8, 8), head_widths=(16, 8, 8), se_reduction=4),
            light_decoder=DecoderSpec(
                kind="light", widths=(16, 8, 8, 8), head_widths=(8,), attention_stages=()
            ),
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
