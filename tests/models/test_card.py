import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xchm import BandStats, ModelCard
from xchm.errors import BandError, InputError, WeightsError
from xchm.models.card import REFERENCE_STATISTICS


def test_model_card__defaults_are_the_reference_contract():
    card = ModelCard(preset="dinov3-vitl16-sat")
    assert card.bands == ("nir", "red", "green")
    assert [s.clip_max for s in card.statistics] == [7142.0, 5893.0, 5387.0]
    assert card.statistics[0].mean == pytest.approx(0.34176117)
    assert card.pixel_size == 2.0 and card.window == 64 and card.units == "m"
    assert card.band_map == (0, 0, 1)
    assert "reference" in card.statistics_source


def test_model_card__bands_without_reference_statistics_have_none():
    card = ModelCard(preset="test-tiny", bands=("red", "green", "blue"))
    assert card.statistics is None
    with pytest.raises(BandError, match="statistics"):
        card.normalize(np.zeros((3, 4, 4)))


@pytest.mark.parametrize(
    "changes",
    [
        {"window": 50},
        {"window": 0},
        {"pixel_size": -1.0},
        {"bands": ("nir", "nir")},
        {"statistics": (REFERENCE_STATISTICS["nir"],)},
        {"band_map": (0, 1)},
        {"feature_indices": (3, 1)},
        {"preset": ""},
    ],
)
def test_model_card__rejects_invalid_fields(changes):
    with pytest.raises(InputError):
        ModelCard(**{"preset": "test-tiny", **changes})


@pytest.mark.parametrize("value", [{"clip_max": 0}, {"std": -1.0}, {"mean": float("nan")}])
def test_band_stats__rejects_invalid_values(value):
    with pytest.raises(InputError):
        BandStats(**{"clip_max": 100.0, "mean": 0.5, "std": 0.1, **value})


def test_normalize__clips_scales_and_zscores():
    card = ModelCard(preset="test-tiny")
    raw = np.array([[0, 7142, 20000], [5893 / 2, -5, 5893], [5387, 0, 1]], dtype="float64")
    z = card.normalize(raw[:, :, None], axis=0)[:, :, 0]
    for i, stats in enumerate(card.statistics):
        scaled = np.clip(raw[i], 0, stats.clip_max) / stats.clip_max
        np.testing.assert_allclose(z[i], (scaled - stats.mean) / stats.std, rtol=1e-6)
    assert z.dtype == np.float32


def test_normalize__keeps_nan_and_uses_band_axis():
    card = ModelCard(preset="test-tiny")
    raw = np.full((2, 2, 3), 1000.0)
    raw[0, 0, 1] = np.nan
    z = card.normalize(raw, axis=-1)
    assert np.isnan(z[0, 0, 1]) and np.isfinite(z).sum() == z.size - 1
    with pytest.raises(BandError, match="3 bands"):
        card.normalize(raw, axis=0)


stats_strategy = st.builds(
    BandStats,
    clip_max=st.floats(1, 1e5),
    mean=st.floats(-10, 10),
    std=st.floats(1e-3, 10),
)


@given(
    bands=st.lists(
        st.sampled_from(["nir", "red", "green", "blue", "coastal"]),
        min_size=1,
        max_size=5,
        unique=True,
    ),
    data=st.data(),
    window=st.sampled_from([16, 32, 64, 128]),
    pixel_size=st.floats(0.1, 30),
)
def test_model_card__dict_round_trip(bands, data, window, pixel_size):
    stats = tuple(data.draw(stats_strategy) for _ in bands)
    card = ModelCard(
        preset="test-tiny",
        bands=tuple(bands),
        statistics=stats,
        window=window,
        pixel_size=pixel_size,
        provenance={"epochs": 3, "data": ["a", "b"]},
    )
    again = ModelCard.from_dict(card.to_dict())
    assert again == card
    assert again.digest() == card.digest()


def test_model_card__digest_changes_with_contract():
    card = ModelCard(preset="test-tiny")
    assert card.digest() != card.replace(pixel_size=0.5).digest()


def test_model_card__from_dict_rejects_unknown_fields_as_weights_error():
    data = ModelCard(preset="test-tiny").to_dict()
    data["colour"] = "green"
    with pytest.raises(WeightsError, match="colour"):
        ModelCard.from_dict(data)


def test_model_card__from_dict_wraps_invalid_values():
    data = ModelCard(preset="test-tiny").to_dict()
    data["window"] = 63
    with pytest.raises(WeightsError, match="window"):
        ModelCard.from_dict(data)


def test_band_statistics__reference_procedure():
    from xchm.models import band_statistics

    rng = np.random.default_rng(1)
    data = rng.gamma(2.0, 500.0, (3, 40, 50))
    data[1, 0, 0] = np.nan  # pixel dropped in every band
    stats = band_statistics(data)
    pixels = data.reshape(3, -1)[:, np.isfinite(data.reshape(3, -1)).all(axis=0)]
    for i, s in enumerate(stats):
        clip = pixels[i].mean() + 3 * pixels[i].std()
        scaled = np.clip(pixels[i], 0, clip) / clip
        assert s.clip_max == pytest.approx(clip)
        assert s.mean == pytest.approx(scaled.mean()) and s.std == pytest.approx(scaled.std())


def test_band_statistics__samples_reproducibly():
    from xchm.models import band_statistics

    data = np.random.default_rng(2).uniform(0, 100, (2, 200, 200))
    assert band_statistics(data, sample=1000, seed=3) == band_statistics(data, sample=1000, seed=3)
    assert band_statistics(data, sample=1000, seed=3) != band_statistics(data, sample=1000, seed=4)


def test_band_statistics__no_valid_pixel():
    from xchm.models import band_statistics

    with pytest.raises(InputError, match="no pixel"):
        band_statistics(np.full((3, 4, 4), np.nan))


def test_model_card__digest_ignores_provenance():
    card = ModelCard(preset="test-tiny")
    assert card.digest() == card.replace(provenance={"epochs": 3}, xchm_version="9").digest()
