import pytest

import xchm
from xchm.errors import ModelNotFoundError, RandomWeightsWarning


def test_list_models__has_the_required_presets():
    names = xchm.list_models()
    for name in ("dinov3-vitl16-sat", "dinov3-vits16", "dinov3-vit7b16-sat", "test-tiny"):
        assert name in names


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("dinov3-vitl16-sat", 302e6, 304e6),  # ViT-L/16: 303.1M
        ("dinov3-vits16", 21e6, 22e6),  # ViT-S/16: 21.6M
        ("dinov3-vit7b16-sat", 6.6e9, 6.8e9),  # ViT-7B/16: 6.7B
        ("test-tiny", 1e5, 5e5),
    ],
)
def test_model_info__backbone_parameter_counts_on_meta_device(name, low, high):
    info = xchm.model_info(name)
    assert low < info["backbone_parameters"] < high
    assert info["decoder_parameters"] > 0
    assert info["bands"] == ("nir", "red", "green")


def test_model_info__vitl_is_the_reference_architecture():
    info = xchm.model_info("dinov3-vitl16-sat")
    assert info["backbone"] == "vit_large_patch16_dinov3_qkvb.sat493m"


def test_load_model__unknown_preset_suggests_close_names():
    with pytest.raises(ModelNotFoundError, match="dinov3-vitl16-sat"):
        xchm.load_model("dinov3-vitl16-sta")


def test_load_model__missing_checkpoint_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a model preset"):
        xchm.load_model(tmp_path / "nope")


@pytest.mark.slow
def test_load_model__real_preset_without_weights_warns():
    with pytest.warns(RandomWeightsWarning, match="weights=PATH"):
        model = xchm.load_model("dinov3-vits16")
    assert (
        model.num_parameters("backbone") == xchm.model_info("dinov3-vits16")["backbone_parameters"]
    )


def test_load_model__test_tiny_is_deterministic_and_silent(recwarn):
    a = xchm.load_model("test-tiny")
    b = xchm.load_model("test-tiny")
    assert not [w for w in recwarn if issubclass(w.category, RandomWeightsWarning)]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and (va == vb).all(), ka


def test_load_model__seed_changes_random_weights():
    a = xchm.load_model("test-tiny")
    b = xchm.load_model("test-tiny", seed=1)
    assert not (a.backbone.cls_token == b.backbone.cls_token).all()


def test_load_model__does_not_disturb_global_rng():
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    xchm.load_model("test-tiny")
    assert torch.equal(torch.rand(3), expected)
