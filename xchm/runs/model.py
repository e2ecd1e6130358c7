"""The model a run starts from, made for its chip cube (training and pretraining alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xchm.errors import InputError
from xchm.storage import Location, location

__all__ = ["model_for_cube"]


def model_for_cube(
    cube: Any,
    model: str | Path | Location,
    weights: str | Path | None,
    *,
    seed: int,
    backbone_weights: str | Path | None = None,
    decoder: Any = None,
) -> Any:
    """Load ``model`` for the bands, window, pixel size and statistics of ``cube``.

    Parameters
    ----------
    cube
        The :class:`~xchm.chips.ChipCube` (or selection) the run reads.
    model
        A preset name, or an xchm checkpoint directory or URL (``s3://``...), used as
        it is (its card must have the cube's bands).
    weights
        Pretrained backbone weights for a preset. An xchm checkpoint here (the
        ``backbone/`` of :func:`xchm.pretrain`) keeps its own normalisation
        statistics: its backbone adapted to inputs normalised that way. Otherwise the
        model normalises with the cube's statistics.
    seed
        Seed of the new (untrained) parts of a preset.
    backbone_weights
        The backbone file beside ``weights`` (e.g. CHMv2's; see ``xchm.load_model``).
    decoder
        The new decoder of a preset (``"reference"``, ``"light"`` or a ``DecoderSpec``;
        see ``xchm.load_model``); a checkpoint keeps its own (restating it is allowed).

    Returns
    -------
    CanopyHeightModel
        On the CPU.

    Raises
    ------
    InputError
        A checkpoint directory whose bands are not the cube's.

    Examples
    --------
    >>> net = model_for_cube(cube, "dinov3-vitl16-sat", "sat493m.pth", seed=0)  # doctest: +SKIP
    >>> net.card.bands == cube.bands  # doctest: +SKIP
    True
    """
    from xchm.models import api

    if _is_checkpoint_place(model):
        net = api.load_model(model, decoder=decoder)
        if net.card.bands != cube.bands:
            raise InputError(
                f"checkpoint {model} expects bands {net.card.bands}; the cube has {cube.bands}"
            )
        return net
    options: dict[str, Any] = {"bands": cube.bands, "window": cube.window, "seed": seed}
    if not (weights is not None and api.is_checkpoint(weights)):
        options["statistics"] = cube.statistics
    if cube.pixel_size is not None:
        options["pixel_size"] = cube.pixel_size
    if backbone_weights is not None:
        options["backbone_weights"] = backbone_weights
    if decoder is not None:
        options["decoder"] = decoder
    return api.load_model(str(model), weights=weights, **options)


def _is_checkpoint_place(model: str | Path | Location) -> bool:
    """Whether ``model`` names a checkpoint: a local folder, or any URL (never a preset)."""
    if isinstance(model, Location):
        return True
    if isinstance(model, str) and location(model).is_url:
        return True
    return Path(str(model)).is_dir()
