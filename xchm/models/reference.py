"""The reference project's trained checkpoints as xchm models, and back.

The reference project (nasa-nccs-hpda/CHM_DINOv3 and its production copy
above-shrubs) saves its trained models with ``torch.save`` as a dict: the model's
``model_state_dict`` (the Hugging Face ``DINOv3ViTModel`` backbone under
``backbone.``, the CNN decoder under ``depth_head.``), the optimizer's state, losses
and a ``model_config``. Its decoder is xchm's layer for layer, except that each
convolution feeding a BatchNorm has a bias where xchm's has none: in eval mode
``BN(Wx + b)`` with running mean ``mu`` equals ``BN(Wx)`` with running mean
``mu - b``, so each bias is folded into that BatchNorm's running mean (exact; without
it heights are off by metres). The backbone goes through the Hugging Face to timm
mapping of :mod:`xchm.models.weights` (both ``backbone.layer.N`` of transformers 4.x
and ``backbone.model.layer.N`` of 5.x); its patch embedding is taken as saved (the
reference adapted it to NIR, red, green before training: ``band_map="reference"``).

The key table (:func:`key_table`) is written here because no library knows either
model; it is the one place both directions read (:func:`load_reference` here, the
export in :mod:`xchm.models.reference_io`, which also converts files: ``xchm models
import`` / ``export``).
Files are read with ``torch.load(weights_only=True)``: no object is unpickled. The
one exception to plain types that the reference's files may hold, NumPy scalars in
the metrics (``np.float64`` from a NumPy mean), is allowed by name (numbers only).
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from xchm.errors import BandError, InputError, WeightsError
from xchm.models.bands import REFERENCE_BANDS, normalize_bands
from xchm.models.card import BandStats, ModelCard
from xchm.models.presets import PRESETS, DecoderSpec
from xchm.models.weights import _describe_bytes, hf_to_timm
from xchm.storage import Location, PathOrURL, location

if TYPE_CHECKING:
    from xchm.models.network import CanopyHeightModel

__all__ = [
    "REFERENCE_SUFFIXES",
    "read_reference",
    "load_reference",
    "load_model_file",
    "key_table",
]

#: File suffixes of ``torch.save`` files (a URL with one of them is read as a file).
REFERENCE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
#: The reference runs 64 x 64 windows only (its forward raises on anything else).
REFERENCE_WINDOW = 64
_EXPECTED = (
    "expected a reference checkpoint: a torch.save dict with 'model_state_dict' holding "
    "the DINOv3 backbone under 'backbone.' and the CNN decoder under 'depth_head.'"
)
# Presets the reference's backbone can be (its own is ViT-L/16 SAT-493M), by priority.
_CANDIDATES = ("dinov3-vitl16-sat", "dinov3-vits16", "dinov3-vit7b16-sat", "test-tiny")
BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# NumPy scalars (a metric from np.mean) are the only non-plain values allowed in a file.
_NUMPY_NAMES = re.compile(r"^numpy\.(_?core\.multiarray\.scalar|dtype)$")


# -- reading -------------------------------------------------------------------------
def _numpy_globals() -> list[Any]:
    """NumPy's scalar constructor, ``dtype`` and its numeric dtype classes (never objects)."""
    import numpy as np

    numeric = [
        cls
        for name in dir(np.dtypes)
        if name.endswith("DType")
        and isinstance(cls := getattr(np.dtypes, name), type)
        and issubclass(getattr(cls, "type", object), np.number | np.bool_)
    ]
    scalar = np._core.multiarray.scalar  # type: ignore[attr-defined]
    # Files pickled under NumPy 1.x name the constructor numpy.core.multiarray.scalar.
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *numeric]


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)``, memory-mapped when the file allows it."""
    with path.open("rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
        except pickle.UnpicklingError as err:
            if "weights_only" not in str(err):
                raise
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            if not unsafe or not all(_NUMPY_NAMES.match(n) for n in unsafe):
                others = [n for n in unsafe if not _NUMPY_NAMES.match(n)] or unsafe
                raise WeightsError(
                    f"{str(path)!r} holds objects other than tensors, numbers and strings "
                    f"({', '.join(others[:4]) or 'unknown'}), which are not unpickled "
                    f"(weights_only); {_EXPECTED}"
                ) from err
            with torch.serialization.safe_globals(_numpy_globals()):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)


def _plain(value: Any) -> Any:
    """Return a JSON value for the card's provenance (NumPy, 0-d tensors: numbers)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if _plain(v) is not _SKIP}
    return _SKIP


_SKIP = object()


def read_reference(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a reference checkpoint: its ``model_state_dict`` and its other plain entries.

    Parameters
    ----------
    path
        A local ``.pth`` file written by the reference's training.

    Returns
    -------
    tuple of (dict, dict)
        The state dict (keys as saved, ``module.`` stripped) and the file's numbers,
        strings and ``model_config`` (losses, epoch...; lists and the optimizer's state
        are left out).

    Raises
    ------
    WeightsError
        If the file is unreadable, holds objects (never unpickled), or is not a
        reference checkpoint; the message says what it holds and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"reference checkpoint {str(path)!r} does not exist or is a folder")
    try:
        obj = _torch_load(path)
    except (WeightsError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as err:  # foreign or cut bytes make torch raise almost anything
        raise WeightsError(
            f"cannot read {str(path)!r}: {_describe_bytes(path)} ({type(err).__name__}: "
            f"{str(err)[:160]}); {_EXPECTED} (backbone weights go to a preset: weights=PATH)"
        ) from err
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{str(path)!r} holds a {type(obj).__name__}, not a dict; {_EXPECTED}")
    state = obj.get("model_state_dict")
    if not isinstance(state, Mapping):
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            raise WeightsError(
                f"{str(path)!r} holds a bare state dict ({len(obj)} tensors), not a reference "
                "checkpoint; xchm checkpoints are directories (load the folder with "
                "card.json), and backbone weights go to a preset: xchm.load_model("
                f"'dinov3-vitl16-sat', weights={str(path)!r})"
            )
        found = "is not a dict" if "model_state_dict" in obj else "is missing"
        raise WeightsError(
            f"{str(path)!r} holds a dict with keys {sorted(map(str, obj))[:8]} whose "
            f"'model_state_dict' {found}; {_EXPECTED}"
        )
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if len(tensors) != len(state):
        raise WeightsError(
            f"'model_state_dict' of {str(path)!r} holds {len(state) - len(tensors)} entries "
            f"that are not named tensors; {_EXPECTED}"
        )
    if tensors and all(k.startswith("module.") for k in tensors):  # saved from DataParallel
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    meta = {
        str(k): plain
        for k, v in obj.items()
        if k not in ("model_state_dict", "optimizer_state_dict")
        and (plain := _plain(v)) is not _SKIP
    }
    return tensors, meta


# -- the key table -------------------------------------------------------------------
def key_table(spec: DecoderSpec) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str]]]:
    """Return the key table of a decoder with ``spec``.

    Pairs of (reference conv, xchm conv, reference BN, xchm BN) and of (reference SE,
    xchm SE) prefixes; the output conv is ``depth_head.8.12`` / ``decoder.output``.
    """
    convs: list[tuple[str, str, str, str]] = []
    gates: list[tuple[str, str]] = []
    for i in range(len(spec.widths)):
        ref, own = f"depth_head.{2 * i}", f"decoder.stages.{i}"
        convs.append((f"{ref}.0", f"{own}.0", f"{ref}.1", f"{own}.1"))
        for j in range(2):
            r, o = f"depth_head.{2 * i + 1}.{j}", f"decoder.stages.{i}.{4 + j}.body"
            convs.append((f"{r}.conv1", f"{o}.0", f"{r}.bn1", f"{o}.1"))
            convs.append((f"{r}.conv2", f"{o}.4", f"{r}.bn2", f"{o}.5"))
            if i in spec.attention_stages:
                gates.append((f"{r}.attention.attention", f"{o}.6.gate"))
    for r, o in (("0", "1"), ("5", "6"), ("9", "10")):
        convs.append(
            (f"depth_head.8.{r}", f"decoder.head.{r}", f"depth_head.8.{o}", f"decoder.head.{o}")
        )
    gates.append(("depth_head.8.4.attention", "decoder.head.4.gate"))
    return convs, gates


def _decoder_spec(dec: Mapping[str, torch.Tensor], where: str) -> DecoderSpec:
    """Read the decoder's widths, attention stages and SE reduction from tensor shapes."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in dec:
            raise WeightsError(
                f"{where} lacks {key}: its decoder is not the reference's (four upsampling "
                "stages depth_head.0/2/4/6, residual blocks depth_head.1/3/5/7, head "
                "depth_head.8); " + _EXPECTED
            )
        return tuple(dec[key].shape)

    widths = tuple(shape(f"depth_head.{2 * i}.0.weight")[1] for i in range(4))
    head = tuple(shape(f"depth_head.8.{k}.weight")[0] for k in (0, 5, 9))
    attention = tuple(
        i for i in range(4) if f"depth_head.{2 * i + 1}.0.attention.attention.1.weight" in dec
    )
    # (channels, hidden channels) of each squeeze-and-excitation; xchm's decoder has one
    # reduction r with hidden = max(channels // r, 1): take one that fits them all.
    gates = [(head[0], shape("depth_head.8.4.attention.1.weight")[0])] + [
        (widths[i], shape(f"depth_head.{2 * i + 1}.0.attention.attention.1.weight")[0])
        for i in attention
    ]
    fits = [
        r
        for r in range(1, max(c for c, _ in gates) + 1)
        if all(max(c // r, 1) == h for c, h in gates)
    ]
    if not fits:
        raise WeightsError(
            f"{where}: its channel attentions have (channels, hidden) {gates}: no single "
            "reduction fits them all, and xchm's decoder uses one"
        )
    reduction = 16 if 16 in fits else fits[0]
    return DecoderSpec(
        widths=widths,
        head_widths=(head[0], head[1], head[2]),
        attention_stages=attention,
        se_reduction=reduction,
    )


def _decoder_from_reference(
    dec: Mapping[str, torch.Tensor], where: str
) -> tuple[DecoderSpec, dict[str, torch.Tensor]]:
    """Map ``depth_head.*`` to ``decoder.*``, folding each conv bias into its BatchNorm."""
    spec = _decoder_spec(dec, where)
    convs, gates = key_table(spec)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in dec:
            raise WeightsError(f"{where} lacks {key} (a decoder tensor); {_EXPECTED}")
        used.add(key)
        return dec[key]

    for ref_conv, own_conv, ref_bn, own_bn in convs:
        out[f"{own_conv}.weight"] = take(f"{ref_conv}.weight")
        for name in BN_TENSORS:
            out[f"{own_bn}.{name}"] = take(f"{ref_bn}.{name}")
        bias = take(f"{ref_conv}.bias")
        out[f"{own_bn}.running_mean"] = _fold(out[f"{own_bn}.running_mean"], bias)
    for ref_gate, own_gate in gates:
        for k in ("1.weight", "1.bias", "3.weight", "3.bias"):
            out[f"{own_gate}.{k}"] = take(f"{ref_gate}.{k}")
    out["decoder.output.weight"] = take("depth_head.8.12.weight")
    out["decoder.output.bias"] = take("depth_head.8.12.bias")
    extra = sorted(set(dec) - used)
    if extra:
        raise WeightsError(
            f"{where} has {len(extra)} decoder tensors the reference's decoder does not have "
            f"(e.g. {extra[:3]}); {_EXPECTED}"
        )
    return spec, out


def _fold(running_mean: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Return the running mean that makes a bias-free conv + BN equal one with ``bias``."""
    return running_mean - bias


def _pick_preset(backbone: Mapping[str, torch.Tensor], where: str) -> str:
    width = backbone["cls_token"].shape[-1] if "cls_token" in backbone else None
    depth = len({k.split(".")[1] for k in backbone if k.startswith("blocks.")})
    for name in _CANDIDATES:
        preset = PRESETS.get(name)
        if preset is not None and (preset.embed_dim, preset.depth) == (width, depth):
            return name
    known = ", ".join(
        f"{n} ({PRESETS[n].embed_dim}, {PRESETS[n].depth})" for n in _CANDIDATES if n in PRESETS
    )
    raise WeightsError(
        f"{where} holds a {width}-wide, {depth}-block backbone; xchm knows these DINOv3 "
        f"backbones (width, blocks): {known}"
    )


# -- loading -------------------------------------------------------------------------
def load_reference(
    source: PathOrURL,
    *,
    bands: Any = None,
    statistics: Mapping[str, BandStats] | None = None,
    window: int | None = None,
    pixel_size: float | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> CanopyHeightModel:
    """Build the xchm model equal to a reference checkpoint (``best_dinov3_*.pth``).

    Parameters
    ----------
    source
        The reference's ``torch.save`` file: a local path or a URL (fetched once per
        machine into the download cache).
    bands
        The bands it was trained on (default NIR, red, green, as the reference).
    statistics
        Normalisation statistics per band (default the reference's).
    window
        Window size in pixels (default the file's: 64 for the reference, which trained
        and ran 64 px windows only).
    pixel_size
        Ground sampling distance in metres (default 2.0, the reference's).
    storage_options
        Options of the URL's storage backend.

    Returns
    -------
    CanopyHeightModel
        In eval mode; its card's provenance names the file, its SHA-256, the epoch,
        losses and ``model_config`` found in it.

    Raises
    ------
    WeightsError
        If the file is not a reference checkpoint or its tensors do not fit.
    """
    from xchm.models.backbone import adapt_patch_embed, build_backbone
    from xchm.models.checkpoint import file_sha256
    from xchm.models.network import assemble
    from xchm.models.presets import get_preset

    where = location(source, storage_options)
    if where.is_url:
        from xchm.storage import fetch_version

        path, digest = fetch_version(where)  # once per machine and version of the file
        tensors, meta = read_reference(path)
    else:
        path = Path(where.text).expanduser()
        tensors, meta = read_reference(path)  # before hashing: a wrong file fails at once
        digest = file_sha256(path)
    name = repr(where.text)
    backbone_sd = {k[9:]: v for k, v in tensors.items() if k.startswith("backbone.")}
    decoder_sd = {k: v for k, v in tensors.items() if k.startswith("depth_head.")}
    other = sorted(set(tensors) - {f"backbone.{k}" for k in backbone_sd} - set(decoder_sd))
    if not backbone_sd or not decoder_sd or other:
        prefixes = sorted({k.split(".")[0] + "." for k in tensors})
        raise WeightsError(
            f"{name}'s model_state_dict has {len(tensors)} tensors under {prefixes}; {_EXPECTED}"
        )
    try:
        timm_sd = hf_to_timm(backbone_sd)
    except WeightsError as err:
        raise WeightsError(f"the backbone in {name}: {err}") from err
    preset = _pick_preset(timm_sd, name)
    spec, decoder = _decoder_from_reference(decoder_sd, name)
    card = _card(preset, meta, bands, statistics, window, pixel_size, where, digest)
    backbone = build_backbone(get_preset(preset), card.window, empty=True)
    adapt_patch_embed(backbone, card.band_map)  # a 3-band shell; the saved tensor goes in
    model = assemble(backbone, card, decoder_spec=spec)
    state = {f"backbone.{k}": v for k, v in timm_sd.items()} | decoder
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise WeightsError(
            f"the tensors of {name} do not fit a {preset} model with {card.num_bands} bands: "
            f"{' '.join(str(err).split())[:400]}"
        ) from err
    return model.eval()


def load_model_file(
    source: PathOrURL,
    *,
    weights: Any,
    bands: Any,
    band_map: Any,
    statistics: Any,
    multilevel: bool,
    window: int | None,
    pixel_size: float | None,
    storage_options: Mapping[str, Any] | None,
) -> CanopyHeightModel:
    """Load ``xchm.load_model(FILE)``: a reference checkpoint, with its options checked.

    ``window`` and ``pixel_size`` None take the file's (64 px and 2 m for the reference).
    """
    given = [k for k, v in (("weights", weights), ("band_map", band_map)) if v is not None]
    given += ["multilevel"] if multilevel else []
    if given:
        raise InputError(
            f"{given} cannot change the reference checkpoint {location(source).text!r}: its "
            "backbone, patch embedding and decoder come from the file (bands=, statistics=, "
            "window= and pixel_size= may be given)"
        )
    return load_reference(
        source,
        bands=bands,
        statistics=statistics,
        window=window,
        pixel_size=pixel_size,
        storage_options=storage_options,
    )


def _aligned(names: tuple[str, ...], statistics: Any) -> tuple[BandStats, ...] | None:
    """Statistics per band in ``names`` order, from ``{band: stats}`` or a sequence."""
    if statistics is None:
        return None
    if isinstance(statistics, Mapping):
        given = {normalize_bands([k])[0]: v for k, v in statistics.items()}
        if set(given) != set(names):
            raise BandError(f"statistics must cover exactly the bands {names}; got {sorted(given)}")
        statistics = [given[b] for b in names]
    return tuple(
        s
        if isinstance(s, BandStats)
        else BandStats(**s)
        if isinstance(s, Mapping)
        else BandStats(clip_max=s[0], mean=s[1], std=s[2])
        for s in statistics
    )


def _card(
    preset: str,
    meta: Mapping[str, Any],
    bands: Any,
    statistics: Mapping[str, BandStats] | None,
    window: int | None,
    pixel_size: float | None,
    where: Location,
    digest: str,
) -> ModelCard:
    """Build the card: the reference's data contract, or the one an xchm export carried."""
    saved: dict[str, Any] = {}
    if isinstance(meta.get("xchm_card"), str):  # written by reference_checkpoint()
        try:
            saved = ModelCard.from_dict(json.loads(meta["xchm_card"])).to_dict()
        except (ValueError, WeightsError) as err:
            raise WeightsError(f"the xchm_card in {where.text!r} is invalid: {err}") from err
    names = (
        normalize_bands(bands) if bands is not None else tuple(saved.get("bands", REFERENCE_BANDS))
    )
    stats = _aligned(names, statistics)
    if stats is None and saved.get("statistics") and tuple(saved["bands"]) == names:
        stats = tuple(BandStats(**s) for s in saved["statistics"])
    band_map = tuple(saved["band_map"]) if saved and tuple(saved["bands"]) == names else "reference"
    if band_map == "reference" and names != REFERENCE_BANDS:
        band_map = ()  # provenance only: the saved patch embedding is used either way
    provenance: dict[str, Any] = {
        "source": "reference checkpoint",
        "weights": where.name,
        "weights_sha256": digest,
        **{k: v for k, v in meta.items() if k != "xchm_card"},
    }
    if where.is_url:
        provenance["weights_url"] = where.text
    if saved.get("provenance"):
        provenance["xchm_provenance"] = saved["provenance"]
    return ModelCard(
        preset=preset,
        bands=names,
        statistics=stats,
        statistics_source=saved.get("statistics_source", "") if stats is not None and saved else "",
        band_map=band_map,  # type: ignore[arg-type]
        window=window if window is not None else saved.get("window", REFERENCE_WINDOW),
        pixel_size=pixel_size if pixel_size is not None else saved.get("pixel_size", 2.0),
        provenance=provenance,
    )
