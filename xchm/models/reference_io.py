"""Reference checkpoints as files: import once into an xchm checkpoint, export back.

:func:`import_reference` converts a reference ``.pth`` (read by
:func:`xchm.models.reference.load_reference`) into an xchm checkpoint folder;
:func:`export_reference` writes an xchm model as the reference's training saves it,
with the inverse of the key table of :mod:`xchm.models.reference` and the inverse
Hugging Face mapping (timm to ``DINOv3ViTModel`` keys, which no library provides).
Both follow the output rule (:mod:`xchm.outputs`) and take local paths or URLs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from xchm._version import __version__
from xchm.errors import InputError
from xchm.models.card import BandStats
from xchm.models.reference import (
    BN_TENSORS,
    REFERENCE_WINDOW,
    key_table,
    load_reference,
)
from xchm.storage import Location, PathOrURL, location

if TYPE_CHECKING:
    from xchm.models.network import CanopyHeightModel

__all__ = [
    "reference_state_dict",
    "reference_checkpoint",
    "import_reference",
    "export_reference",
]

# Hugging Face names of the presets' backbones (the reference loads them by name).
_HF_NAMES = {
    "dinov3-vitl16-sat": "facebook/dinov3-vitl16-pretrain-sat493m",
    "dinov3-vits16": "facebook/dinov3-vits16-pretrain-lvd1689m",
    "dinov3-vit7b16-sat": "facebook/dinov3-vit7b16-pretrain-sat493m",
}


# -- exporting -----------------------------------------------------------------------
def _timm_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`xchm.models.weights.hf_to_timm` (transformers 4.x key layout)."""
    renames = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.up_proj",
        "mlp.fc1_x": "mlp.up_proj",
        "mlp.fc1_g": "mlp.gate_proj",
        "mlp.fc2": "mlp.down_proj",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "cls_token":
            out["embeddings.cls_token"] = value
            out["embeddings.mask_token"] = torch.zeros_like(value)  # pretraining only
        elif key == "reg_token":
            out["embeddings.register_tokens"] = value
        elif key.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("norm."):
            out[key] = value
        elif m := re.match(r"^blocks\.(\d+)\.(.+)$", key):
            n, rest = m.group(1), m.group(2)
            if rest == "attn.qkv.weight":
                for name, part in zip("qkv", value.chunk(3), strict=True):
                    out[f"layer.{n}.attention.{name}_proj.weight"] = part
            elif rest in ("attn.q_bias", "attn.v_bias"):
                out[f"layer.{n}.attention.{rest[5]}_proj.bias"] = value
            elif rest in ("gamma_1", "gamma_2"):
                out[f"layer.{n}.layer_scale{rest[-1]}.lambda1"] = value
            elif (module := rest.rsplit(".", 1)[0]) in renames:
                out[f"layer.{n}.{renames[module]}.{rest.rsplit('.', 1)[1]}"] = value
            else:
                raise InputError(f"the backbone has {key!r}, which the reference's cannot hold")
        else:
            raise InputError(f"the backbone has {key!r}, which the reference's cannot hold")
    return out


def _refuse(model: Any) -> None:
    from xchm.models.decoder import CHMDecoder

    card = model.card
    reasons = []
    if not isinstance(getattr(model, "decoder", None), CHMDecoder):
        reasons.append(
            f"its decoder is a {type(getattr(model, 'decoder', None)).__name__}, "
            "not the reference's CNN decoder"
        )
    if card.feature_indices:
        reasons.append(
            f"it reads backbone blocks {card.feature_indices} (the reference: the last block only)"
        )
    if card.window != REFERENCE_WINDOW:
        reasons.append(f"its window is {card.window} px (the reference runs 64 only)")
    if card.num_bands != 3:
        reasons.append(f"it takes {card.num_bands} bands {card.bands} (the reference: 3)")
    if reasons:
        raise InputError(
            f"the reference's model cannot express this {card.preset} model: "
            + "; ".join(reasons)
            + ". Export a 3-band, 64 px model with the default decoder (multilevel=False)"
        )


def reference_state_dict(model: CanopyHeightModel) -> dict[str, torch.Tensor]:
    """Return the ``model_state_dict`` the reference's ``DINOv3DepthHead`` loads for ``model``.

    Backbone keys in transformers 4.x layout (``backbone.layer.N.*``, as the real
    checkpoints), decoder keys by the key table; xchm's convolutions have no bias, so
    the reference's get zero biases and the running means stay as they are (exact).

    Raises
    ------
    InputError
        If the reference cannot express the model (several backbone blocks, another
        window than 64, not 3 bands, another decoder).
    """
    _refuse(model)
    own = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    backbone = {k[9:]: v for k, v in own.items() if k.startswith("backbone.")}
    out = {f"backbone.{k}": v for k, v in _timm_to_hf(backbone).items()}
    convs, gates = key_table(model.decoder_spec)
    for ref_conv, own_conv, ref_bn, own_bn in convs:
        weight = own[f"{own_conv}.weight"]
        out[f"{ref_conv}.weight"] = weight
        # xchm's convs have no bias: the reference's is zero, the running mean stays.
        out[f"{ref_conv}.bias"] = torch.zeros_like(own[f"{own_bn}.running_mean"])
        for name in BN_TENSORS:
            out[f"{ref_bn}.{name}"] = own[f"{own_bn}.{name}"]
    for ref_gate, own_gate in gates:
        for k in ("1.weight", "1.bias", "3.weight", "3.bias"):
            out[f"{ref_gate}.{k}"] = own[f"{own_gate}.{k}"]
    out["depth_head.8.12.weight"] = own["decoder.output.weight"]
    out["depth_head.8.12.bias"] = own["decoder.output.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def reference_checkpoint(model: CanopyHeightModel) -> dict[str, Any]:
    """Return the dict the reference's training saves, for ``model`` (``torch.save`` it).

    Holds ``model_state_dict`` (:func:`reference_state_dict`), ``epoch``, the losses
    the card's provenance records, a ``model_config`` like the reference's and
    ``xchm_card`` (the card as JSON, so an import restores bands and statistics). No
    optimizer state: the reference's inference reads ``model_state_dict`` only.
    """
    state = reference_state_dict(model)
    card = model.card
    prov = dict(card.provenance)
    width = model.backbone.cls_token.shape[-1]
    tokens = 1 + model.backbone.reg_token.shape[1] + (card.window // 16) ** 2
    config = dict(prov.get("model_config") or {})
    config.update(
        model_name=config.get("model_name", _HF_NAMES.get(card.preset, card.preset)),
        embed_dim=int(width),
        total_tokens=int(tokens),
        description=config.get(
            "description", f"exported by xchm {__version__} from a {card.preset} model"
        ),
    )
    config.setdefault("model_type", "large" if card.preset == "dinov3-vitl16-sat" else card.preset)
    out: dict[str, Any] = {"epoch": int(prov["epoch"]) if isinstance(prov.get("epoch"), int) else 0}
    out["model_state_dict"] = state
    for key in ("train_loss", "val_loss", "val_mae"):
        if isinstance(prov.get(key), int | float):
            out[key] = float(prov[key])
    out["model_config"] = config
    out["xchm_card"] = json.dumps(card.to_dict(), sort_keys=True)
    return out


# -- files ---------------------------------------------------------------------------
def import_reference(
    source: PathOrURL,
    output: PathOrURL,
    *,
    overwrite: bool = False,
    bands: Any = None,
    statistics: Mapping[str, BandStats] | None = None,
    pixel_size: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Path | Location:
    """Convert a reference checkpoint once into an xchm checkpoint folder.

    Later loads (``xchm.load_model(output)``) read safetensors, need no transformers
    and skip the optimizer state. The folder is checked before the file is read.

    Parameters
    ----------
    source
        The reference's ``.pth`` (local path or URL).
    output
        The new checkpoint folder (local path or URL): new, empty, or with
        ``overwrite`` an xchm checkpoint; nothing else in it is touched.
    overwrite
        Replace an xchm checkpoint already at ``output``.
    bands, statistics, pixel_size, storage_options
        As for :func:`load_reference`.

    Returns
    -------
    Path or Location
        Where the checkpoint went (a ``Path`` for a local folder).

    Raises
    ------
    OutputExistsError
        ``output`` is a file, holds other files, or holds a checkpoint without ``overwrite``.
    WeightsError
        ``source`` is not a reference checkpoint.
    """
    from xchm.errors import OutputExistsError
    from xchm.models.checkpoint import is_checkpoint
    from xchm.outputs import shown

    where = location(output)
    if where.exists() and not where.is_dir():
        raise OutputExistsError(f"{shown(where)} is a file; give a folder for the checkpoint")
    if is_checkpoint(where):
        if not overwrite:
            raise OutputExistsError(
                f"{shown(where)} holds an xchm checkpoint; pass overwrite=True (CLI: "
                "--overwrite) to replace it"
            )
    elif where.is_dir() and where.listdir():
        raise OutputExistsError(
            f"{shown(where)} is not empty and not an xchm checkpoint; nothing in it is "
            "touched. Choose a new or empty folder"
        )
    model = load_reference(
        source,
        bands=bands,
        statistics=statistics,
        pixel_size=pixel_size,
        storage_options=storage_options,
    )
    return model.save(where if where.is_url else where.path)


def export_reference(
    model: CanopyHeightModel | PathOrURL,
    output: PathOrURL,
    *,
    overwrite: bool = False,
) -> Path | Location:
    """Write ``model`` as a reference checkpoint (see :func:`reference_checkpoint`).

    The reference's ``DINOv3DepthHead`` (transformers 4.x) loads its
    ``model_state_dict`` strictly; :func:`load_reference` reads it back.

    Parameters
    ----------
    model
        A model, or an xchm checkpoint folder (local path or URL).
    output
        The ``.pth`` file to write (local path or URL); its folder (bucket) must exist.
    overwrite
        Replace an existing file.

    Returns
    -------
    Path or Location
        The written file.

    Raises
    ------
    InputError
        The reference cannot express the model (several backbone blocks, a window
        other than 64 px, not 3 bands, another decoder); nothing is written.
    OutputExistsError
        ``output`` exists and ``overwrite`` is not set.
    """
    import tempfile

    from xchm.outputs import prepare_output_file, upload_file, write_atomic

    target = prepare_output_file(output, overwrite=overwrite, suffixes=(".pth", ".pt"))
    if not hasattr(model, "state_dict"):
        from xchm.models.network import load_checkpoint

        model = load_checkpoint(model)
    saved = reference_checkpoint(model)  # type: ignore[arg-type]
    if isinstance(target, Path):
        return write_atomic(target, lambda p: torch.save(saved, p))
    with tempfile.TemporaryDirectory(prefix="xchm-export-") as tmp:
        staged = Path(tmp) / "reference.pth"
        torch.save(saved, staged)
        return upload_file(staged, target, overwrite=overwrite)
