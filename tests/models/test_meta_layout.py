"""Meta's DINOv3 ``.pth`` layout, checked against references xchm did not write.

``xchm.testing.export_meta_state_dict`` writes Meta's layout from a timm backbone, so a
test that loads its output back only shows that xchm's writer and loader agree: a
misreading they share passes. Here the state dict is built from a key table written
from Meta's source, and the backbone xchm loads from it is compared with transformers'
``DINOv3ViTModel`` fed through transformers' own conversion of Meta's keys: two
implementations that share no code with xchm's loader (which uses timm's filter).
"""

import pytest
import torch

import xchm
from xchm.models.backbone import backbone_features, build_backbone
from xchm.models.presets import Preset, get_preset
from xchm.models.weights import load_backbone_weights

from ..conftest import in_ci

RGB = ("red", "green", "blue")  # identity band map: the backbone is the file's backbone


# Meta's DINOv3 ViT state-dict keys and shapes, written from Meta's source, not from xchm:
# github.com/facebookresearch/dinov3 at 6876159a11b4df116f30f667f8c9888617df0751
#   dinov3/models/vision_transformer.py  DinoVisionTransformer.__init__: cls_token
#       (1, 1, D); storage_tokens (1, n_storage_tokens, D); mask_token (1, D), 2-D;
#       patch_embed; rope_embed; blocks.N; norm; local_cls_norm only with
#       untie_global_and_local_cls_norm (the SAT-493M ViT-L and the ViT-7B files)
#   dinov3/layers/patch_embed.py  PatchEmbed.proj = nn.Conv2d(in_chans, D, 16, stride 16)
#   dinov3/layers/rope_position_encoding.py  buffer "periods" (D_head // 4,), persistent
#   dinov3/layers/block.py  SelfAttentionBlock: norm1, attn, ls1, norm2, mlp, ls2
#   dinov3/layers/attention.py  SelfAttention.qkv = LinearKMaskedBias(D, 3D) with the
#       buffer bias_mask (3D,) when qkv_bias (mask_k_bias=True); proj = nn.Linear(D, D)
#   dinov3/layers/layer_scale.py  LayerScale.gamma (D,)
#   dinov3/layers/ffn_layers.py  Mlp.fc1 (H, D), fc2 (D, H); SwiGLUFFN.w1, w2 (H, D), w3 (D, H)
# Checked when written: for the ViT-L/16 SAT-493M arguments of dinov3/hub/backbones.py
# this table equals the keys and shapes of DinoVisionTransformer(...).state_dict() (370
# keys: the count of the released dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth).
def meta_vit_keys(
    *,
    dim: int,
    depth: int,
    heads: int,
    ffn_hidden: int,
    swiglu: bool = False,
    qkv_bias: bool = True,
    storage_tokens: int = 4,
    local_cls_norm: bool = False,
) -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim),
        "storage_tokens": (1, storage_tokens, dim),
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, 16, 16),
        "patch_embed.proj.bias": (dim,),
        "rope_embed.periods": (dim // heads // 4,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        keys[b + "norm1.weight"] = keys[b + "norm1.bias"] = (dim,)
        keys[b + "attn.qkv.weight"] = (3 * dim, dim)
        if qkv_bias:
            keys[b + "attn.qkv.bias"] = keys[b + "attn.qkv.bias_mask"] = (3 * dim,)
        keys[b + "attn.proj.weight"] = (dim, dim)
        keys[b + "attn.proj.bias"] = keys[b + "ls1.gamma"] = (dim,)
        keys[b + "norm2.weight"] = keys[b + "norm2.bias"] = (dim,)
        for name in ("w1", "w2") if swiglu else ("fc1",):
            keys[b + f"mlp.{name}.weight"] = (ffn_hidden, dim)
            keys[b + f"mlp.{name}.bias"] = (ffn_hidden,)
        out = "w3" if swiglu else "fc2"
        keys[b + f"mlp.{out}.weight"] = (dim, ffn_hidden)
        keys[b + f"mlp.{out}.bias"] = keys[b + "ls2.gamma"] = (dim,)
    keys["norm.weight"] = keys["norm.bias"] = (dim,)
    if local_cls_norm:
        keys["local_cls_norm.weight"] = keys["local_cls_norm.bias"] = (dim,)
    return keys


def meta_state_dict(keys: dict[str, tuple[int, ...]], *, seed: int = 0) -> dict:
    """Random tensors under Meta's names, set up as Meta's model sets them up."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in keys.items():
        if key.endswith(("gamma", "norm1.weight", "norm2.weight", "norm.weight")):
            state[key] = 0.5 + torch.rand(shape, generator=g)  # scales near 1
        elif key.endswith(".bias_mask"):
            # init_weights_vit: ones, the key third zero (the key bias is masked out).
            mask = torch.ones(shape)
            mask[shape[0] // 3 : 2 * shape[0] // 3] = 0
            state[key] = mask
        elif key == "rope_embed.periods":
            # RopePositionEmbedding._init_weights with base 100 (fp32, as HF recomputes it).
            d_head = shape[0] * 4
            state[key] = 100.0 ** (2 * torch.arange(shape[0]) / (d_head // 2))
        else:
            std = 0.2 if len(shape) == 1 or key.endswith("_token") else 0.05
            state[key] = torch.randn(shape, generator=g) * std
    return state


# Where transformers' DINOv3ViTModel keeps each Meta tensor. The correspondence (names,
# the split of qkv, the tensors it does not load, mask_token's extra axis, the "model."
# prefix transformers >= 5 adds to "layer.") was read from transformers'
# src/transformers/models/dinov3_vit/convert_dinov3_vit_to_hf.py at a77460f2, whose output
# is checked there against Meta's own features for every released model, and from its
# conversion_mapping.py. This code is ours, written from that correspondence.
_TOP_LEVEL = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "storage_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
_IN_BLOCK = {  # Meta module in blocks.N -> transformers module in model.layer.N
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.o_proj",
    "ls1": "layer_scale1",
    "ls2": "layer_scale2",
    "mlp.fc1": "mlp.up_proj",
    "mlp.fc2": "mlp.down_proj",
    "mlp.w1": "mlp.gate_proj",
    "mlp.w2": "mlp.up_proj",
    "mlp.w3": "mlp.down_proj",
}
_PARAM = {"weight": "weight", "bias": "bias", "gamma": "lambda1"}


def meta_to_transformers(meta: dict) -> dict:
    """Meta's state dict under transformers' names (what transformers does not load dropped:
    the key-bias mask, the key bias, the local CLS norm and the RoPE periods it recomputes)."""
    out = {}
    for key, value in meta.items():
        if key.endswith("bias_mask") or key.startswith(("local_cls_norm.", "rope_embed.")):
            continue
        if key in _TOP_LEVEL:
            out[_TOP_LEVEL[key]] = value.unsqueeze(1) if key == "mask_token" else value
            continue
        _, index, rest = key.split(".", 2)
        module, param = rest.rsplit(".", 1)
        prefix = f"model.layer.{index}."
        if module == "attn.qkv":
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                if not (name == "k_proj" and param == "bias"):
                    out[f"{prefix}attention.{name}.{param}"] = part
            continue
        out[f"{prefix}{_IN_BLOCK[module]}.{_PARAM[param]}"] = value
    return out


ARCHS = {
    # test-tiny: timm's ViT-L/16 DINOv3 (qkv biases, GELU MLP), with the SAT files'
    # local_cls_norm.
    "vit-l (test-tiny)": dict(
        dim=64, depth=4, heads=4, ffn_hidden=256, local_cls_norm=True, hidden_act="gelu"
    ),
    # The ViT-7B preset's architecture at test size: no qkv bias, SwiGLU (ffn_ratio 3,
    # aligned to 64: int(64 * 3 * 2 / 3) = 128).
    "vit-7b (tiny)": dict(
        dim=64,
        depth=2,
        heads=4,
        ffn_hidden=128,
        swiglu=True,
        qkv_bias=False,
        local_cls_norm=True,
        hidden_act="silu",
    ),
}


_TINY_7B = Preset(
    name="tiny-7b",
    timm_name="vit_7b_patch16_dinov3",
    timm_kwargs={"embed_dim": 64, "depth": 2, "num_heads": 4, "init_values": 1.0},
    embed_dim=64,
    depth=2,
)


def _xchm_backbone(arch: str, path, *, public: bool = True):
    """The backbone xchm loads from ``path``: through ``xchm.load_model`` for test-tiny
    (``public``), else straight through the loader load_model uses."""
    if arch == "vit-l (test-tiny)" and public:
        return xchm.load_model("test-tiny", weights=path, bands=RGB).backbone
    preset = get_preset("test-tiny") if arch == "vit-l (test-tiny)" else _TINY_7B
    backbone = build_backbone(preset, 64, empty=True)
    assert load_backbone_weights(backbone, path) == "meta"
    return backbone.eval()


def _transformers_model(arch: str, meta: dict):
    try:
        import transformers
    except ImportError:
        reason = "transformers (the dev extra) is needed for the independent reference"
        if in_ci():
            pytest.fail(f"CI must run this check, but {reason}")
        pytest.skip(reason)
    a = ARCHS[arch]
    config = transformers.DINOv3ViTConfig(
        hidden_size=a["dim"],
        num_hidden_layers=a["depth"],
        num_attention_heads=a["heads"],
        intermediate_size=a["ffn_hidden"],
        use_gated_mlp=a.get("swiglu", False),
        hidden_act=a["hidden_act"],
        query_bias=a.get("qkv_bias", True),
        value_bias=a.get("qkv_bias", True),
        num_register_tokens=4,
        image_size=64,
        patch_size=16,
        layer_norm_eps=1e-5,
    )
    model = transformers.DINOv3ViTModel(config).eval()
    model.load_state_dict(meta_to_transformers(meta), strict=True)
    return model


def test_meta_key_table__vitl_sat_has_the_released_files_keys():
    """The table reproduces the released ViT-L SAT file's key count and top level."""
    keys = meta_vit_keys(dim=1024, depth=24, heads=16, ffn_hidden=4096, local_cls_norm=True)
    assert len(keys) == 370
    top = {k.rsplit(".", 1)[0] for k in keys if not k.startswith("blocks.")}
    assert top == {
        "cls_token",
        "storage_tokens",
        "mask_token",
        "patch_embed.proj",
        "rope_embed",
        "norm",
        "local_cls_norm",
    }
    assert keys["rope_embed.periods"] == (16,)
    assert keys["blocks.23.attn.qkv.bias_mask"] == (3072,)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_load_meta_weights__features_match_transformers(tmp_path, arch):
    a = ARCHS[arch]
    keys = meta_vit_keys(**{k: v for k, v in a.items() if k != "hidden_act"})
    meta = meta_state_dict(keys, seed=1)
    # Meta's model multiplies the key bias by the zero mask: a loader must drop it.
    assert all(meta[k].abs().sum() > 0 for k in meta if k.endswith("qkv.bias"))
    torch.save(meta, tmp_path / "dinov3_meta.pth")
    ours = _xchm_backbone(arch, tmp_path / "dinov3_meta.pth")
    reference = _transformers_model(arch, meta)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        got = backbone_features(ours, x, [a["depth"] - 1])[0]
        hidden = reference(pixel_values=x).last_hidden_state  # final norm applied
        expected = hidden[:, 5:].transpose(1, 2).reshape(2, a["dim"], 4, 4)
    assert got.abs().mean() > 0.1  # informative features: a test of a constant is vacuous
    torch.testing.assert_close(got, expected, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_load_meta_weights__every_used_meta_tensor_matters(tmp_path, arch):
    """Change one Meta tensor at a time: the features move, except for the tensors
    Meta's model does not use at inference: the mask token and the local CLS norm
    (pretraining only), the key-bias mask and the key bias (it adds q.b_k to every
    logit of a query, which softmax ignores)."""
    a = ARCHS[arch]
    keys = meta_vit_keys(**{k: v for k, v in a.items() if k != "hidden_act"})
    meta = meta_state_dict(keys, seed=3)
    torch.save(meta, tmp_path / "base.pth")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        base = backbone_features(
            _xchm_backbone(arch, tmp_path / "base.pth", public=False), x, [a["depth"] - 1]
        )
    unused = ("mask_token", "local_cls_norm.")
    probes = [k for k in keys if not k.startswith("blocks.") or k.startswith("blocks.0.")]
    for key in probes:
        changed = dict(meta)
        if key.endswith("qkv.bias"):  # change the query third only (the key third is unused)
            changed[key] = meta[key].clone()
            changed[key][: a["dim"]] += 0.5
        else:
            changed[key] = meta[key] * 1.5 + 0.1
        torch.save(changed, tmp_path / "changed.pth")
        with torch.inference_mode():
            ours = _xchm_backbone(arch, tmp_path / "changed.pth", public=False)
            feats = backbone_features(ours, x, [a["depth"] - 1])
        moved = not torch.equal(feats[0], base[0])
        assert moved == (not key.startswith(unused) and not key.endswith("bias_mask")), key
