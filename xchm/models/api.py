"""Public entry points: list presets, create or load a canopy height model.

This module imports torch only inside its functions, so ``import xchm`` stays light.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xchm.errors import (
    BandError,
    InputError,
    ModelNotFoundError,
    RandomWeightsWarning,
    WeightsError,
)
from xchm.models.bands import normalize_bands, resolve_band_map
from xchm.models.card import BandStats, ModelCard
from xchm.models.presets import DECODER_KINDS, PRESETS, DecoderSpec, Preset, get_preset
from xchm.storage import Location, PathOrURL, location

if TYPE_CHECKING:
    from xchm.models.network import CanopyHeightModel

__all__ = ["list_models", "model_info", "create_model", "load_model", "is_checkpoint"]

#: Initial output bias in metres: the 90th percentile of the reference's labels.
DEFAULT_OUTPUT_BIAS = 8.42

StatisticsLike = (
    Mapping[str, BandStats | Mapping[str, float] | Sequence[float]] | Sequence[BandStats]
)
#: What ``decoder=`` takes: a kind of :data:`~xchm.models.presets.DECODER_KINDS` or a spec.
DecoderLike = str | DecoderSpec


def list_models() -> list[str]:
    """Return the names of the model presets.

    Examples
    --------
    >>> "dinov3-vitl16-sat" in list_models()
    True
    """
    return sorted(PRESETS)


def model_info(name: str) -> dict[str, Any]:
    """Describe a preset, counting its parameters without allocating them (meta device).

    Examples
    --------
    >>> info = model_info("test-tiny")
    >>> info["bands"], info["backbone_parameters"] > 0
    (('nir', 'red', 'green'), True)
    """
    import torch

    preset = get_preset(name)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        model = create_model(name)
    return {
        "name": name,
        "backbone": preset.timm_name
        + (f".{preset.pretrained_tag}" if preset.pretrained_tag else ""),
        "backbone_parameters": model.num_parameters("backbone"),
        "decoder_parameters": model.num_parameters("decoder"),
        "bands": model.card.bands,
        "window": model.card.window,
        "summary": preset.summary,
        "notes": preset.notes,
    }


def _statistics(
    bands: tuple[str, ...], statistics: StatisticsLike | None
) -> tuple[BandStats, ...] | None:
    if statistics is None:
        return None

    def as_stats(value: Any) -> BandStats:
        if isinstance(value, BandStats):
            return value
        if isinstance(value, Mapping):
            return BandStats(**value)
        clip_max, mean, std = value
        return BandStats(clip_max=clip_max, mean=mean, std=std)

    if isinstance(statistics, Mapping):
        given = {normalize_bands([k])[0]: v for k, v in statistics.items()}
        missing = [b for b in bands if b not in given]
        extra = sorted(set(given) - set(bands))
        if missing or extra:
            raise BandError(
                f"statistics must cover exactly the bands {bands}: missing {missing}, "
                f"not a band {extra}"
            )
        return tuple(as_stats(given[b]) for b in bands)
    stats = tuple(as_stats(v) for v in statistics)
    if len(stats) != len(bands):
        raise BandError(f"got {len(stats)} statistics for {len(bands)} bands {bands}")
    return stats


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    import torch

    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _file_identity(path: Path) -> dict[str, Any]:
    from xchm.models.checkpoint import file_sha256

    info: dict[str, Any] = {"weights": path.name}
    if path.is_file() and path.stat().st_size < (4 << 30):
        info["weights_sha256"] = file_sha256(path)
    return info


def _local_source(source: PathOrURL, role: str) -> tuple[Path, dict[str, Any]]:
    """Return a weights path or URL as a local path (URLs fetched once) and provenance."""
    if location(source).is_url:
        from xchm.storage import fetch_version

        where = location(source)
        path, digest = fetch_version(where)  # once per machine and version of the file
        return Path(path), {role: where.name, f"{role}_sha256": digest, f"{role}_url": where.text}
    path = Path(str(source)).expanduser()
    return path, {f"{role}{k[len('weights') :]}": v for k, v in _file_identity(path).items()}


def _resolve_decoder(spec: Preset, decoder: DecoderLike | None) -> DecoderSpec | None:
    """Return the decoder of ``decoder=`` for the preset ``spec`` (None: the preset's default).

    Raises
    ------
    InputError
        Neither a kind of ``DECODER_KINDS`` nor a :class:`DecoderSpec` (the message lists
        the choices), or a decoder choice for a preset with a DPT head (CHMv2).
    """
    if decoder is None:
        return None
    if isinstance(decoder, DecoderSpec):
        if spec.dpt is not None:
            spec.decoder_spec(decoder.kind)  # raises: a DPT head is fixed
        return decoder
    if not isinstance(decoder, str):
        raise InputError(
            f"decoder must be one of {list(DECODER_KINDS)} or a DecoderSpec, got "
            f"{type(decoder).__name__} {decoder!r}"
        )
    return spec.decoder_spec(decoder)  # raises for an unknown kind or a DPT preset


def create_model(
    preset: str,
    *,
    weights: PathOrURL | None = None,
    backbone_weights: PathOrURL | None = None,
    bands: Sequence[str] | None = None,
    band_map: Mapping[str, int | str] | Sequence[int | str] | str | None = None,
    statistics: StatisticsLike | None = None,
    multilevel: bool = False,
    window: int | None = None,
    pixel_size: float | None = None,
    output_bias: float = DEFAULT_OUTPUT_BIAS,
    seed: int | None = None,
    decoder: DecoderLike | None = None,
) -> CanopyHeightModel:
    """Build a new (untrained decoder) model from a preset; see :func:`load_model`."""
    from xchm.models.backbone import adapt_patch_embed, build_backbone
    from xchm.models.network import assemble
    from xchm.models.weights import load_backbone_weights

    spec = get_preset(preset)
    window = spec.window if window is None else window
    pixel_size = spec.pixel_size if pixel_size is None else pixel_size
    new_decoder = _resolve_decoder(spec, decoder)
    if backbone_weights is not None and weights is not None and is_checkpoint(weights):
        return _checkpoint_on_backbone(preset, weights, backbone_weights, decoder)
    if backbone_weights is not None and (spec.dpt is None or is_checkpoint(backbone_weights)):
        if weights is not None:
            raise InputError(
                f"for {preset!r}, weights= and backbone_weights= together mean a decoder from "
                f"an xchm checkpoint (weights=) on a backbone file; {str(weights)!r} is not an "
                "xchm checkpoint: pass the backbone file once, as backbone_weights="
            )
        weights, backbone_weights = backbone_weights, None  # the same backbone weights
    if spec.dpt is not None and not (weights is not None and is_checkpoint(weights)):
        from xchm.models.chmv2_build import create_dpt_model

        return create_dpt_model(
            spec,
            weights=None if weights is None else _local_source(weights, "weights"),
            backbone_weights=(
                None
                if backbone_weights is None
                else _local_source(backbone_weights, "backbone_weights")
            ),
            card=_preset_card(spec, bands, band_map, statistics, multilevel, window, pixel_size),
            seed=spec.seed if seed is None else seed,
        )
    if weights is not None and is_checkpoint(weights):
        where = location(weights)
        return _from_checkpoint_backbone(
            preset,
            where if where.is_url else Path(where.text).expanduser(),
            bands=bands,
            band_map=band_map,
            statistics=statistics,
            multilevel=multilevel,
            window=window,
            pixel_size=pixel_size,
            output_bias=output_bias,
            seed=seed,
            decoder_spec=new_decoder,
        )
    provenance: dict[str, Any] = {}
    if weights is not None:
        weights, provenance = _local_source(weights, "weights")
    card = _preset_card(spec, bands, band_map, statistics, multilevel, window, pixel_size)
    card = card.replace(provenance=provenance)
    with _seeded(spec.seed if seed is None else seed):
        backbone = build_backbone(spec, card.window, empty=weights is not None)
        if weights is not None:
            layout = load_backbone_weights(backbone, str(weights))
            card = card.replace(provenance={**provenance, "weights_layout": layout})
        elif spec.seed is None:
            warnings.warn(
                f"{preset!r} was built with a random backbone; pass weights=PATH to Meta's "
                f"DINOv3 file ({spec.notes})",
                RandomWeightsWarning,
                stacklevel=3,
            )
        adapt_patch_embed(backbone, card.band_map)
        return assemble(backbone, card, decoder_spec=new_decoder, output_bias=output_bias)


def _preset_card(
    spec: Any,
    bands: Sequence[str] | None,
    band_map: Any,
    statistics: StatisticsLike | None,
    multilevel: bool,
    window: int,
    pixel_size: float,
) -> ModelCard:
    """Return the card of a new model of preset ``spec`` (its defaults unless given)."""
    default = spec.default_card()
    band_names = normalize_bands(bands) if bands is not None else default.bands
    stats = _statistics(band_names, statistics)
    if stats is None and band_names == default.bands:
        stats = default.statistics
    return ModelCard(
        preset=spec.name,
        bands=band_names,
        statistics=stats,
        statistics_source=default.statistics_source if stats is default.statistics else "",
        band_map=resolve_band_map(band_names, band_map),
        feature_indices=spec.feature_indices(multilevel),
        window=window,
        pixel_size=pixel_size,
    )


def _checkpoint_on_backbone(
    preset: str,
    checkpoint: PathOrURL,
    backbone_weights: PathOrURL,
    decoder: DecoderLike | None = None,
) -> CanopyHeightModel:
    """Put the decoder (and card) of an xchm checkpoint on a backbone from a weights file."""
    from xchm.models.backbone import adapt_patch_embed, build_backbone
    from xchm.models.network import assemble, load_checkpoint
    from xchm.models.weights import load_backbone_weights

    source = load_checkpoint(checkpoint)
    card = source.card
    if card.preset != preset:
        raise WeightsError(
            f"checkpoint {str(checkpoint)!r} holds a {card.preset!r} model, not {preset!r}; "
            f"use model={card.preset!r}"
        )
    _refuse_changes(source, {"decoder": decoder})
    path, provenance = _local_source(backbone_weights, "backbone_weights")
    backbone = build_backbone(get_preset(preset), card.window, empty=True)
    load_backbone_weights(backbone, path)
    adapt_patch_embed(backbone, card.band_map)
    card = card.replace(provenance={**provenance, "decoder_from": str(checkpoint)})
    model = assemble(backbone, card, decoder_spec=source.decoder_spec)
    model.decoder.load_state_dict(source.decoder.state_dict(), strict=True)
    return model


def _from_checkpoint_backbone(
    preset: str,
    path: Path | Location,
    *,
    bands: Sequence[str] | None,
    band_map: Any,
    statistics: StatisticsLike | None,
    multilevel: bool,
    window: int,
    pixel_size: float,
    output_bias: float,
    seed: int | None,
    decoder_spec: DecoderSpec | None = None,
) -> CanopyHeightModel:
    """Put a new decoder on the backbone of an xchm checkpoint (e.g. ``xchm.pretrain``'s).

    The backbone's patch embedding is already adapted to the checkpoint's bands, so
    its bands, band map and (unless given) statistics carry over from its card.
    """
    from xchm.models.backbone import build_backbone, get_rope_periods, set_rope_periods
    from xchm.models.network import assemble, load_checkpoint

    source = load_checkpoint(path)
    card = source.card
    if card.preset != preset:
        raise WeightsError(
            f"checkpoint {str(path)!r} holds a {card.preset!r} backbone, not {preset!r}; "
            f"use model={card.preset!r}"
        )
    if bands is not None and normalize_bands(bands) != card.bands:
        raise BandError(
            f"checkpoint {str(path)!r} was trained on bands {card.bands}; the input has "
            f"{normalize_bands(bands)}: reorder or rename the input bands"
        )
    if band_map is not None:
        raise InputError(
            f"band_map cannot change the backbone of checkpoint {str(path)!r}: its patch "
            f"embedding already takes {card.bands} (band map {card.band_map})"
        )
    spec = get_preset(preset)
    stats = _statistics(card.bands, statistics) if statistics is not None else card.statistics
    new_card = card.replace(
        statistics=stats,
        statistics_source=card.statistics_source if statistics is None else "given",
        feature_indices=spec.feature_indices(multilevel),
        window=window,
        pixel_size=pixel_size,
        xchm_version=ModelCard(preset=preset).xchm_version,
        provenance={
            "backbone_from": str(path),
            "backbone_provenance": dict(card.provenance),
        },
    )
    with _seeded(spec.seed if seed is None else seed):
        backbone = build_backbone(spec, window, empty=True)
        # The patch embedding already takes the checkpoint's bands.
        backbone.patch_embed.proj = source.backbone.patch_embed.proj
        backbone.load_state_dict(source.backbone.state_dict(), strict=True)
        set_rope_periods(backbone, get_rope_periods(source.backbone))
        return assemble(backbone, new_card, decoder_spec=decoder_spec, output_bias=output_bias)


def is_checkpoint(path: PathOrURL) -> bool:
    """Whether ``path`` (a local folder or a URL) is an xchm checkpoint (has a ``card.json``).

    Examples
    --------
    >>> is_checkpoint("dinov3_vitl16_pretrain_sat493m.pth")
    False
    """
    from xchm.models.checkpoint import is_checkpoint as has_card

    return has_card(path)


def load_model(
    name_or_path: PathOrURL,
    *,
    weights: PathOrURL | None = None,
    backbone_weights: PathOrURL | None = None,
    bands: Sequence[str] | None = None,
    band_map: Mapping[str, int | str] | Sequence[int | str] | str | None = None,
    statistics: StatisticsLike | None = None,
    multilevel: bool = False,
    window: int | None = None,
    pixel_size: float | None = None,
    output_bias: float = DEFAULT_OUTPUT_BIAS,
    seed: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    decoder: DecoderLike | None = None,
) -> CanopyHeightModel:
    """Create a model from a preset, or load a saved xchm checkpoint.

    Parameters
    ----------
    name_or_path
        A preset name (``xchm.list_models()``) or a checkpoint directory written by
        ``model.save(dir)``: a local folder or a URL (``s3://``, ``gs://``, ``az://``,
        ``https://``, ``file://``). A URL's weights are downloaded once per machine
        into the cache (``$XCHM_CACHE``, else ``~/.cache/xchm``) and verified by SHA-256.
    weights
        Pretrained backbone weights for a preset: Meta's official DINOv3 ``.pth``,
        a Hugging Face ``facebook/dinov3-*`` snapshot folder, a timm checkpoint, or
        an xchm checkpoint directory (e.g. ``xchm.pretrain``'s ``backbone/``), whose
        backbone is taken with its bands, band map and statistics (the decoder is
        new). Read offline and without unpickling objects. Without it the backbone is
        random (a :class:`~xchm.errors.RandomWeightsWarning` says so, except for
        ``test-tiny``, which is random by design). For ``chmv2`` it is the trained head:
        Meta's ``dinov3_vitl16_chmv2_dpt_head-*.pth`` (with ``backbone_weights=``) or a
        ``facebook/dinov3-vitl16-chmv2-dpt-head`` snapshot folder (backbone and head).
        With ``backbone_weights=`` and another preset, an xchm checkpoint whose decoder
        and card are put on that backbone.
    backbone_weights
        The backbone's weights file (any layout ``weights=`` reads for a backbone), for
        every preset: e.g. Meta's ``dinov3_vitl16_pretrain_sat493m-*.pth`` beside the
        CHMv2 head. Alone, it means what ``weights=`` means for a backbone.
    bands
        Input band names in order (default: the preset's, ``("nir", "red", "green")``
        except ``("red", "green", "blue")`` for ``chmv2``).
    band_map
        Which pretrained RGB filter each band's patch-embedding channel copies:
        default nir<-red, red<-red, green<-green, blue<-blue; a mapping such as
        ``{"nir": "green"}``; one filter index per band; or ``"reference"`` for the
        reference project's quirk (``(2, 2, 1)`` for nir/red/green).
    statistics
        Normalisation statistics per band (``{band: BandStats(...)}``); default the
        reference's when every band has one, otherwise none (predicting then needs them).
    multilevel
        Feed the decoder four backbone depths (e.g. blocks 5, 11, 17, 23 of ViT-L)
        instead of the last block only (the reference).
    window
        Window size in pixels (multiple of 16; default the preset's: 64, or 256 for
        ``chmv2``).
    pixel_size
        Ground sampling distance in metres the model is meant for (default the
        preset's: 2.0, or 0.6 for ``chmv2``).
    output_bias
        Initial output bias in metres (a high percentile of the training labels).
    seed
        Seed for the random parts (default: the preset's seed, if any).
    storage_options
        Options of the URL's storage backend (fsspec's: ``key``, ``secret``,
        ``endpoint_url``, ``anon``...), when the environment does not provide them.
    decoder
        The new decoder of a preset: ``"reference"`` (default: the reference project's
        design, about 7.2 GFLOP per 64x64 window), ``"light"`` (a plain upsampling
        decoder of under 1 GFLOP per window, :mod:`xchm.models.light_decoder`) or a
        :class:`~xchm.models.DecoderSpec`. Not for ``chmv2`` (its DPT head is fixed)
        nor for a checkpoint, whose decoder is saved with it (restating it is allowed).

    Returns
    -------
    CanopyHeightModel
        A ``torch.nn.Module`` in eval mode with ``.card`` and ``.save(dir)``;
        ``model(x)`` maps normalised (B, bands, W, W) float input to (B, 1, W, W) metres.

    Raises
    ------
    ModelNotFoundError
        Unknown preset or missing checkpoint directory.
    WeightsError
        Unreadable, corrupt or mismatched weights or checkpoint.
    BandError
        Bands, band map or statistics that do not fit together.

    Examples
    --------
    >>> import torch, xchm
    >>> model = xchm.load_model("test-tiny")
    >>> model(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
    >>> type(xchm.load_model("test-tiny", decoder="light").decoder).__name__
    'LightDecoder'
    """
    options: dict[str, Any] = {
        "weights": weights,
        "bands": bands,
        "band_map": band_map,
        "statistics": statistics,
        "backbone_weights": backbone_weights,
        "decoder": decoder,
    }
    if isinstance(name_or_path, str) and name_or_path in PRESETS:
        return create_model(
            name_or_path,
            weights=weights,
            backbone_weights=backbone_weights,
            bands=bands,
            band_map=band_map,
            statistics=statistics,
            multilevel=multilevel,
            window=window,
            pixel_size=pixel_size,
            output_bias=output_bias,
            seed=seed,
            decoder=decoder,
        )
    if _is_reference_file(name_or_path):  # a reference project's .pth (xchm.models.reference)
        from xchm.models.reference import load_model_file

        if decoder is not None and _decoder_kind(decoder) != "reference":
            raise InputError(
                f"{str(name_or_path)!r} is a reference project's file: its decoder is the "
                f"reference's, so decoder={decoder!r} cannot apply; start from a preset instead"
            )

        return load_model_file(
            name_or_path,
            weights=weights,
            bands=bands,
            band_map=band_map,
            statistics=statistics,
            multilevel=multilevel,
            window=window,  # None: the file's (64 px, 2 m for the reference)
            pixel_size=pixel_size,
            storage_options=storage_options,
        )
    if isinstance(name_or_path, Location | str) and location(name_or_path).is_url:
        from xchm.models.network import load_checkpoint

        model = load_checkpoint(location(name_or_path, storage_options))
        _refuse_changes(model, options)
        return model
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        from xchm.models.network import load_checkpoint

        model = load_checkpoint(path)
        _refuse_changes(model, options)
        return model
    if isinstance(name_or_path, str) and os.sep not in name_or_path and not path.suffix:
        get_preset(name_or_path)  # raises with close matches
    raise ModelNotFoundError(
        f"{str(path)!r} is neither a model preset {list_models()} nor an existing checkpoint "
        "directory"
    )


def _is_reference_file(source: PathOrURL) -> bool:
    """Whether ``source`` is a file (or a ``.pth``-like URL): a reference checkpoint's place."""
    from xchm.models.reference import REFERENCE_SUFFIXES

    if not isinstance(source, Location | str | os.PathLike):
        return False
    where = location(source)
    if where.is_url:
        return Path(where.name).suffix.lower() in REFERENCE_SUFFIXES
    return Path(where.text).expanduser().is_file()


def _decoder_kind(decoder: DecoderLike) -> str:
    return decoder.kind if isinstance(decoder, DecoderSpec) else str(decoder)


def _refuse_changes(model: CanopyHeightModel, options: Mapping[str, Any]) -> None:
    """Refuse options that would change a trained checkpoint (bands and decoder may be restated)."""
    given = [k for k, v in options.items() if v is not None]
    if options.get("bands") is not None and normalize_bands(options["bands"]) == model.card.bands:
        given.remove("bands")
    decoder = options.get("decoder")
    if decoder is not None and (
        decoder == model.decoder_spec
        or (isinstance(decoder, str) and decoder == model.decoder_spec.kind)
    ):
        given.remove("decoder")
    if given:
        raise InputError(
            f"{given} cannot change a trained checkpoint (bands {model.card.bands}, "
            f"decoder {model.decoder_spec.kind!r}); reorder or rename your input bands "
            "instead, or start from a preset"
        )
