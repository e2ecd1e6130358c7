"""The model card: the data contract that travels with a model's weights.

A canopy height model only works on imagery normalised exactly as its training
data were. The card records that contract (band names and order, per-band
statistics, pixel size, window) plus identity (preset, xchm version) and
training provenance. It is pure Python and NumPy so that inference graphs and
``import xchm`` never need torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from xchm._version import __version__
from xchm.errors import BandError, InputError, WeightsError
from xchm.models.bands import REFERENCE_BANDS, normalize_bands, resolve_band_map

__all__ = [
    "BandStats",
    "ModelCard",
    "REFERENCE_STATISTICS",
    "band_statistics",
    "statistics_from_pixels",
]


@dataclass(frozen=True, kw_only=True)
class BandStats:
    """Normalisation statistics of one band.

    Normalisation is ``z = (clip(x, 0, clip_max) / clip_max - mean) / std``: raw
    values (e.g. surface-reflectance digital numbers) are clipped to
    ``[0, clip_max]``, scaled to ``[0, 1]`` and z-scored.
    """

    clip_max: float
    """Upper clip value in raw units (the reference used mean + 3 sd of raw pixels)."""
    mean: float
    """Mean of the clipped and scaled values."""
    std: float
    """Standard deviation of the clipped and scaled values."""

    def __post_init__(self) -> None:
        for name in ("clip_max", "mean", "std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"BandStats.{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise InputError(f"BandStats.{name} must be finite, got {value!r}")
        if self.clip_max <= 0 or self.std <= 0:
            raise InputError(
                f"BandStats needs clip_max > 0 and std > 0, got clip_max={self.clip_max}, "
                f"std={self.std}"
            )


#: The reference project's statistics: WorldView-2/3 SR-lite digital numbers,
#: Alaska, 1,000,000 randomly sampled pixels (clip max = mean + 3 sd).
REFERENCE_STATISTICS: dict[str, BandStats] = {
    "nir": BandStats(clip_max=7142.0, mean=0.34176117, std=0.13601232),
    "red": BandStats(clip_max=5893.0, mean=0.08127703, std=0.04182002),
    "green": BandStats(clip_max=5387.0, mean=0.10034456, std=0.03420006),
}


def band_statistics(
    array: np.ndarray, *, axis: int = 0, sample: int = 1_000_000, seed: int = 0
) -> tuple[BandStats, ...]:
    """Compute normalisation statistics with the reference procedure.

    Draw up to ``sample`` pixels (seeded) among those valid in every band (finite);
    per band, clip max = mean + 3 sd of the raw values; then the mean and sd of the
    values clipped to ``[0, clip_max]`` and divided by it.

    Parameters
    ----------
    array
        Raw imagery with bands along ``axis`` (NaN marks missing pixels).
    axis
        The band axis.
    sample
        Number of pixels to sample (all pixels if there are fewer).
    seed
        Seed of the sample.

    Returns
    -------
    tuple of BandStats
        One per band, in order.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> stats = band_statistics(rng.uniform(0, 1000, (3, 50, 50)))
    >>> round(stats[0].clip_max), round(stats[0].mean, 2)
    (1370, 0.36)
    """
    pixels = np.moveaxis(np.asarray(array, dtype=np.float64), axis, 0).reshape(
        array.shape[axis], -1
    )
    pixels = pixels[:, np.isfinite(pixels).all(axis=0)]
    if pixels.shape[1] == 0:
        raise InputError("no pixel is valid in every band; cannot compute band statistics")
    if pixels.shape[1] > sample:
        pick = np.random.default_rng(seed).choice(pixels.shape[1], sample, replace=False)
        pixels = pixels[:, pick]
    return statistics_from_pixels(pixels)


def statistics_from_pixels(pixels: np.ndarray) -> tuple[BandStats, ...]:
    """Compute the reference statistics of sampled valid pixels, shaped (band, pixel).

    Examples
    --------
    >>> stats = statistics_from_pixels(np.array([[0.0, 10.0, 20.0]]))
    >>> round(stats[0].clip_max, 2), round(stats[0].mean, 2)
    (34.49, 0.29)
    """
    pixels = np.asarray(pixels, dtype=np.float64)
    clip = pixels.mean(axis=1) + 3 * pixels.std(axis=1)
    scaled = np.clip(pixels, 0, clip[:, None]) / clip[:, None]
    return tuple(
        BandStats(clip_max=float(c), mean=float(m), std=float(s))
        for c, m, s in zip(clip, scaled.mean(axis=1), scaled.std(axis=1), strict=True)
    )


_REFERENCE_SOURCE = (
    "reference project: WorldView-2/3 SR-lite DN, Alaska 2011-2022, 1e6 sampled pixels"
)


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """Everything needed to feed imagery to a model and to trust its output.

    Examples
    --------
    >>> card = ModelCard(preset="test-tiny")
    >>> card.bands
    ('nir', 'red', 'green')
    >>> card.band_map
    (0, 0, 1)
    >>> ModelCard.from_dict(card.to_dict()) == card
    True
    """

    preset: str
    """Name of the preset the architecture comes from (see ``xchm.list_models()``)."""
    bands: tuple[str, ...] = REFERENCE_BANDS
    """Input band names, in the order the model expects them."""
    statistics: tuple[BandStats, ...] | None = None
    """Per-band normalisation statistics, aligned with ``bands``; ``None`` if unknown.
    Defaults to the reference statistics when every band has one."""
    statistics_source: str = ""
    """How the statistics were obtained (data set, sample size)."""
    pixel_size: float = 2.0
    """Ground sampling distance of the training imagery, in metres."""
    window: int = 64
    """Side of the square input window in pixels (a multiple of the patch size 16)."""
    band_map: tuple[int, ...] = ()
    """Pretrained RGB filter (0 red, 1 green, 2 blue) copied for each band;
    empty means the defaults of :func:`xchm.models.bands.resolve_band_map`."""
    feature_indices: tuple[int, ...] = ()
    """Backbone blocks whose outputs feed the decoder (empty: the last block only)."""
    units: str = "m"
    """Units of the output (canopy height above ground)."""
    xchm_version: str = __version__
    """xchm version that created the card."""
    provenance: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Free-form training provenance (data, epochs, metrics, weights source)."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise in place once
        if not isinstance(self.preset, str) or not self.preset:
            raise InputError(f"ModelCard.preset must be a non-empty string, got {self.preset!r}")
        bands = normalize_bands(self.bands)
        set_(self, "bands", bands)
        stats = self.statistics
        if stats is None and all(b in REFERENCE_STATISTICS for b in bands):
            stats = tuple(REFERENCE_STATISTICS[b] for b in bands)
            set_(self, "statistics_source", self.statistics_source or _REFERENCE_SOURCE)
        if stats is not None:
            stats = tuple(s if isinstance(s, BandStats) else BandStats(**s) for s in stats)
            if len(stats) != len(bands):
                raise BandError(
                    f"ModelCard has {len(bands)} bands {bands} but {len(stats)} statistics; "
                    "give one BandStats per band"
                )
        set_(self, "statistics", stats)
        if isinstance(self.window, bool) or not isinstance(self.window, int):
            raise InputError(f"window must be an integer, got {self.window!r}")
        if self.window <= 0 or self.window % 16:
            raise InputError(
                f"window={self.window} is not a positive multiple of the ViT patch size 16; "
                "use 64 (the default), 32, 128, ..."
            )
        if not (isinstance(self.pixel_size, int | float) and self.pixel_size > 0):
            raise InputError(
                f"pixel_size must be a positive number of metres, got {self.pixel_size!r}"
            )
        set_(self, "pixel_size", float(self.pixel_size))
        band_map = self.band_map if self.band_map else None
        set_(self, "band_map", resolve_band_map(bands, band_map))
        indices = tuple(int(i) for i in self.feature_indices)
        if any(i < 0 for i in indices) or list(indices) != sorted(set(indices)):
            raise InputError(
                f"feature_indices must be increasing non-negative block indices, got {indices}"
            )
        set_(self, "feature_indices", indices)
        set_(self, "provenance", dict(self.provenance))

    # -- derived views -------------------------------------------------------------
    @property
    def num_bands(self) -> int:
        """Number of input bands."""
        return len(self.bands)

    def require_statistics(self) -> tuple[BandStats, ...]:
        """Return the statistics or raise a :class:`BandError` explaining how to add them."""
        if self.statistics is None:
            raise BandError(
                f"the model card has no normalisation statistics for bands {self.bands}; "
                "build a chip cube from your imagery (xchm.chips) or pass statistics= to "
                "xchm.load_model, e.g. {'red': BandStats(clip_max=255, mean=0.4, std=0.2), ...}"
            )
        return self.statistics

    def normalize(self, array: np.ndarray, *, axis: int = 0) -> np.ndarray:
        """Normalise raw imagery with the card's statistics (clip, scale, z-score).

        Parameters
        ----------
        array
            Raw values (integer DN or float) with the bands, in card order, along ``axis``.
        axis
            The band axis.

        Returns
        -------
        numpy.ndarray
            float32 array of the same shape; NaN stays NaN.

        Examples
        --------
        >>> card = ModelCard(preset="test-tiny")
        >>> z = card.normalize(np.full((3, 2, 2), 1000, dtype="uint16"))
        >>> z.shape, z.dtype
        ((3, 2, 2), dtype('float32'))
        """
        stats = self.require_statistics()
        array = np.asarray(array)
        if array.ndim == 0 or array.shape[axis] != len(stats):
            raise BandError(
                f"expected {len(stats)} bands {self.bands} along axis {axis}, got shape "
                f"{array.shape}"
            )
        shape = [1] * array.ndim
        shape[axis] = len(stats)
        clip = np.array([s.clip_max for s in stats], dtype=np.float32).reshape(shape)
        mean = np.array([s.mean for s in stats], dtype=np.float32).reshape(shape)
        std = np.array([s.std for s in stats], dtype=np.float32).reshape(shape)
        scaled = np.clip(array.astype(np.float32, copy=False), 0.0, clip) / clip
        return (scaled - mean) / std

    # -- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (inverse of :meth:`from_dict`)."""
        out = asdict(self)
        out["bands"] = list(self.bands)
        out["band_map"] = list(self.band_map)
        out["feature_indices"] = list(self.feature_indices)
        out["statistics"] = (
            None if self.statistics is None else [asdict(s) for s in self.statistics]
        )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Build a card from :meth:`to_dict` output, rejecting unknown fields.

        Raises
        ------
        WeightsError
            If fields are unknown or values are invalid (the card came from a file).
        """
        if not isinstance(data, Mapping):
            raise WeightsError(f"a model card must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise WeightsError(
                f"model card has unknown fields {unknown} (written by a newer xchm?); "
                f"known fields: {sorted(known)}"
            )
        values = dict(data)
        try:
            for key in ("bands", "band_map", "feature_indices"):
                if key in values:
                    if isinstance(values[key], str | bytes) or not isinstance(
                        values[key], list | tuple
                    ):
                        raise TypeError(f"{key} must be a list, got {values[key]!r}")
                    values[key] = tuple(values[key])
            if values.get("statistics") is not None:
                values["statistics"] = tuple(BandStats(**s) for s in values["statistics"])
            return cls(**values)
        except (TypeError, ValueError) as err:  # InputError and BandError are ValueErrors
            raise WeightsError(f"invalid model card: {err}") from err

    def digest(self) -> str:
        """Short SHA-256 of the data contract: every field but provenance and versions."""
        contract = self.to_dict()
        for key in ("provenance", "xchm_version", "statistics_source"):
            contract.pop(key)
        text = json.dumps(contract, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> ModelCard:
        """Return a copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    def _repr_html_(self) -> str:
        """Show the card as a compact table in Jupyter (text escaped)."""
        from xchm._html import html_grid, html_table

        filters = ("red", "green", "blue")
        stats = self.statistics or (None,) * len(self.bands)
        bands = html_grid(
            ["band", "pretrained filter", "clip max", "mean", "std"],
            [
                [b, filters[f], *((s.clip_max, s.mean, s.std) if s else ("-",) * 3)]
                for b, f, s in zip(self.bands, self.band_map, stats, strict=True)
            ],
        )
        rows = [
            ("bands", bands),
            ("statistics", self.statistics_source or "none (pass statistics=)"),
            ("pixel size", f"{self.pixel_size:g} m"),
            ("window", f"{self.window} px"),
            ("feature blocks", self.feature_indices or "last"),
            ("units", self.units),
            ("contract", self.digest()),
            ("xchm", self.xchm_version),
        ]
        if self.provenance:
            rows.append(("provenance", html_grid(None, self.provenance.items())))
        return html_table("xchm.ModelCard", rows, subtitle=self.preset)
