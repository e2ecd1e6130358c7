"""PretrainConfig, multi-crop views and the DINO head/loss (CPU)."""

from __future__ import annotations

import pytest
import torch

from xchm.errors import InputError
from xchm.pretraining import PretrainConfig
from xchm.pretraining.augment import multicrop
from xchm.pretraining.heads import DINOHead, DINOLoss, cosine_schedule, koleo_loss


def test_pretrainconfig__rejects_bad_values_at_once():
    with pytest.raises(InputError, match="epochs.*momentum_start"):
        PretrainConfig(epochs=0, momentum_start=1.5)


def test_pretrainconfig__round_trip_and_unknown_fields():
    cfg = PretrainConfig(epochs=3, local_crops=2)
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="learning_rate"):
        PretrainConfig.from_dict({"learning_rate": 1.0})


def test_multicrop__shapes_and_determinism():
    x = torch.randn(4, 3, 64, 64)
    cfg = PretrainConfig(local_crops=3)
    a = multicrop(x, cfg, generator=torch.Generator().manual_seed(1))
    b = multicrop(x, cfg, generator=torch.Generator().manual_seed(1))
    assert a[0].shape == (8, 3, 64, 64) and a[1] is not None and a[1].shape == (12, 3, 64, 64)
    assert torch.equal(a[0], b[0])


def test_dino_loss__center_moves_towards_teacher_mean():
    loss = DINOLoss(8, center_momentum=0.5)
    teacher = torch.ones(6, 8)
    loss.update_center(teacher)
    torch.testing.assert_close(loss.center, torch.full((1, 8), 0.5))


def test_dino_head__student_learns_to_match_teacher():
    torch.manual_seed(0)
    head = DINOHead(16, 32, hidden=32, bottleneck=8)
    crit = DINOLoss(32)
    x = torch.randn(3 * 8, 16)
    target = torch.randn(2 * 8, 32) * 5
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    first = None
    for _ in range(50):
        value = crit(head(x), target, n_views=3, teacher_temp=0.04)
        first = float(value.detach()) if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    assert float(value.detach()) < first


def test_koleo_and_cosine_schedule():
    assert float(koleo_loss(torch.eye(4))) < 0
    assert cosine_schedule(0.996, 1.0, 5, 10) == pytest.approx(0.998)


def test_param_groups__layer_decay_scales_the_backbone_by_depth():
    import xchm
    from xchm.pretraining.network import SelfDistillationNet
    from xchm.pretraining.trainer import _param_groups

    heads = PretrainConfig(out_dim=32, head_hidden=16, head_bottleneck=8)
    net = SelfDistillationNet(xchm.load_model("test-tiny").backbone, heads)  # 4 blocks
    net.requires_grad_(True)  # as the student: every parameter trains
    cfg = PretrainConfig(layer_decay=0.5, backbone_lr_scale=0.1, weight_decay=0.04)
    scale = {}
    for group in _param_groups(net, cfg):
        for p in group["params"]:
            scale[id(p)] = (group["lr_scale"], group["weight_decay"])
    named = dict(net.named_parameters())
    # DINOv2/DINOv3's convention: the last block one step below the final norm.
    assert scale[id(named["backbone.patch_embed.proj.weight"])] == (0.1 * 0.5**5, 0.04)
    assert scale[id(named["backbone.cls_token"])] == (0.1 * 0.5**5, 0.0)
    assert scale[id(named["backbone.blocks.0.attn.qkv.weight"])] == (0.1 * 0.5**4, 0.04)
    assert scale[id(named["backbone.blocks.3.norm1.bias"])] == (0.1 * 0.5, 0.0)
    assert scale[id(named["backbone.norm.weight"])] == (0.1, 0.0)
    assert scale[id(named["head.mlp.0.weight"])] == (1.0, 0.04)
    assert scale[id(named["head.prototypes"])] == (1.0, 0.0)
    assert scale[id(named["mask_token"])] == (1.0, 0.0)
    assert len(scale) == len(named)  # every parameter in exactly one group
    off = _param_groups(net, PretrainConfig())
    assert sorted(g["lr_scale"] for g in off) == [1.0] * 4  # no decay: 4 groups, one rate


def test_pretrainconfig__layer_decay_must_be_in_0_1():
    with pytest.raises(InputError, match="layer_decay"):
        PretrainConfig(layer_decay=0.0)
    with pytest.raises(InputError, match="layer_decay"):
        PretrainConfig(layer_decay=1.5)
