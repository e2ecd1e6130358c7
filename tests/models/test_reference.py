"""The reference project's checkpoints: load, import, export (issue 19).

The reference model is rebuilt here from its documented architecture
(``../shared/docs/REFERENCE_CHECKPOINT.md``): transformers' real ``DINOv3ViTModel``
(tiny config) as the backbone and a small torch replica of its CNN decoder, written
from the doc (its convolutions have biases; xchm's do not). Weights are random and
non-trivial: conv biases, BatchNorm statistics from train-mode batches, an output
conv that spreads heights over metres.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import xchm
from xchm.cli import main
from xchm.errors import InputError, OutputExistsError, WeightsError
from xchm.models import reference, reference_io
from xchm.models.card import REFERENCE_STATISTICS
from xchm.models.decoder import CHMDecoder

transformers = pytest.importorskip("transformers")

WIDTHS, HEAD, REDUCTION = (32, 16, 8, 8), (16, 8, 8), 4


# -- a replica of the reference model (DINOv3DepthHead), from the doc ---------------
class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.attention(x)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, attention: bool, reduction: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)  # with bias, as the reference
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.activation = nn.LeakyReLU(0.1)
        self.dropout = nn.Dropout2d(0.1)
        self.attention = ChannelAttention(channels, reduction) if attention else None

    def forward(self, x):
        out = self.dropout(self.activation(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        if self.attention is not None:
            out = self.attention(out)
        return self.activation(out + x)


def depth_head(c_in, widths=WIDTHS, head=HEAD, reduction=REDUCTION, attention=(2, 3)):
    layers = []
    for i, c in enumerate(widths):
        layers.append(
            nn.Sequential(
                nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1),
                nn.BatchNorm2d(c),
                nn.LeakyReLU(0.1),
                nn.Dropout2d(0.1),
            )
        )
        layers.append(
            nn.Sequential(*(ResidualBlock(c, i in attention, reduction) for _ in range(2)))
        )
        c_in = c
    h1, h2, h3 = head
    layers.append(
        nn.Sequential(
            nn.Conv2d(c_in, h1, 3, padding=1),
            nn.BatchNorm2d(h1),
            nn.LeakyReLU(0.1),
            nn.Dropout2d(0.1),
            ChannelAttention(h1, reduction),
            nn.Conv2d(h1, h2, 3, padding=1),
            nn.BatchNorm2d(h2),
            nn.LeakyReLU(0.1),
            nn.Dropout2d(0.1),
            nn.Conv2d(h2, h3, 3, padding=1),
            nn.BatchNorm2d(h3),
            nn.LeakyReLU(0.1),
            nn.Conv2d(h3, 1, 1),
        )
    )
    return nn.Sequential(*layers)


class DINOv3DepthHead(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = backbone
        self.depth_head = head

    def forward(self, x):
        with torch.no_grad():
            tokens = self.backbone(pixel_values=x).last_hidden_state[:, 5:21]
        b, n, d = tokens.shape
        features = tokens.transpose(1, 2).reshape(b, d, 4, 4)
        return self.depth_head(features).squeeze(1).clamp(min=0)


def randomize_head(head: nn.Module, seed: int, features: torch.Tensor | None = None) -> None:
    """Random biases and BN affines, BN statistics from train-mode batches, spread heights.

    ``features`` are the decoder inputs the statistics come from (default random ones).
    """
    gen = torch.Generator().manual_seed(seed)
    if features is None:
        c_in = head[0][0].in_channels
        features = torch.randn(8, c_in, 2, 2, generator=gen) * 2 + 0.3  # small: fast
    with torch.no_grad():
        for module in head.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.5)
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)
        head.train()
        for part in features.split(8):
            head(part)
        head.eval()
        out = head[-1][-1]
        out.weight.copy_(torch.randn(out.weight.shape, generator=gen))
        out.bias.zero_()
        spread = head(features).std()  # scale the output so heights spread over metres
        out.weight.mul_(3.0 / max(float(spread), 1e-6))
        out.bias.fill_(8.42)


def build_replica(seed: int = 0) -> DINOv3DepthHead:
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
    torch.manual_seed(seed)
    backbone = transformers.DINOv3ViTModel(config)
    with torch.no_grad():  # make every tensor informative (HF inits some to 0/1)
        for name, p in backbone.named_parameters():
            if "mask_token" not in name:
                p.normal_(0.0, 0.2 if p.ndim == 1 else 0.05)
    backbone.eval()  # (train mode rescales RoPE at random)
    with torch.no_grad():
        images = torch.randn(24, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
        tokens = backbone(pixel_values=images).last_hidden_state[:, 5:21]
    features = tokens.transpose(1, 2).reshape(24, 64, 4, 4)
    head = depth_head(64)
    randomize_head(head, seed, features)
    return DINOv3DepthHead(backbone, head).eval()


def to_4x(state):
    """Rename transformers 5.x keys (``backbone.model.layer.N``) to 4.x's (``backbone.layer.N``)."""
    return {k.replace("backbone.model.layer.", "backbone.layer."): v for k, v in state.items()}


def save_reference(replica, path, *, layout="4.x", **extra):
    """Save as the reference's training does (a dict with optimizer state and metrics)."""
    state = replica.state_dict()
    assert any(k.startswith("backbone.model.layer.") for k in state)  # transformers 5.x
    optimizer = torch.optim.AdamW(replica.depth_head.parameters(), lr=5e-5)
    replica.depth_head[-1][-1].bias.grad = torch.ones(1)
    optimizer.step()  # moments exist, as in a real file
    optimizer.zero_grad()
    ckpt = {
        "epoch": 7,
        "model_state_dict": to_4x(state) if layout == "4.x" else state,
        "optimizer_state_dict": optimizer.state_dict(),
        "train_loss": 1.25,
        "val_loss": np.float64(1.5),  # a NumPy scalar: refused by plain weights_only
        "val_mae": 1.3,
        "train_losses": [2.0, 1.25],
        "val_losses": [2.1, 1.5],
        "model_config": {
            "model_type": "large",
            "model_name": "facebook/dinov3-vitl16-pretrain-sat493m",
            "embed_dim": 64,
            "total_tokens": 21,
            "description": "replica",
        },
        **extra,
    }
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def replica():
    return build_replica()


@pytest.fixture(scope="module")
def files(replica, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    return {
        layout: save_reference(replica, folder / f"best_dinov3_{layout}.pth", layout=layout)
        for layout in ("4.x", "5.x")
    }


@pytest.fixture(scope="module")
def batch():
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def heights(model, x):
    with torch.inference_mode():
        return model(x)[:, 0]


# -- loading --------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["4.x", "5.x"])
def test_load_model__reference_heights_match_the_replica(files, replica, batch, layout):
    model = xchm.load_model(files[layout])
    with torch.inference_mode():
        expected = replica(batch)
    assert expected.std() > 1.0  # heights spread over metres: the comparison means something
    assert (heights(model, batch) - expected).abs().max() <= 1e-3


def test_load_model__reference_without_the_bias_fold_is_off_by_metres(
    files, replica, batch, monkeypatch
):
    monkeypatch.setattr(reference, "_fold", lambda running_mean, bias: running_mean)
    model = xchm.load_model(files["4.x"])
    with torch.inference_mode():
        expected = replica(batch)
    assert (heights(model, batch) - expected).abs().max() > 0.5


def test_load_model__reference_card(files):
    model = xchm.load_model(files["4.x"])
    card = model.card
    assert card.bands == ("nir", "red", "green")
    assert card.statistics == tuple(REFERENCE_STATISTICS[b] for b in card.bands)
    assert card.band_map == (2, 2, 1) and card.window == 64 and card.pixel_size == 2.0
    assert card.preset == "test-tiny"  # the replica's backbone is test-tiny's shape
    prov = card.provenance
    digest = hashlib.sha256(files["4.x"].read_bytes()).hexdigest()
    assert prov["weights"] == "best_dinov3_4.x.pth" and prov["weights_sha256"] == digest
    assert prov["epoch"] == 7 and prov["val_loss"] == 1.5 and prov["val_mae"] == 1.3
    assert prov["model_config"]["description"] == "replica"
    assert "optimizer_state_dict" not in prov and "train_losses" not in prov


def test_load_model__reference_patch_embedding_taken_as_saved(files, replica):
    model = xchm.load_model(files["4.x"])
    saved = replica.backbone.embeddings.patch_embeddings.weight
    assert torch.equal(model.backbone.patch_embed.proj.weight, saved)


def test_load_model__reference_options(files, batch):
    model = xchm.load_model(files["4.x"], bands=("red", "green", "blue"), pixel_size=0.5)
    assert model.card.bands == ("red", "green", "blue") and model.card.pixel_size == 0.5
    with pytest.raises(InputError, match=r"\['weights', 'band_map'\] cannot change"):
        xchm.load_model(files["4.x"], weights=files["5.x"], band_map="reference")


def test_read_reference__tensors_and_plain_metadata(files):
    tensors, meta = reference.read_reference(files["4.x"])
    # 183 decoder tensors, as the real files; 75 for this 4-block backbone (415 for ViT-L).
    assert sum(k.startswith("depth_head.") for k in tensors) == 183
    assert sum(k.startswith("backbone.") for k in tensors) == 75
    assert set(meta) == {"epoch", "train_loss", "val_loss", "val_mae", "model_config"}
    assert type(meta["val_loss"]) is float  # the NumPy scalar, read safely, as a number


@settings(max_examples=10, deadline=None)
@given(
    widths=st.lists(st.integers(1, 8), min_size=4, max_size=4),
    head=st.lists(st.integers(2, 8), min_size=3, max_size=3),
    reduction=st.integers(1, 6),
    attention=st.sets(st.integers(0, 3)),
    seed=st.integers(0, 2**16),
)
def test_decoder_mapping__exact_for_any_widths(widths, head, reduction, attention, seed):
    """The key table and the fold hold for every decoder shape, not only the preset's."""
    replica_head = depth_head(
        6, tuple(widths), tuple(head), reduction, attention=tuple(sorted(attention))
    )
    randomize_head(replica_head, seed)
    mapped = {f"depth_head.{k}": v for k, v in replica_head.state_dict().items()}
    spec, state = reference._decoder_from_reference(mapped, "test")
    decoder = CHMDecoder(6, 1, spec, output_bias=0.0)
    decoder.load_state_dict({k[len("decoder.") :]: v for k, v in state.items()}, strict=True)
    decoder.eval()
    x = torch.randn(2, 6, 2, 2, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = replica_head(x).squeeze(1).clamp(min=0)
        got = decoder([x])[:, 0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# -- import (once, into an xchm checkpoint) ---------------------------------------------
@pytest.fixture(scope="module")
def imported(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "chm"
    assert main(["models", "import", str(files["4.x"]), "-o", str(out)]) == 0
    return out


def test_models_import__checkpoint_equals_the_file(imported, files, batch):
    again = xchm.load_model(imported)
    assert torch.equal(heights(again, batch), heights(xchm.load_model(files["4.x"]), batch))
    assert again.card == xchm.load_model(files["4.x"]).card


def test_models_import__later_loads_need_no_transformers(imported):
    code = "import sys, xchm; xchm.load_model(sys.argv[1]); print('transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code, str(imported)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_models_import__refuses_to_overwrite(imported, files, capsys):
    before = (imported / "card.json").read_bytes()
    assert main(["models", "import", str(files["5.x"]), "-o", str(imported)]) == 1
    assert "holds an xchm checkpoint; pass overwrite=True (CLI: --overwrite)" in (
        capsys.readouterr().err
    )
    assert (imported / "card.json").read_bytes() == before


def test_import_reference__overwrite_replaces_a_checkpoint(files, tmp_path):
    reference_io.import_reference(files["4.x"], tmp_path / "chm")
    reference_io.import_reference(files["5.x"], tmp_path / "chm", overwrite=True)
    card = xchm.load_model(tmp_path / "chm").card
    assert card.provenance["weights"] == "best_dinov3_5.x.pth"


def test_import_reference__never_touches_other_files(files, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty and not an xchm checkpoint"):
        reference_io.import_reference(files["4.x"], tmp_path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_import_reference__object_store(files, s3, batch):
    """Both ends by URL: the .pth from a bucket, the checkpoint into one."""
    s3.put("in/best_dinov3.pth", files["4.x"].read_bytes())
    source, target = f"{s3.url}/in/best_dinov3.pth", f"{s3.url}/models/chm"
    reference_io.import_reference(source, target)
    model = xchm.load_model(target)
    assert model.card.provenance["weights_url"] == source
    assert torch.equal(heights(model, batch), heights(xchm.load_model(files["4.x"]), batch))
    with pytest.raises(OutputExistsError):
        reference_io.import_reference(source, target)


# -- export (back into the reference's format) ------------------------------------------
def test_models_export__round_trip(imported, tmp_path, batch):
    out = tmp_path / "exported.pth"
    args = ["models", "export", str(imported), "--format", "reference", "-o", str(out)]
    assert main(args) == 0
    model, again = xchm.load_model(imported), xchm.load_model(out)
    assert torch.equal(heights(again, batch), heights(model, batch))
    assert again.card.bands == model.card.bands and again.card.band_map == (2, 2, 1)
    assert again.card.statistics == model.card.statistics
    assert main(args) == 1  # exists: refused without --overwrite
    assert main([*args, "--overwrite"]) == 0


def test_export_reference__loads_strictly_into_the_reference_model(imported, tmp_path, batch):
    """The reference's own loader (load_state_dict strict) takes the file: same heights."""
    out = reference_io.export_reference(imported, tmp_path / "best.pth")
    saved = torch.load(out, weights_only=True)
    state = saved["model_state_dict"]
    assert any(k.startswith("backbone.layer.0.") for k in state)  # transformers 4.x keys
    assert saved["model_config"]["embed_dim"] == 64 and saved["model_config"]["total_tokens"] == 21
    target = build_replica(seed=3)
    target.load_state_dict(  # this transformers (5.x) names its layers model.layer.N
        {k.replace("backbone.layer.", "backbone.model.layer."): v for k, v in state.items()},
        strict=True,
    )
    with torch.inference_mode():
        expected = target.eval()(batch)
    assert (heights(xchm.load_model(imported), batch) - expected).abs().max() <= 1e-3


def test_export_reference__a_model_trained_in_xchm(tmp_path, batch):
    """An xchm model (another band order, own statistics) keeps its card through the file."""
    stats = {b: {"clip_max": 255.0, "mean": 0.4, "std": 0.2} for b in ("red", "green", "blue")}
    model = xchm.load_model("test-tiny", bands=("red", "green", "blue"), statistics=stats)
    model.card = model.card.replace(pixel_size=0.6)
    out = reference_io.export_reference(model, tmp_path / "xchm.pth")
    again = xchm.load_model(out)
    assert torch.equal(heights(again, batch), heights(model, batch))
    assert again.card.bands == ("red", "green", "blue") and again.card.pixel_size == 0.6
    assert again.card.statistics == model.card.statistics
    assert again.card.band_map == model.card.band_map


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"multilevel": True}, "reads backbone blocks"),
        ({"window": 128}, "window is 128 px"),
        ({"bands": ("nir", "red", "green", "blue")}, "takes 4 bands"),
    ],
)
def test_export_reference__refuses_what_the_reference_cannot_express(tmp_path, options, reason):
    model = xchm.load_model("test-tiny", **options)
    with pytest.raises(InputError, match=reason):
        reference_io.export_reference(model, tmp_path / "out.pth")
    assert list(tmp_path.iterdir()) == []


# -- bad files -----------------------------------------------------------------------
def test_load_model__reference_dict_without_model_state_dict(tmp_path):
    torch.save({"epoch": 3, "state": {}, "model_config": {}}, tmp_path / "best.pth")
    with pytest.raises(
        WeightsError,
        match=r"keys \['epoch', 'model_config', 'state'\] whose "
        r"'model_state_dict' is missing; expected a reference checkpoint",
    ):
        xchm.load_model(tmp_path / "best.pth")


def test_load_model__truncated_reference_file(files, tmp_path):
    data = files["4.x"].read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cannot read .*cut.pth.*zip archive .* not a complete"):
        xchm.load_model(tmp_path / "cut.pth")


def test_load_model__reference_with_missing_decoder_keys(replica, tmp_path):
    state = to_4x(replica.state_dict())
    del state["depth_head.3.1.conv2.bias"]
    torch.save({"epoch": 1, "model_state_dict": state}, tmp_path / "best.pth")
    with pytest.raises(WeightsError, match=r"lacks depth_head\.3\.1\.conv2\.bias"):
        xchm.load_model(tmp_path / "best.pth")


def test_load_model__reference_with_extra_decoder_keys(replica, tmp_path):
    state = to_4x(replica.state_dict()) | {"depth_head.9.0.weight": torch.zeros(1)}
    torch.save({"model_state_dict": state}, tmp_path / "best.pth")
    with pytest.raises(WeightsError, match=r"1 decoder tensors .*depth_head\.9\.0\.weight"):
        xchm.load_model(tmp_path / "best.pth")


def test_load_model__bare_backbone_file_points_to_weights(tmp_path):
    torch.save({"cls_token": torch.zeros(1, 1, 64)}, tmp_path / "backbone.pth")
    with pytest.raises(WeightsError, match=r"bare state dict .*weights="):
        xchm.load_model(tmp_path / "backbone.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_load_model__reference_file_with_objects_is_not_unpickled(replica, tmp_path, capsys):
    torch.save({"model_state_dict": {}, "extra": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match=r"objects other than .*builtins\.print.*weights_only"):
        xchm.load_model(tmp_path / "evil.pth")
    assert "unpickled!" not in capsys.readouterr().out
