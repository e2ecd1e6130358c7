"""CHMv2 (Meta's DPT head + height bins) against transformers' implementation and Meta's files.

transformers' ``CHMv2ForDepthEstimation`` shares no code with xchm: a small random one
is built and saved as a Hugging Face snapshot, and its heights are the reference. Meta's
two files are written from it with the key names of Meta's head file (the table below,
from ``dinov3/eval/depth/models/dpt_head.py`` as listed in CHMV2.md section 5).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import xchm
from xchm.errors import InputError, WeightsError
from xchm.testing import export_meta_state_dict

transformers = pytest.importorskip("transformers")

TOL = 1e-3  # metres, the bound


def meta_head_keys() -> set[str]:
    """The 68 tensor names of ``dinov3_vitl16_chmv2_dpt_head-*.pth`` (Meta's DPTHead)."""
    keys = set()
    for i in range(4):
        for name in ("projects.{i}.conv", "readout_projects.{i}.0"):
            keys |= {f"reassemble_blocks.{name.format(i=i)}.{p}" for p in ("weight", "bias")}
        keys.add(f"convs.{i}.conv.weight")  # no bias
        keys |= {f"fusion_blocks.{i}.project.conv.{p}" for p in ("weight", "bias")}
        for unit in (2,) if i == 0 else (1, 2):  # the first fusion block has no skip unit
            for conv in (1, 2):
                keys |= {
                    f"fusion_blocks.{i}.res_conv_unit{unit}.conv{conv}.conv.{p}"
                    for p in ("weight", "bias")
                }
    for i in (0, 1, 3):  # resize layer 2 is an Identity
        keys |= {f"reassemble_blocks.resize_layers.{i}.{p}" for p in ("weight", "bias")}
    for i in (0, 2, 4):
        keys |= {f"conv_depth.head.{i}.{p}" for p in ("weight", "bias")}
    return keys


# transformers' head names -> Meta's, from transformers' convert_chmv2_to_hf.py (CHMV2.md 6).
HF_TO_META = [
    (r"head\.reassemble_stage\.layers\.(\d)\.projection\.", r"reassemble_blocks.projects.\1.conv."),
    (r"head\.reassemble_stage\.layers\.(\d)\.resize\.", r"reassemble_blocks.resize_layers.\1."),
    (
        r"head\.reassemble_stage\.readout_projects\.(\d)\.0\.",
        r"reassemble_blocks.readout_projects.\1.0.",
    ),
    (r"head\.convs\.(\d)\.weight", r"convs.\1.conv.weight"),
    (r"head\.fusion_layers\.(\d)\.projection\.", r"fusion_blocks.\1.project.conv."),
    (
        r"head\.fusion_layers\.(\d)\.residual_layer(\d)\.convolution(\d)\.",
        r"fusion_blocks.\1.res_conv_unit\2.conv\3.conv.",
    ),
    (r"head\.conv_depth\.head\.(\d)\.", r"conv_depth.head.\1."),
]


def to_meta_head(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in hf_state.items():
        if not key.startswith("head."):
            continue
        for pattern, repl in HF_TO_META:
            new, n = re.subn("^" + pattern, repl, key)
            if n:
                out[new] = value.clone()
                break
        else:
            raise AssertionError(f"no Meta name for {key}")
    return out


@pytest.fixture(scope="module")
def hf_chmv2(tmp_path_factory):
    """A random transformers CHMv2 the size of test-tiny-chmv2, saved as a snapshot."""
    backbone = transformers.DINOv3ViTConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        image_size=64,
        patch_size=16,
        num_register_tokens=4,
        layerscale_value=1.0,
        layer_norm_eps=1e-5,  # Meta's (a bare CHMv2Config says 1e-6)
        out_indices=[1, 2, 3, 4],
        apply_layernorm=True,
        reshape_hidden_states=True,
        return_class_token=True,
    )
    config = transformers.CHMv2Config(
        backbone_config=backbone,
        post_process_channels=[8, 16, 32, 64],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    torch.manual_seed(0)
    hf = transformers.CHMv2ForDepthEstimation(config).eval()
    with torch.no_grad():  # informative weights: heights that vary by metres, not mm
        for name, p in hf.named_parameters():
            if "mask_token" in name or "k_proj.bias" in name:  # the key bias stays 0
                continue
            std = 0.3 if name.startswith("head.") else (0.2 if p.ndim == 1 else 0.05)
            p.normal_(0.0, std)
    folder = tmp_path_factory.mktemp("chmv2") / "dinov3-tiny-chmv2-dpt-head"
    hf.save_pretrained(folder)
    return folder, hf


@pytest.fixture(scope="module")
def meta_files(hf_chmv2, tmp_path_factory):
    """Meta's two files (backbone .pth in Meta's layout, head .pth in Meta's names)."""
    folder, hf = hf_chmv2
    head = to_meta_head(hf.state_dict())
    assert set(head) == meta_head_keys()  # exactly the released file's 68 names
    model = xchm.load_model("test-tiny-chmv2", weights=folder)
    out = tmp_path_factory.mktemp("meta")
    torch.save(head, out / "dinov3_vitl16_chmv2_dpt_head-3703d643.pth")
    torch.save(export_meta_state_dict(model.backbone), out / "backbone-eadcf0ff.pth")
    return out / "dinov3_vitl16_chmv2_dpt_head-3703d643.pth", out / "backbone-eadcf0ff.pth"


def _heights_hf(hf, x):
    with torch.no_grad():
        return hf(pixel_values=x).predicted_depth


@pytest.mark.parametrize("size", [64, 96])
def test_load_model__chmv2_snapshot_heights_match_transformers(hf_chmv2, size):
    folder, hf = hf_chmv2
    model = xchm.load_model("test-tiny-chmv2", weights=folder, window=size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    expected = _heights_hf(hf, x)
    assert float(expected.std()) > 0.5  # the comparison can see a wrong layer or bin
    with torch.no_grad():
        got = model(x)
    assert got.shape == (2, 1, size, size)
    assert float((got[:, 0] - expected).abs().max()) <= TOL
    assert model.card.provenance["weights"] == folder.name


def test_load_model__chmv2_meta_files_heights_match_transformers(hf_chmv2, meta_files):
    _, hf = hf_chmv2
    head, backbone = meta_files
    model = xchm.load_model("test-tiny-chmv2", weights=head, backbone_weights=backbone)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(x)[:, 0]
    assert float((got - _heights_hf(hf, x)).abs().max()) <= TOL
    card = model.card
    assert card.provenance["weights"] == head.name
    assert card.provenance["backbone_weights"] == backbone.name
    assert card.provenance["weights_layout"] == "meta"


def test_predict__chmv2_normalizes_8bit_rgb_as_transformers_processor(hf_chmv2):
    """xchm.predict on uint8 RGB (card: /255, mean 0.420...) = processor + model."""
    import rioxarray  # noqa: F401  (the .rio accessor)
    import xarray as xr

    folder, hf = hf_chmv2
    model = xchm.load_model("test-tiny-chmv2", weights=folder)
    rgb = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    image = xr.DataArray(
        rgb,
        dims=("band", "y", "x"),
        coords={
            "band": ["red", "green", "blue"],
            "y": 0.6 * np.arange(64)[::-1],
            "x": 0.6 * np.arange(64),
        },
    ).rio.write_crs("EPSG:32617")
    chm = xchm.predict(image, model, overlap=0)  # one window: the whole image
    pixels = transformers.CHMv2ImageProcessor()(images=rgb.transpose(1, 2, 0), return_tensors="pt")
    expected = _heights_hf(hf, pixels["pixel_values"])[0].numpy()
    assert np.abs(chm.values - expected).max() <= TOL
    stats = model.card.statistics
    assert [s.mean for s in stats] == [0.420, 0.411, 0.296]
    assert [s.std for s in stats] == [0.213, 0.156, 0.143]
    assert {s.clip_max for s in stats} == {255.0}


def test_load_model__chmv2_card_defaults():
    spec = xchm.model_info("chmv2")
    assert spec["bands"] == ("red", "green", "blue")
    assert spec["window"] % 16 == 0
    assert spec["decoder_parameters"] == 33_747_200  # Meta's head file: 33.75 M parameters
    model = xchm.load_model("test-tiny-chmv2")
    assert model.card.pixel_size == pytest.approx(0.6)
    assert model.feature_indices == (0, 1, 2, 3)
    assert "chmv2" in xchm.list_models()


def test_load_model__chmv2_layers_are_meta_blocks():
    from xchm.models.presets import get_preset

    assert get_preset("chmv2").feature_indices(False) == (5, 11, 17, 23)  # not [4, 11, ...]


def test_load_model__chmv2_head_with_wrong_shapes_is_refused(meta_files, tmp_path):
    head, backbone = meta_files
    tensors = torch.load(head, weights_only=True)
    tensors["conv_depth.head.4.weight"] = torch.zeros(128, 8, 1, 1)  # 128 bins, not 256
    bad = tmp_path / "head.pth"
    torch.save(tensors, bad)
    with pytest.raises(
        WeightsError,
        match=r"conv_depth\.head\.4\.weight: file \(128, 8, 1, 1\), model \(256, 8, 1, 1\)",
    ):
        xchm.load_model("test-tiny-chmv2", weights=bad, backbone_weights=backbone)


def test_load_model__chmv2_head_with_missing_keys_is_refused(meta_files, tmp_path):
    head, backbone = meta_files
    tensors = torch.load(head, weights_only=True)
    del tensors["convs.0.conv.weight"]
    bad = tmp_path / "head.pth"
    torch.save(tensors, bad)
    with pytest.raises(WeightsError, match=r"1 missing keys .*convs\.0\.conv\.weight.*68 tensors"):
        xchm.load_model("test-tiny-chmv2", weights=bad, backbone_weights=backbone)


def test_load_model__chmv2_7b_backbone_is_refused(tmp_path, meta_files):
    """A ViT-7B file given as CHMv2's backbone: named by its width and depth."""
    from tests.models.test_meta_layout import meta_vit_keys

    shapes = meta_vit_keys(
        dim=4096, depth=40, heads=32, ffn_hidden=8192, swiglu=True, local_cls_norm=True
    )
    # Expanded zeros: the file keeps one float per tensor, the shapes are the 7B's.
    tensors = {k: torch.zeros(()).expand(s) for k, s in shapes.items()}
    path = tmp_path / "dinov3_vit7b16_pretrain_sat493m-a6675841.pth"
    torch.save(tensors, path)
    assert path.stat().st_size < 10 << 20
    head, _ = meta_files
    with pytest.raises(WeightsError, match=r"4096-wide, 40-block ViT.*64-wide, 4-block ViT"):
        xchm.load_model("test-tiny-chmv2", weights=head, backbone_weights=path)


def test_load_model__chmv2_head_without_backbone_is_refused(meta_files):
    head, _ = meta_files
    with pytest.raises(InputError, match="backbone_weights="):
        xchm.load_model("test-tiny-chmv2", weights=head)


def test_load_model__chmv2_snapshot_without_head_is_refused(tmp_path):
    model = xchm.load_model("test-tiny")
    from safetensors.torch import save_file

    folder = tmp_path / "snap"
    folder.mkdir()
    save_file(
        {f"backbone.{k}": v.contiguous() for k, v in model.backbone.state_dict().items()},
        str(folder / "model.safetensors"),
    )
    with pytest.raises(WeightsError, match=r"no head\.\* tensors"):
        xchm.load_model("test-tiny-chmv2", weights=folder)


def test_save__chmv2_checkpoint_round_trip_is_bit_identical(hf_chmv2, tmp_path):
    folder, _ = hf_chmv2
    model = xchm.load_model("test-tiny-chmv2", weights=folder)
    model.save(tmp_path / "ckpt")
    again = xchm.load_model(tmp_path / "ckpt")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again.card == model.card
    assert type(again.decoder).__name__ == "DPTHead"


def test_load_model__backbone_weights_for_other_presets(tmp_path):
    """backbone_weights= is the backbone file for every preset; with a checkpoint as
    weights=, the checkpoint's decoder goes on that backbone."""
    from xchm.testing import write_meta_weights

    pth = tmp_path / "meta.pth"
    write_meta_weights(pth, seed=3)
    alone = xchm.load_model("test-tiny", backbone_weights=pth)
    same = xchm.load_model("test-tiny", weights=pth)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(alone(x), same(x))
    trained = xchm.load_model("test-tiny", seed=5)
    trained.save(tmp_path / "ckpt")
    both = xchm.load_model("test-tiny", weights=tmp_path / "ckpt", backbone_weights=pth)
    with torch.no_grad():
        assert torch.equal(both.features(x)[0], alone.features(x)[0])
        assert torch.equal(both(x), both.decoder(alone.features(x)))
    for name, tensor in trained.decoder.state_dict().items():
        assert torch.equal(both.decoder.state_dict()[name], tensor)
    with pytest.raises(InputError, match="not an xchm checkpoint"):
        xchm.load_model("test-tiny", weights=pth, backbone_weights=pth)


def test_mixlog_bins__meta_centres_in_metres():
    """Bin centres x 8 by index, as tabulated from Meta's eval/depth/utils.py (CHMV2.md 3)."""
    from xchm.models.dpt import mixlog_bins
    from xchm.models.presets import DPTSpec

    metres = mixlog_bins(DPTSpec()) * 8
    expected = {0: 0.008, 1: 0.0098, 16: 0.39, 32: 1.54, 64: 6.11, 128: 24.6, 192: 56.8, 255: 96.0}
    for index, value in expected.items():
        assert float(metres[index]) == pytest.approx(value, rel=6e-3), index


def test_heights_from_logits__all_nonpositive_logits_give_the_mean_bin():
    """ReLU then a 1e-8 shift: a pixel with no positive logit is the plain mean of the bins."""
    from xchm.models.dpt import heights_from_logits, mixlog_bins
    from xchm.models.presets import DPTSpec

    bins = mixlog_bins(DPTSpec())
    heights = heights_from_logits(-torch.ones(1, 256, 2, 2), bins)
    assert torch.allclose(heights, torch.full_like(heights, 33.15), atol=0.01)
