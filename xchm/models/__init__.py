"""Canopy height models: presets, the model card, loading and saving.

Importing this package does not import torch; the network modules
(``backbone``, ``decoder``, ``network``, ``weights``, ``checkpoint``) do;
``normalize`` holds the card's normalisation in torch (used by inference, training,
evaluation and pretraining alike).

Layering: this is the bottom room. Its modules import only each other and the leaf
utilities (:mod:`xchm.errors`, :mod:`xchm.outputs`); never :mod:`xchm.inference` or
anything above it.
"""

from xchm.models.api import create_model, list_models, load_model, model_info
from xchm.models.bands import REFERENCE_BANDS
from xchm.models.card import REFERENCE_STATISTICS, BandStats, ModelCard, band_statistics
from xchm.models.presets import PRESETS, DecoderSpec, Preset

__all__ = [
    "BandStats",
    "DecoderSpec",
    "ModelCard",
    "PRESETS",
    "Preset",
    "REFERENCE_BANDS",
    "REFERENCE_STATISTICS",
    "create_model",
    "list_models",
    "load_model",
    "band_statistics",
    "model_info",
]
