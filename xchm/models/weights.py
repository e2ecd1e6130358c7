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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from xchm.errors import WeightsError
from xchm.models.backbone import Backbone, set_rope_periods

__all__ = [
    "read_tensors",
    "check_weights_file",
    "detect_layout",
    "load_backbone_weights",
    "load_backbone_tensors",
    "read_weights",
    "hf_to_timm",
]

_TORCH_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}
# Wrappers used by training frameworks around the actual state dict.
_WRAPPERS = ("model_ema", "teacher", "model", "state_dict", "module")
# Prefixes to strip when every key carries them.
_PREFIXES = ("module.", "backbone.", "model.", "encoder.")


_EXPECTED = (
    "expected a PyTorch state dict (.pth/.pt/.bin/.ckpt, read with torch.load(weights_only=True)) "
    "or a .safetensors file"
)


def _describe_bytes(path: Path) -> str:
    """Say what a file that failed to load looks like (its first bytes), for the message."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
        size = path.stat().st_size
    except OSError as err:
        return f"it cannot be opened ({err.strerror or err})"
    if not head:
        return "it is empty (0 bytes)"
    if head.startswith(b"PK\x03\x04"):
        return f"it is a zip archive of {size} bytes but not a complete PyTorch file"
    if head[:1] == b"\x80":
        return f"it is a pickle of {size} bytes but not a complete PyTorch file (torch.save)"
    if len(head) >= 9 and head[8:9] == b"{":
        return f"it starts like a safetensors file ({size} bytes) but is truncated or corrupt"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""  # (a multi-byte character cut at 64 bytes reads as binary: good enough)
    if text and all(c.isprintable() or c in "\t\n\r" for c in text):
        return f"it is a text file ({size} bytes, starts with {text[:24]!r})"
    return f"it is {size} bytes of an unknown format (starts with {head[:16]!r})"


def check_weights_file(path: str | Path) -> None:
    """Refuse early a file that cannot be weights, from its first bytes only.

    For callers that read the weights later (on a Dask worker): a text file, an
    empty file or an unknown format is reported before any work. A folder (a
    Hugging Face snapshot) and a damaged file of a known format are left to
    :func:`read_tensors`.

    Raises
    ------
    WeightsError
        If the file does not start like a PyTorch (zip or pickle) or safetensors file.
    """
    path = Path(path)
    if path.is_dir():
        return
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as err:
        raise WeightsError(f"cannot read {str(path)!r}: {err.strerror or err}") from err
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or head[8:9] == b"{":
        return
    raise WeightsError(
        f"cannot read {str(path)!r} as a weights file: {_describe_bytes(path)}; {_EXPECTED}"
    )


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` dict from a weights file, safely.

    Raises
    ------
    WeightsError
        If the file is missing, unreadable, or holds something other than tensors;
        the message names the file, what it looks like and what was expected.
    """
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"weights file {str(path)!r} is a directory; {_EXPECTED}")
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    try:
        if path.stat().st_size == 0:
            raise WeightsError(f"cannot read {str(path)!r}: it is empty (0 bytes); {_EXPECTED}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():
                # Legacy (non-zip) pickles warn before the safe unpickler rejects or reads them.
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except (WeightsError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:
        # Foreign bytes make these readers raise almost anything (KeyError: 101 for a
        # text file, SafetensorError, UnpicklingError, zip and struct errors...).
        what = _describe_bytes(path)
        refused = isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err)
        if refused and what.startswith(("it is a pickle", "it is a zip")):
            what = "it holds objects other than tensors, which are not unpickled (weights_only)"
        raise WeightsError(
            f"cannot read {str(path)!r} as a weights file: {what} ({type(err).__name__}: "
            f"{str(err)[:200]}); {_EXPECTED}"
        ) from err
    return _flatten(obj, path)


def _flatten(obj: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping):
        wrapped = [k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)]
        if not wrapped or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj = obj[wrapped[0]]
    if not isinstance(obj, Mapping) or not obj:
        what = "an empty dict" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise WeightsError(
            f"{str(path)!r} holds {what}, not a state dict; expected a mapping of parameter "
            "names to tensors"
        )
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(
            f"{str(path)!r} holds no tensors (keys {list(obj)[:5]}); expected a model state dict"
        )
    odd = [k for k in tensors if not isinstance(k, str)]
    if odd:
        raise WeightsError(
            f"{str(path)!r} holds tensors under keys that are not parameter names (e.g. "
            f"{odd[0]!r}); expected a state dict keyed by names such as 'blocks.0.norm1.weight'"
        )
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
        absent = [f"{n}_proj.weight" for n in "qkv" if n + "weight" not in parts]
        if absent:
            raise WeightsError(
                f"layer {idx} of the Hugging Face DINOv3 state dict lacks attention.{absent[0]}: "
                "the file is incomplete (every layer has q_proj, k_proj and v_proj weights)"
            )
        q, k, v = parts["qweight"], parts["kweight"], parts["vweight"]
        if not q.shape == k.shape == v.shape or q.ndim != 2:
            raise WeightsError(
                f"layer {idx} has attention projections of shapes {tuple(q.shape)}, "
                f"{tuple(k.shape)}, {tuple(v.shape)}; expected three equal (width, width) matrices"
            )
        out[f"blocks.{idx}.attn.qkv.weight"] = torch.cat([q, k, v])
        if "kbias" in parts and torch.any(parts["kbias"] != 0):
            raise WeightsError(
                f"layer {idx} has a non-zero key bias; DINOv3 keeps the key bias at zero"
            )
        for name in ("q", "v"):
            if name + "bias" in parts:
                out[f"blocks.{idx}.attn.{name}_bias"] = parts[name + "bias"]
    return out


def _read_index(index: Path) -> list[str]:
    """Shard file names of a Hugging Face ``model.safetensors.index.json``."""
    expected = (
        'expected a JSON object with a "weight_map" from tensor names to shard file names '
        "in the same folder (as Hugging Face writes it)"
    )
    try:
        data = json.loads(index.read_bytes())
    except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise WeightsError(
            f"cannot read the shard index {str(index)!r}: {err}; {expected}"
        ) from err
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsError(f"the shard index {str(index)!r} has no weight_map; {expected}")
    shards = set(weight_map.values())
    bad = sorted(repr(s) for s in shards if not isinstance(s, str) or Path(s).name != s or not s)
    if bad:
        raise WeightsError(
            f"the shard index {str(index)!r} names shards that are not file names in its folder "
            f"({', '.join(bad[:3])}); {expected}"
        )
    return sorted(shards)


def _read_folder(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "card.json").is_file():
        raise WeightsError(
            f"{str(folder)!r} is an xchm checkpoint, not backbone weights; load it with "
            f"xchm.load_model({str(folder)!r})"
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        tensors: dict[str, torch.Tensor] = {}
        for shard in _read_index(index):
            if not (folder / shard).is_file():
                raise WeightsError(
                    f"the shard index {str(index)!r} lists {shard!r}, which is not in the folder: "
                    "the snapshot is incomplete; download the missing shard"
                )
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


def _meta_to_timm(tensors: Mapping[str, torch.Tensor], backbone: Backbone) -> dict[str, Any]:
    """Meta's key names to timm's, with timm's own DINOv3 filter."""
    from timm.models.eva import checkpoint_filter_fn

    try:
        return checkpoint_filter_fn(dict(tensors), backbone)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # tensors of odd shapes fail inside timm's resampling and splits
        raise WeightsError(
            f"Meta-layout tensors that timm's DINOv3 converter cannot map "
            f"({type(err).__name__}: {str(err)[:200]})"
        ) from err


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the tensors of a weights file or of a snapshot folder (see :func:`read_tensors`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise WeightsError(f"weights path {str(path)!r} does not exist")
    return _read_folder(path) if path.is_dir() else read_tensors(path)


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
    return load_backbone_tensors(backbone, read_weights(path), str(Path(path).expanduser()))


def load_backbone_tensors(
    backbone: Backbone, tensors: Mapping[str, torch.Tensor], where: str
) -> str:
    """Load backbone tensors read from ``where`` (named in errors); return their layout.

    See :func:`load_backbone_weights`, which reads them from a file or folder.
    """
    path = where
    try:
        layout = detect_layout(tensors)
        periods = None
        if layout == "meta":
            periods = tensors.get("rope_embed.periods")
            state = _meta_to_timm(tensors, backbone)
        elif layout == "hf":
            state = hf_to_timm(tensors)
        else:
            state = {k: v for k, v in tensors.items() if not k.startswith("rope.")}
    except WeightsError as err:
        raise WeightsError(f"weights in {str(path)!r}: {err}") from err
    own = backbone.state_dict()
    missing, unexpected, wrong = compare_state(state, own)
    if periods is not None and periods.shape != backbone.rope.periods.shape:
        wrong.append(
            ("rope_embed.periods", tuple(periods.shape), tuple(backbone.rope.periods.shape))
        )
    not_float = sorted(k for k in state if not state[k].is_floating_point())
    if not_float:
        k = not_float[0]
        raise WeightsError(
            f"weights in {str(path)!r} hold {len(not_float)} non-float tensors (e.g. {k}: "
            f"{state[k].dtype}); expected the floating-point parameters of a DINOv3 backbone"
        )
    if missing or unexpected or wrong:
        raise WeightsError(
            f"weights in {str(path)!r} ({layout} layout, {_describe(state)}) do not fit this "
            f"backbone ({_describe(own)}): "
            + mismatch_details(missing, unexpected, wrong)
            + ". Check that the file "
            "matches the preset (ViT-L/16 SAT-493M for dinov3-vitl16-sat and chmv2)."
        )
    backbone.load_state_dict(state, strict=True)
    if periods is not None:
        set_rope_periods(backbone, periods.float())
    return layout


def compare_state(
    tensors: Mapping[str, Any], own: Mapping[str, Any]
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """Return the keys ``tensors`` lacks, the keys it has in excess, and shape mismatches.

    Mismatches are ``(key, file shape, model shape)``; all three lists are sorted.
    """
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [
        (k, tuple(tensors[k].shape), tuple(own[k].shape))
        for k in sorted(set(own) & set(tensors))
        if tensors[k].shape != own[k].shape
    ]
    return missing, unexpected, wrong


def mismatch_details(
    missing: list[str],
    unexpected: list[str],
    wrong: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    extra: Sequence[str] = (),
) -> str:
    """Say in one line how a state dict differs from a model's (``compare_state``'s lists).

    ``extra`` are further problems, in words, added at the end.
    """
    details = []
    if wrong:
        k, theirs, ours = wrong[0]
        details.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {theirs}, model {ours})")
    if missing:
        details.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    return "; ".join([*details, *extra])
