import pytest
import torch

import xchm
from xchm.errors import InputError


def test_forward__shape_and_metres_non_negative(tiny):
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        y = tiny(x)
    assert y.shape == (3, 1, 64, 64)
    assert y.dtype == torch.float32
    assert (y >= 0).all()


def test_forward__output_is_clamped_at_zero():
    model = xchm.load_model("test-tiny", output_bias=-50.0)
    with torch.inference_mode():
        y = model(torch.randn(2, 3, 64, 64))
    assert (y == 0).all()


def test_output_bias__default_is_reference_percentile(tiny):
    assert tiny.decoder.output.bias.item() == pytest.approx(8.42)
    w = tiny.decoder.output.weight
    assert abs(w.std().item() - 0.02) < 0.01
    with torch.inference_mode():
        y = tiny(torch.randn(4, 3, 64, 64))
    # small output weights: the untrained model predicts about the bias everywhere
    assert (y - 8.42).abs().max() < 1.0


def test_output_bias__configurable():
    model = xchm.load_model("test-tiny", output_bias=3.5)
    assert model.decoder.output.bias.item() == pytest.approx(3.5)


def test_features__last_map_is_final_normed_patch_tokens(tiny):
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        (feat,) = tiny.features(x)
        tokens = tiny.backbone.forward_features(x)  # timm: final norm applied
    assert feat.shape == (2, 64, 4, 4)
    prefix = tiny.backbone.num_prefix_tokens
    assert prefix == 5  # 1 class + 4 registers
    expected = tokens[:, prefix:].transpose(1, 2).reshape(2, 64, 4, 4)
    torch.testing.assert_close(feat, expected)


def test_features__multilevel_uses_four_depths():
    model = xchm.load_model("test-tiny", multilevel=True)
    assert model.card.feature_indices == (0, 1, 2, 3)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        feats = model.features(x)
        y = model(x)
    assert [f.shape for f in feats] == [torch.Size([2, 64, 4, 4])] * 4
    assert not torch.equal(feats[0], feats[-1])
    assert y.shape == (2, 1, 64, 64)


def test_multilevel__vitl_depths_are_5_11_17_23():
    from xchm.models.presets import get_preset

    assert get_preset("dinov3-vitl16-sat").multilevel_indices == (5, 11, 17, 23)


@pytest.mark.parametrize("window", [32, 128])
def test_forward__other_window_sizes(window):
    model = xchm.load_model("test-tiny", window=window)
    with torch.inference_mode():
        y = model(torch.randn(1, 3, window, window))
        (feat,) = model.features(torch.randn(1, 3, window, window))
    assert y.shape == (1, 1, window, window)
    assert feat.shape[-2:] == (window // 16, window // 16)


def test_load_model__window_not_multiple_of_16():
    with pytest.raises(InputError, match="multiple of the ViT patch size 16"):
        xchm.load_model("test-tiny", window=40)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2, 4, 64, 64), "expects 3 bands"),
        ((2, 3, 32, 32), "64x64 windows"),
        ((3, 64, 64), "4-D batch"),
    ],
)
def test_forward__bad_shapes(tiny, shape, match):
    with pytest.raises(InputError, match=match):
        tiny(torch.zeros(shape))


def test_forward__nan_input_rejected(tiny):
    x = torch.zeros(1, 3, 64, 64)
    x[0, 1, 10, 10] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        tiny(x)


def test_forward__integer_input_rejected(tiny):
    with pytest.raises(InputError, match="float"):
        tiny(torch.zeros(1, 3, 64, 64, dtype=torch.int16))


def test_backbone__frozen_by_default_and_stays_in_eval(tiny):
    tiny.train()
    assert tiny.backbone_frozen
    assert not tiny.backbone.training and tiny.decoder.training
    assert not any(p.requires_grad for p in tiny.backbone.parameters())
    loss = tiny(torch.randn(2, 3, 64, 64)).mean()
    loss.backward()
    assert tiny.decoder.output.weight.grad is not None
    assert tiny.backbone.patch_embed.proj.weight.grad is None


def test_backbone__unfreeze_trains_it(tiny):
    tiny.freeze_backbone(False).train()
    assert tiny.backbone.training
    tiny(torch.randn(2, 3, 64, 64)).mean().backward()
    assert tiny.backbone.patch_embed.proj.weight.grad is not None


def _rgb_filters(model_kwargs):
    """Patch-embedding weights of the RGB backbone and of the adapted model (same seed)."""
    from xchm.testing import random_backbone

    rgb = random_backbone("test-tiny", seed=0).patch_embed.proj.weight
    model = xchm.load_model("test-tiny", **model_kwargs)
    return rgb, model.backbone.patch_embed.proj.weight


def test_band_map__default_copies_red_for_nir(tmp_path):
    from xchm.testing import write_meta_weights

    write_meta_weights(tmp_path / "w.pth")
    rgb, adapted = _rgb_filters({"weights": tmp_path / "w.pth"})
    assert adapted.shape[1] == 3
    assert torch.equal(adapted[:, 0], rgb[:, 0])  # nir <- red
    assert torch.equal(adapted[:, 1], rgb[:, 0])  # red <- red
    assert torch.equal(adapted[:, 2], rgb[:, 1])  # green <- green


def test_band_map__reference_quirk_copies_blue(tmp_path):
    from xchm.testing import write_meta_weights

    write_meta_weights(tmp_path / "w.pth")
    rgb, adapted = _rgb_filters({"weights": tmp_path / "w.pth", "band_map": "reference"})
    assert torch.equal(adapted[:, 0], rgb[:, 2])
    assert torch.equal(adapted[:, 1], rgb[:, 2])
    assert torch.equal(adapted[:, 2], rgb[:, 1])


def test_band_map__rgb_identity_and_four_bands(tmp_path):
    from xchm.testing import write_meta_weights

    write_meta_weights(tmp_path / "w.pth")
    rgb, adapted = _rgb_filters({"weights": tmp_path / "w.pth", "bands": ("red", "green", "blue")})
    assert torch.equal(adapted, rgb)
    rgb, adapted4 = _rgb_filters(
        {"weights": tmp_path / "w.pth", "bands": ("blue", "green", "red", "nir")}
    )
    assert adapted4.shape[1] == 4
    for i, j in enumerate((2, 1, 0, 0)):
        assert torch.equal(adapted4[:, i], rgb[:, j])
    model = xchm.load_model("test-tiny", bands=("blue", "green", "red", "nir"))
    with torch.inference_mode():
        assert model(torch.randn(1, 4, 64, 64)).shape == (1, 1, 64, 64)


def test_band_map__stored_in_card():
    model = xchm.load_model("test-tiny", band_map="reference")
    assert model.card.band_map == (2, 2, 1)
