"""Meta's CHMv2 weights: the DPT head file and the Hugging Face snapshot folder.

Meta distributes CHMv2 as two files: the DINOv3 ViT-L/16 SAT-493M backbone (read by
:mod:`xchm.models.weights`) and ``dinov3_vitl16_chmv2_dpt_head-*.pth``, the head's
state dict under the names :class:`~xchm.models.dpt.DPTHead` uses. Hugging Face's
``facebook/dinov3-vitl16-chmv2-dpt-head`` holds both in one folder: the backbone under
``backbone.`` (transformers' DINOv3 names) and the head under ``head.`` with
transformers' names, mapped back here by the table of transformers' conversion script
(no library exposes that table). Everything is read offline without unpickling
objects (``torch.load(weights_only=True)`` or safetensors).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from xchm.errors import WeightsError
from xchm.models.weights import compare_state, mismatch_details, read_weights

__all__ = ["head_tensors", "split_snapshot", "load_head", "is_chmv2_snapshot"]

# transformers' CHMv2Head names -> Meta's DPTHead names (those of DPTHead's modules).
_HF_TO_META = (
    (r"^reassemble_stage\.layers\.(\d+)\.projection\.", r"reassemble_blocks.projects.\1.conv."),
    (r"^reassemble_stage\.layers\.(\d+)\.resize\.", r"reassemble_blocks.resize_layers.\1."),
    (r"^reassemble_stage\.readout_projects\.", r"reassemble_blocks.readout_projects."),
    (r"^convs\.(\d+)\.weight$", r"convs.\1.conv.weight"),
    (r"^fusion_layers\.(\d+)\.projection\.", r"fusion_blocks.\1.project.conv."),
    (
        r"^fusion_layers\.(\d+)\.residual_layer([12])\.convolution([12])\.",
        r"fusion_blocks.\1.res_conv_unit\2.conv\3.conv.",
    ),
)
_HEAD_FILE = "Meta's dinov3_vitl16_chmv2_dpt_head-*.pth"


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if tensors and all(k.startswith(prefix) for k in tensors):
        return {k[len(prefix) :]: v for k, v in tensors.items()}
    return dict(tensors)


def head_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a CHMv2 head state dict in Meta's names, from Meta's or transformers'.

    A ``head.`` or ``decoder.`` prefix on every key is dropped first.
    """
    out = _strip(_strip(tensors, "head."), "decoder.")
    if not any(k.startswith(("reassemble_stage.", "fusion_layers.")) for k in out):
        return out  # Meta's names already
    mapped = {}
    for key, value in out.items():
        for pattern, replacement in _HF_TO_META:
            key, n = re.subn(pattern, replacement, key)
            if n:
                break
        mapped[key] = value
    return mapped


def is_chmv2_snapshot(folder: Path) -> bool:
    """Whether ``folder`` looks like a Hugging Face CHMv2 snapshot (its ``config.json``)."""
    try:
        config = json.loads((folder / "config.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "chmv2"


def split_snapshot(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read a CHMv2 snapshot folder: (backbone tensors, head tensors in Meta's names).

    Raises
    ------
    WeightsError
        If the folder holds no ``backbone.*`` or no ``head.*`` tensors.
    """
    tensors = read_weights(folder)
    backbone = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
    head = {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
    if not backbone or not head:
        missing = "head.*" if not head else "backbone.*"
        raise WeightsError(
            f"{str(folder)!r} is not a CHMv2 snapshot: it has no {missing} tensors "
            f"({len(tensors)} tensors, e.g. {sorted(tensors)[:3]}); expected a folder of "
            "facebook/dinov3-vitl16-chmv2-dpt-head (backbone and head), or pass Meta's head "
            "file as weights= and its backbone file as backbone_weights="
        )
    return backbone, head_tensors(head)


def load_head(head: nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Load a CHMv2 head state dict (Meta's names) into ``head``, checking every shape.

    Raises
    ------
    WeightsError
        If keys are missing or unexpected, or shapes differ; the message names the
        first of each, with the file's and the model's shapes.
    """
    own = head.state_dict()
    missing, unexpected, wrong = compare_state(tensors, own)
    not_float = sorted(k for k in tensors if not tensors[k].is_floating_point())
    if missing or unexpected or wrong or not_float:
        odd = [f"{len(not_float)} non-float tensors (e.g. {not_float[0]})"] if not_float else []
        raise WeightsError(
            f"the CHMv2 head in {where!r} ({len(tensors)} tensors) does not fit this model's "
            f"head ({len(own)} tensors): "
            + mismatch_details(missing, unexpected, wrong, odd)
            + f". Expected {_HEAD_FILE} "
            "(68 tensors) or the head.* of a facebook/dinov3-vitl16-chmv2-dpt-head snapshot"
        )
    with torch.no_grad():
        head.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
