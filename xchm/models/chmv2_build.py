"""Build a CHMv2 (DPT-head) model from a preset and Meta's or Hugging Face's files.

``xchm.load_model("chmv2", weights=HEAD, backbone_weights=BACKBONE)`` comes here
through :func:`xchm.models.api.create_model`: ``weights=`` is Meta's head file or a
``facebook/dinov3-vitl16-chmv2-dpt-head`` snapshot folder (backbone and head);
``backbone_weights=`` is the DINOv3 backbone file (any layout
:func:`~xchm.models.weights.load_backbone_weights` reads).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from xchm.errors import InputError, RandomWeightsWarning
from xchm.models.backbone import adapt_patch_embed, build_backbone
from xchm.models.card import ModelCard
from xchm.models.chmv2 import head_tensors, load_head, split_snapshot
from xchm.models.network import CanopyHeightModel, assemble
from xchm.models.presets import Preset
from xchm.models.weights import load_backbone_tensors, read_weights

__all__ = ["create_dpt_model"]

Source = tuple[Path, dict[str, Any]]  # a local path and its provenance entries


def create_dpt_model(
    spec: Preset,
    *,
    weights: Source | None,
    backbone_weights: Source | None,
    card: ModelCard,
    seed: int | None,
) -> CanopyHeightModel:
    """Build ``spec``'s model for ``card``, its backbone and head from the given files.

    Without ``weights`` the head is new (random, for training); without any file the
    backbone is random too (a :class:`~xchm.errors.RandomWeightsWarning` says so
    unless the preset is random by design).

    Raises
    ------
    InputError
        A head file without its backbone, or a snapshot and a second backbone.
    WeightsError
        Unreadable files, or tensors that do not fit the preset (named with shapes).
    """
    backbone_tensors = head = None
    provenance: dict[str, Any] = {}
    backbone_where = head_where = ""
    if weights is not None:
        path, info = weights
        provenance.update(info)
        head_where = str(path)
        if path.is_dir():
            if backbone_weights is not None:
                raise InputError(
                    f"{str(path)!r} is a snapshot folder that holds the backbone too; drop "
                    "backbone_weights=, or pass Meta's head file as weights= instead"
                )
            backbone_tensors, head = split_snapshot(path)
            backbone_where = head_where
        else:
            if backbone_weights is None:
                raise InputError(
                    f"{str(path)!r} is a CHMv2 head file; its backbone is a second file: pass "
                    "backbone_weights='dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth' (or give "
                    "weights= a facebook/dinov3-vitl16-chmv2-dpt-head snapshot folder)"
                )
            head = head_tensors(read_weights(path))
    if backbone_weights is not None:
        path, info = backbone_weights
        provenance.update(info)
        backbone_where = str(path)
        backbone_tensors = read_weights(path)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        backbone = build_backbone(spec, card.window, empty=backbone_tensors is not None)
        if backbone_tensors is not None:
            layout = load_backbone_tensors(backbone, backbone_tensors, backbone_where)
            provenance["weights_layout"] = layout
        elif spec.seed is None:
            warnings.warn(
                f"{spec.name!r} was built with a random backbone and head; pass Meta's files "
                f"({spec.notes})",
                RandomWeightsWarning,
                stacklevel=4,
            )
        adapt_patch_embed(backbone, card.band_map)
        model = assemble(backbone, card.replace(provenance=provenance))
    if head is not None:
        load_head(model.decoder, head, head_where)
    return model
