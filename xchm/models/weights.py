"""Read pretrained backbone weights offline, in Meta's, Hugging Face's or timm's layout.

Files are read without unpickling arbitrary objects: ``.safetensors`` with
safetensors, anything else with ``torch.load(weights_only=True)``. Meta's
layout is converted with timm's own DINOv3 filter; the Hugging Face layout
(``facebook/dinov3-*`` snapshot folders) has no converter in timm, so the small
key mapping lives here.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from xchm.errors import WeightsError
from xchm.models.backbone import Backbone, set_rope_periods

__all__ = ["read_tensors", "detect_layout", "load_backbone_weights", "hf_to_timm"]

_TORCH_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}
# Wrappers used by training frameworks around the actual state dict.
_WRAPPERS = ("model_ema", "teacher", "model", "state_dict", "module")
# Prefixes to strip when every key carries them.
_PREFIXES = ("module.", "backbone.", "model.", "encoder.")


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` dict from a weights file, safely.

    Raises
    ------
    WeightsError
        If the file is missing, unreadable, or holds something other than tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with warnings.catch_warnings():
            # Legacy (non-zip) pickles warn before the safe unpickler rejects or reads them.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise WeightsError(
            f"cannot read {str(path)!r} as a weights file ({type(err).__name__}: "
            f"{str(err)[:200]}); expected a PyTorch state dict (.pth, loaded with "
            "weights_only=True) or a .safetensors file"
        ) from err
    return _flatten(obj, path)


def _flatten(obj: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping):
        wrapped = [k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)]
        if not wrapped or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj = obj[wrapped[0]]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{str(path)!r} does not hold a state dict (got {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{str(path)!r} holds no tensors; expected a model state dict")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Return ``"meta"``, ``"hf"`` or ``"timm"`` for a DINOv3 backbone state dict."""
    keys = set(state_dict)
    if "storage_tokens" in keys or "blocks.0.ls1.gamma" in keys:
        return "meta"
    if "embeddings.register_tokens" in keys or "layer.0.attention.q_proj.weight" in keys:
        return "hf"
    if "reg_token" in keys and "blocks.0.attn.qkv.weight" in keys:
        return "timm"
    sample = sorted(keys)[:6]
    raise WeightsError(
        f"the tensors ({len(keys)} keys, e.g. {sample}) are not a DINOv3 backbone in Meta's "
        "layout (storage_tokens, blocks.N.ls1.gamma), Hugging Face's (embeddings.*, "
        "layer.N.attention.*) or timm's (reg_token, blocks.N.attn.qkv.weight)"
    )


# transformers >= 5 names layers "model.layer.N" in memory but saves "layer.N".
_HF_BLOCK = re.compile(r"^(?:model\.)?layer\.(\d+)\.(.+)$")
_HF_RENAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "gamma_1",
    "layer_scale2.lambda1": "gamma_2",
    "mlp.down_proj": "mlp.fc2",
    "mlp.gate_proj": "mlp.fc1_g",
}


def hf_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a Hugging Face ``DINOv3ViTModel`` state dict to timm's ``Eva`` keys."""
    out: dict[str, torch.Tensor] = {}
    gated = any(k.endswith("mlp.gate_proj.weight") for k in state_dict)
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key in ("embeddings.mask_token",) or "rope" in key:
            continue  # pretraining only / recomputed
        if key == "embeddings.cls_token":
            out["cls_token"] = value
        elif key == "embeddings.register_tokens":
            out["reg_token"] = value
        elif key.startswith("embeddings.patch_embeddings."):
            out["patch_embed.proj." + key.rsplit(".", 1)[-1]] = value
        elif key.startswith("norm."):
            out[key] = value
        elif m := _HF_BLOCK.match(key):
            idx, rest = int(m.group(1)), m.group(2)
            if (a := re.match(r"attention\.([qkv])_proj\.(weight|bias)$", rest)) is not None:
                qkv.setdefault(idx, {})[a.group(1) + a.group(2)] = value
                continue
            module, param = rest.rsplit(".", 1) if not rest.endswith("lambda1") else (rest, "")
            if module == "mlp.up_proj":
                target = "mlp.fc1_x" if gated else "mlp.fc1"
            elif module in _HF_RENAMES:
                target = _HF_RENAMES[module]
            else:
                raise WeightsError(f"unexpected key {key!r} in a Hugging Face DINOv3 state dict")
            out[f"blocks.{idx}.{target}" + (f".{param}" if param else "")] = value
        else:
            raise WeightsError(f"unexpected key {key!r} in a Hugging Face DINOv3 state dict")
    for idx, parts in qkv.items():
        out[f"blocks.{idx}.attn.qkv.weight"] = torch.cat(
            [parts["qweight"], parts["kweight"], parts["vweight"]]
        )
        if "kbias" in parts and torch.any(parts["kbias"] != 0):
            raise WeightsError(
                f"layer {idx} has a non-zero key bias; DINOv3 keeps the key bias at zero"
            )
        for name in ("q", "v"):
            if name + "bias" in parts:
                out[f"blocks.{idx}.attn.{name}_bias"] = parts[name + "bias"]
    return out


def _read_folder(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "card.json").is_file():
        raise WeightsError(
            f"{str(folder)!r} is an xchm checkpoint, not backbone weights; load it with "
            f"xchm.load_model({str(folder)!r})"
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as err:
            raise WeightsError(f"cannot read the shard index {str(index)!r}: {err}") from err
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(read_tensors(folder / shard))
        return tensors
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return read_tensors(folder / name)
    raise WeightsError(
        f"{str(folder)!r} holds no model.safetensors, sharded model-*.safetensors or "
        "pytorch_model.bin; pass the folder of a Hugging Face or timm snapshot, or a weights file"
    )


def _describe(state_dict: Mapping[str, torch.Tensor]) -> str:
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    patch = state_dict.get("patch_embed.proj.weight")
    width = patch.shape[0] if patch is not None else "?"
    return f"a {width}-wide, {len(blocks)}-block ViT"


def load_backbone_weights(backbone: Backbone, path: str | os.PathLike[str]) -> str:
    """Load pretrained weights into an RGB backbone from ``path``; return the layout found.

    Parameters
    ----------
    backbone
        A timm DINOv3 backbone with its 3-channel (RGB) patch embedding.
    path
        Meta's ``.pth`` file, a Hugging Face snapshot folder, or a timm checkpoint
        (file or folder).

    Raises
    ------
    WeightsError
        If the file is unreadable, in no known layout, or does not fit the backbone.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"weights path {str(path)!r} does not exist")
    tensors = _read_folder(path) if path.is_dir() else read_tensors(path)
    layout = detect_layout(tensors)
    periods = None
    if layout == "meta":
        from timm.models.eva import checkpoint_filter_fn

        periods = tensors.get("rope_embed.periods")
        state = checkpoint_filter_fn(dict(tensors), backbone)
    elif layout == "hf":
        state = hf_to_timm(tensors)
    else:
        state = {k: v for k, v in tensors.items() if not k.startswith("rope.")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        if wrong:
            k = wrong[0]
            details.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        raise WeightsError(
            f"weights in {str(path)!r} ({layout} layout, {_describe(state)}) do not fit this "
            f"backbone ({_describe(own)}): " + "; ".join(details) + ". Check that the file "
            "matches the preset (e.g. ViT-L/16 SAT-493M for dinov3-vitl16-sat)."
        )
    backbone.load_state_dict(state, strict=True)
    if periods is not None:
        set_rope_periods(backbone, periods.float())
    return layout
