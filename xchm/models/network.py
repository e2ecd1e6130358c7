"""The canopy height model: a DINOv3 backbone, a CHM decoder and the model card.

:func:`assemble` is the one place a backbone, a decoder and a card become a model
(``create_model``, checkpoints and test builders all go through it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from xchm.errors import InputError, WeightsError
from xchm.models.backbone import (
    adapt_patch_embed,
    backbone_features,
    build_backbone,
    set_rope_periods,
)
from xchm.models.card import ModelCard
from xchm.models.checkpoint import CARD_FILE, WEIGHTS_FILE, read_checkpoint, save_checkpoint
from xchm.models.decoder import CHMDecoder
from xchm.models.dpt import DPTHead
from xchm.models.light_decoder import LightDecoder
from xchm.models.presets import DecoderSpec, get_preset
from xchm.storage import Location, PathOrURL

__all__ = ["CanopyHeightModel", "assemble", "load_checkpoint"]


class CanopyHeightModel(nn.Module):
    """Backbone + decoder mapping normalised (B, bands, W, W) chips to (B, 1, W, W) metres.

    Build it with :func:`xchm.load_model`; the constructor wires already-built parts.
    The backbone is frozen by default (no gradients, kept in eval mode even when
    the model is put in train mode), as in the reference.

    Parameters
    ----------
    backbone
        A timm DINOv3 ViT whose patch embedding takes ``card.num_bands`` channels.
    decoder
        The CHM decoder (reference or light), or CHMv2's DPT head (presets with ``dpt``).
    card
        The model card (bands, statistics, window...).
    decoder_spec
        The decoder's kind and widths (saved with checkpoints).
    """

    def __init__(
        self,
        backbone: Any,
        decoder: CHMDecoder | LightDecoder | DPTHead,
        card: ModelCard,
        decoder_spec: DecoderSpec,
    ) -> None:
        super().__init__()
        self.backbone: Any = backbone  # timm Eva (dynamic submodules)
        self.decoder = decoder
        self.card = card
        self.decoder_spec = decoder_spec
        self.feature_indices = card.feature_indices or (len(backbone.blocks) - 1,)
        self.validate_inputs = True
        self.freeze_backbone(True)

    # -- training state ------------------------------------------------------------
    @property
    def backbone_frozen(self) -> bool:
        """Whether the backbone is frozen (no gradients, always in eval mode)."""
        return self._backbone_frozen

    def freeze_backbone(self, frozen: bool = True) -> CanopyHeightModel:
        """Freeze (default) or unfreeze every backbone parameter; returns ``self``."""
        self._backbone_frozen = bool(frozen)
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> CanopyHeightModel:
        """Set train/eval mode; a frozen backbone stays in eval mode."""
        super().train(mode)
        if getattr(self, "_backbone_frozen", False):
            self.backbone.eval()
        return self

    # -- forward -------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise :class:`InputError` unless ``x`` is a finite (B, bands, W, W) float batch."""
        card = self.card
        expected = f"(batch, {card.num_bands}, {card.window}, {card.window})"
        if not isinstance(x, torch.Tensor):
            raise InputError(f"expected a torch.Tensor of shape {expected}, got {type(x).__name__}")
        if x.ndim != 4:
            raise InputError(f"expected a 4-D batch {expected}, got shape {tuple(x.shape)}")
        if x.shape[1] != card.num_bands:
            raise InputError(
                f"the model expects {card.num_bands} bands {card.bands}, got {x.shape[1]} "
                f"channels (shape {tuple(x.shape)})"
            )
        if x.shape[2:] != (card.window, card.window):
            raise InputError(
                f"the model expects {card.window}x{card.window} windows, got "
                f"{x.shape[2]}x{x.shape[3]}; cut the input into windows of the card's size"
            )
        if not x.is_floating_point():
            raise InputError(f"expected normalised float input, got dtype {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise InputError(
                "the input contains NaN or infinite values; mask nodata before the model "
                "(xchm's predict does this) instead of feeding it"
            )

    def features(self, x: torch.Tensor, *, validate: bool | None = None) -> list[Any]:
        """Backbone feature maps (B, C, W/16, W/16) of the configured blocks, final norm applied.

        The last map is the final block's patch tokens after the final norm (Meta's
        ``x_norm_patchtokens``). For a DPT head (CHMv2) each level is a pair
        ``(map, class token (B, C))``, the class token normed too, as in Meta's
        ``get_intermediate_layers(norm=True, return_class_token=True)``. ``validate``
        overrides ``self.validate_inputs``.
        """
        if self.validate_inputs if validate is None else validate:
            self.check_input(x)
        if getattr(self.decoder, "uses_class_token", False):
            levels = self.backbone.forward_intermediates(
                x,
                indices=list(self.feature_indices),
                norm=True,
                return_prefix_tokens=True,
                intermediates_only=True,
                stop_early=True,
            )
            return [(patches, prefix[:, 0]) for patches, prefix in levels]
        return backbone_features(self.backbone, x, self.feature_indices)

    def forward(self, x: torch.Tensor, *, validate: bool | None = None) -> torch.Tensor:
        """Predict canopy height (B, 1, W, W) in metres (>= 0) from normalised input.

        Input checks (shape, dtype, finite values) run unless ``validate=False`` or
        ``self.validate_inputs`` is False; callers that mask their own input skip them.
        """
        return self.decoder(self.features(x, validate=validate))

    # -- persistence and description -----------------------------------------------
    def save(self, directory: PathOrURL) -> Path | Location:
        """Write ``model.safetensors`` and ``card.json`` to ``directory`` (see ``load_model``).

        ``directory`` is a local folder (its ``Path`` is returned) or a URL such as
        ``s3://bucket/models/chm/`` (its :class:`~xchm.storage.Location` is returned).
        """
        return save_checkpoint(self, directory)

    def num_parameters(self, part: str = "all") -> int:
        """Count parameters of ``"backbone"``, ``"decoder"`` or ``"all"``."""
        module = {"all": self, "backbone": self.backbone, "decoder": self.decoder}[part]
        return sum(p.numel() for p in module.parameters())

    def extra_repr(self) -> str:
        """Summarise the card in the module's repr."""
        c = self.card
        return (
            f"preset={c.preset!r}, bands={c.bands}, window={c.window}, "
            f"blocks={self.feature_indices}"
        )


def assemble(
    backbone: Any,
    card: ModelCard,
    *,
    decoder_spec: DecoderSpec | None = None,
    output_bias: float = 0.0,
) -> CanopyHeightModel:
    """Put a new decoder for ``card`` (its preset, feature levels) on ``backbone``.

    ``decoder_spec`` defaults to the preset's reference decoder; its ``kind`` picks the
    network (``"reference"``: :class:`CHMDecoder`, ``"light"``: :class:`LightDecoder`).
    The model is returned in eval mode.
    """
    spec = get_preset(card.preset)
    decoder_spec = spec.decoder if decoder_spec is None else decoder_spec
    if spec.dpt is not None:  # CHMv2: the head reads four fixed depths; no output bias
        if decoder_spec.kind != "reference":
            spec.decoder_spec(decoder_spec.kind)  # raises: the DPT head is fixed
        if card.feature_indices != spec.multilevel_indices:
            raise InputError(
                f"the {card.preset!r} head reads backbone blocks {spec.multilevel_indices}; the "
                f"card names {card.feature_indices}"
            )
        head: CHMDecoder | LightDecoder | DPTHead = DPTHead(spec.embed_dim, spec.dpt)
        return CanopyHeightModel(backbone, head, card, decoder_spec).eval()
    levels = max(len(card.feature_indices), 1)
    kind = LightDecoder if decoder_spec.kind == "light" else CHMDecoder
    decoder = kind(spec.embed_dim, levels, decoder_spec, output_bias=output_bias)
    return CanopyHeightModel(backbone, decoder, card, decoder_spec).eval()


def load_checkpoint(directory: PathOrURL) -> CanopyHeightModel:
    """Load a model saved by ``model.save(directory)`` (outputs are bit-identical).

    ``directory`` may be a URL: its weights are then fetched once per machine into the
    download cache (:func:`xchm.storage.fetch_cached`), keyed and verified by SHA-256.

    Raises
    ------
    ModelNotFoundError
        If ``directory`` does not exist.
    WeightsError
        If the card or the weights are missing, corrupt, from different checkpoints
        or do not fit together.
    """
    saved = read_checkpoint(directory)
    card, where = saved.card, str(saved.directory)
    try:
        backbone = build_backbone(get_preset(card.preset), card.window, empty=True)
        adapt_patch_embed(backbone, card.band_map)
        model = assemble(backbone, card, decoder_spec=saved.decoder_spec)
    except (InputError, RuntimeError, TypeError, ValueError) as err:
        raise WeightsError(
            f"the {CARD_FILE} in {where!r} describes a model that cannot be built: {err}"
        ) from err
    try:
        model.load_state_dict(saved.tensors, strict=True)
        if saved.rope_periods is not None:
            set_rope_periods(backbone, saved.rope_periods)
    except (RuntimeError, WeightsError) as err:
        raise WeightsError(
            f"{WEIGHTS_FILE} in {where!r} does not fit the architecture its card "
            f"describes: {str(err)[:400]}"
        ) from err
    return model
