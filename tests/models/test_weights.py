import pickle

import pytest
import torch
from safetensors.torch import save_file

import xchm
from xchm.errors import WeightsError
from xchm.models.backbone import backbone_features
from xchm.testing import export_meta_state_dict, random_backbone, write_meta_weights

RGB = ("red", "green", "blue")  # identity band map: the backbone is the file's backbone


def _assert_same_backbone(model, reference, skip=()):
    ours = model.backbone.state_dict()
    theirs = reference.state_dict()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if key in skip:
            continue
        assert torch.equal(ours[key], value), key


# -- Meta's layout ----------------------------------------------------------------------
def test_export_meta_state_dict__uses_metas_key_names():
    keys = set(export_meta_state_dict(random_backbone("test-tiny")))
    for key in (
        "cls_token",
        "storage_tokens",
        "mask_token",
        "rope_embed.periods",
        "patch_embed.proj.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.qkv.bias_mask",
        "blocks.0.ls1.gamma",
        "blocks.3.ls2.gamma",
        "blocks.0.mlp.fc1.weight",
        "norm.weight",
    ):
        assert key in keys, key
    assert not any("reg_token" in k or "gamma_1" in k or "q_bias" in k for k in keys)


def test_load_model__meta_weights_round_trip_exact(tmp_path):
    reference = write_meta_weights(tmp_path / "dinov3_meta.pth", "test-tiny", seed=3)
    model = xchm.load_model("test-tiny", weights=tmp_path / "dinov3_meta.pth", bands=RGB)
    _assert_same_backbone(model, reference, skip={"rope.periods", "rope.pos_embed_cached"})
    assert model.card.provenance["weights_layout"] == "meta"


def test_load_model__meta_weights_keep_stored_rope_periods(tmp_path):
    write_meta_weights(tmp_path / "w.pth")
    stored = torch.load(tmp_path / "w.pth", weights_only=True)["rope_embed.periods"]
    model = xchm.load_model("test-tiny", weights=tmp_path / "w.pth", bands=RGB)
    assert stored.dtype == torch.bfloat16
    assert torch.equal(model.backbone.rope.periods, stored.float())
    fp32 = random_backbone("test-tiny").rope.periods
    assert not torch.equal(fp32, stored.float())  # the test would be vacuous otherwise


def test_load_model__meta_features_match_source_backbone(tmp_path):
    reference = write_meta_weights(tmp_path / "w.pth")
    stored = torch.load(tmp_path / "w.pth", weights_only=True)["rope_embed.periods"]
    from xchm.models.backbone import set_rope_periods

    set_rope_periods(reference, stored.float())
    model = xchm.load_model("test-tiny", weights=tmp_path / "w.pth", bands=RGB)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = backbone_features(reference, x, [3])[0]
        assert torch.equal(model.features(x)[0], expected)


def test_load_model__meta_key_bias_is_dropped(tmp_path):
    """Meta masks the key bias to zero: a non-zero stored key bias must not leak in."""
    backbone = random_backbone("test-tiny")
    state = export_meta_state_dict(backbone)
    state["blocks.0.attn.qkv.bias"][64:128] = 100.0
    torch.save(state, tmp_path / "w.pth")
    model = xchm.load_model("test-tiny", weights=tmp_path / "w.pth", bands=RGB)
    assert torch.equal(model.backbone.blocks[0].attn.k_bias, torch.zeros(64))


def test_load_model__meta_weights_in_training_wrapper(tmp_path):
    reference = random_backbone("test-tiny", seed=5)
    wrapped = {
        "teacher": {f"backbone.{k}": v for k, v in export_meta_state_dict(reference).items()}
    }
    torch.save(wrapped, tmp_path / "teacher.pth")
    model = xchm.load_model("test-tiny", weights=tmp_path / "teacher.pth", bands=RGB)
    assert torch.equal(model.backbone.cls_token, reference.cls_token)


# -- Hugging Face snapshot (built with the real transformers model) -------------------
@pytest.fixture(scope="module")
def hf_snapshot(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    config = transformers.DINOv3ViTConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        image_size=64,
        patch_size=16,
        num_register_tokens=4,
        layerscale_value=1.0,
        layer_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    hf = transformers.DINOv3ViTModel(config).eval()
    with torch.no_grad():  # make every tensor informative (HF inits some to 0/1)
        for name, p in hf.named_parameters():
            if "mask_token" not in name:
                p.normal_(0.0, 0.2 if p.ndim == 1 else 0.05)
    folder = tmp_path_factory.mktemp("hf") / "dinov3-tiny"
    hf.save_pretrained(folder)
    return folder, hf


def test_load_model__hf_snapshot_features_match_transformers(hf_snapshot):
    folder, hf = hf_snapshot
    model = xchm.load_model("test-tiny", weights=folder, bands=RGB)
    assert model.card.provenance["weights_layout"] == "hf"
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        hidden = hf(pixel_values=x).last_hidden_state  # final norm applied
        expected = hidden[:, 5:].transpose(1, 2).reshape(2, 64, 4, 4)
        torch.testing.assert_close(model.features(x)[0], expected, atol=2e-5, rtol=1e-5)


def test_load_model__hf_snapshot_tensors_exact(hf_snapshot):
    folder, hf = hf_snapshot
    model = xchm.load_model("test-tiny", weights=folder, bands=RGB)
    hf_sd = hf.state_dict()
    attn = (
        "model.layer.1.attention."
        if "model.layer.1.norm1.weight" in hf_sd
        else "layer.1.attention."
    )
    qkv = torch.cat([hf_sd[attn + f"{n}_proj.weight"] for n in "qkv"])
    block = model.backbone.blocks[1]
    assert torch.equal(block.attn.qkv.weight, qkv)
    assert torch.equal(block.attn.q_bias, hf_sd[attn + "q_proj.bias"])
    assert torch.equal(block.attn.v_bias, hf_sd[attn + "v_proj.bias"])
    assert torch.equal(model.backbone.reg_token, hf_sd["embeddings.register_tokens"])


# -- timm checkpoints ----------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_model__timm_checkpoint_round_trip_exact(tmp_path, suffix):
    reference = random_backbone("test-tiny", seed=7)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("rope.")}
    path = tmp_path / f"timm{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    model = xchm.load_model("test-tiny", weights=path, bands=RGB)
    assert model.card.provenance["weights_layout"] == "timm"
    _assert_same_backbone(model, reference)


def test_load_model__timm_snapshot_folder(tmp_path):
    reference = random_backbone("test-tiny", seed=8)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("rope.")}
    (tmp_path / "snap").mkdir()
    save_file(state, str(tmp_path / "snap" / "model.safetensors"))
    (tmp_path / "snap" / "config.json").write_text(
        '{"architecture": "vit_large_patch16_dinov3_qkvb"}'
    )
    model = xchm.load_model("test-tiny", weights=tmp_path / "snap", bands=RGB)
    _assert_same_backbone(model, reference)


# -- bad files -----------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_load_model__refuses_to_unpickle_objects(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"cls_token": _Payload()}, f)
    with pytest.raises(WeightsError, match="weights_only"):
        xchm.load_model("test-tiny", weights=path)
    assert "pwned" not in capsys.readouterr().out


def test_load_model__garbage_file(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(b"\x00\x01 not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="cannot read"):
        xchm.load_model("test-tiny", weights=path)


def test_load_model__not_a_dinov3_state_dict(tmp_path):
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match="not a DINOv3 backbone"):
        xchm.load_model("test-tiny", weights=tmp_path / "resnet.pth")


def test_load_model__weights_of_another_size(tmp_path):
    torch.save(export_meta_state_dict(random_backbone("test-tiny")), tmp_path / "tiny.pth")
    with pytest.raises(WeightsError, match=r"64-wide, 4-block ViT.*shape mismatch"):
        xchm.load_model("dinov3-vits16", weights=tmp_path / "tiny.pth")


def test_load_model__missing_weights_path(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        xchm.load_model("test-tiny", weights=tmp_path / "missing.pth")


def test_load_model__empty_folder_as_weights(tmp_path):
    with pytest.raises(WeightsError, match="model.safetensors"):
        xchm.load_model("test-tiny", weights=tmp_path)


def test_build_backbone__empty_build_has_valid_buffers():
    """Loading skips random init; the RoPE table and zero key bias must still be right."""
    from xchm.models.backbone import build_backbone
    from xchm.models.presets import get_preset

    preset = get_preset("test-tiny")
    normal = build_backbone(preset, 64)
    empty = build_backbone(preset, 64, empty=True)
    for name, buffer in normal.named_buffers():
        assert torch.equal(dict(empty.named_buffers())[name], buffer), name
