"""The light decoder (``decoder="light"``): contract, cost, checkpoints, training (CPU)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import xchm
from xchm.cli import main
from xchm.errors import InputError, RandomWeightsWarning, ResumeError, WeightsError
from xchm.models import DecoderSpec
from xchm.models.decoder import CHMDecoder
from xchm.models.light_decoder import LightDecoder
from xchm.models.presets import get_preset
from xchm.runs.job import differences, fingerprint
from xchm.training import TrainConfig, find_lr, train

from ..training.small_cube import learnable_cube, learnable_cube_fixture, one_thread  # noqa: F401

ONE_STEP = TrainConfig(
    epochs=1, batch_size=8, lr=1e-2, num_workers=0, augment=False, max_steps_per_epoch=1
)


def _trained_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move BatchNorm statistics and the weights off their initial values (a trained look)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))
        model.train()
        model(torch.randn(4, 3, 64, 64, generator=gen))
    return model.eval()


# -- the network ---------------------------------------------------------------------------
@pytest.mark.parametrize("multilevel", [False, True])
def test_light__maps_features_to_non_negative_heights_at_16x(multilevel):
    model = xchm.load_model("test-tiny", decoder="light", multilevel=multilevel)
    assert isinstance(model.decoder, LightDecoder)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        features = model.features(x)
        assert len(features) == (4 if multilevel else 1)
        out = model.decoder(features)
        assert out.shape == (2, 1, 64, 64) and bool((out >= 0).all())
        model.decoder.reset_output(-50.0)  # a negative output is clamped, never returned
        assert bool((model(x) == 0).all())


def test_light__reset_output_sets_the_bias_in_metres():
    decoder = xchm.load_model("test-tiny", decoder="light", output_bias=3.5).decoder
    assert decoder.output.bias.item() == 3.5
    decoder.reset_output(12.25)
    assert decoder.output.bias.item() == 12.25
    assert decoder.output.weight.std().item() < 0.1  # small weights: output ~ the bias


def test_light__every_batchnorm_follows_its_conv_in_a_sequential():
    """The layout BatchNorm folding at inference relies on (conv, bn) sibling pairs."""
    decoder = xchm.load_model("test-tiny", decoder="light", multilevel=True).decoder
    paired = 0
    for seq in decoder.modules():
        if isinstance(seq, nn.Sequential):
            children = list(seq.children())
            for before, bn in zip(children, children[1:], strict=False):
                if isinstance(bn, nn.BatchNorm2d):
                    assert isinstance(before, nn.Conv2d | nn.ConvTranspose2d), seq
                    paired += 1
    every = sum(isinstance(m, nn.BatchNorm2d) for m in decoder.modules())
    assert paired == every == 6  # projection, four stages, one head conv


@pytest.mark.parametrize(
    ("preset", "multilevel"),
    [("dinov3-vits16", False), ("dinov3-vitl16-sat", False), ("dinov3-vitl16-sat", True)],
)
def test_light__costs_under_one_gflop_per_window(preset, multilevel):
    """FlopCounterMode as benchmarks/model_forward.py; meta tensors: no memory, no time."""
    counted = {}
    for kind in ("light", "reference"):
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            model = xchm.load_model(preset, decoder=kind, multilevel=multilevel)
        c, levels = model.backbone.embed_dim, len(model.feature_indices)
        features = [torch.empty(1, c, 4, 4, device="meta") for _ in range(levels)]
        with FlopCounterMode(display=False) as fc:
            out = model.decoder(features)
        assert out.shape == (1, 1, 64, 64)
        counted[kind] = fc.get_total_flops() / 1e9
    assert 0.3 < counted["light"] <= 1.0, counted
    assert counted["reference"] > 7 * counted["light"], counted


# -- choosing it ---------------------------------------------------------------------------
def test_decoder_spec__light_per_preset_and_reference_default():
    tiny, vits = get_preset("test-tiny"), get_preset("dinov3-vits16")
    assert vits.decoder_spec() == vits.decoder == DecoderSpec()
    assert vits.decoder_spec("light").kind == "light"
    assert max(tiny.decoder_spec("light").widths) < max(vits.decoder_spec("light").widths)
    assert isinstance(xchm.load_model("test-tiny").decoder, CHMDecoder)
    assert isinstance(xchm.load_model("test-tiny", decoder="reference").decoder, CHMDecoder)
    custom = DecoderSpec(kind="light", widths=(8, 8, 8, 8), head_widths=(4, 4))
    model = xchm.load_model("test-tiny", decoder=custom)
    assert model.decoder_spec == custom and model.decoder.output.in_channels == 4


@pytest.mark.parametrize("bad", ["lite", "Light", 3, ("light",)])
def test_decoder__bad_value_lists_the_choices(bad):
    with pytest.raises(InputError, match=r"'reference', 'light'"):
        xchm.load_model("test-tiny", decoder=bad)
    with pytest.raises(InputError, match=r"'reference', 'light'"):
        DecoderSpec(kind="lite")


def test_decoder__chmv2_refuses_a_decoder_choice():
    for decoder in ("light", DecoderSpec(kind="light")):
        with pytest.raises(InputError, match="DPT head.*CHM-decoder presets only"):
            xchm.load_model("test-tiny-chmv2", decoder=decoder)


# -- checkpoints -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def light_saved(tmp_path_factory):
    model = _trained_stats(xchm.load_model("test-tiny", decoder="light", seed=3))
    return model, model.save(tmp_path_factory.mktemp("light") / "ckpt")


def test_light__save_and_load_are_bit_identical(light_saved):
    model, saved = light_saved
    meta = json.loads((saved / "card.json").read_text())
    assert meta["decoder"]["kind"] == "light"
    loaded = xchm.load_model(saved)
    assert isinstance(loaded.decoder, LightDecoder) and loaded.decoder_spec == model.decoder_spec
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


def test_checkpoint__decoder_cannot_change_but_may_be_restated(light_saved):
    _, saved = light_saved
    with pytest.raises(InputError, match=r"\['decoder'\] cannot change.*decoder 'light'"):
        xchm.load_model(saved, decoder="reference")
    assert isinstance(xchm.load_model(saved, decoder="light").decoder, LightDecoder)


def test_checkpoint__a_card_without_kind_loads_the_reference_decoder(tmp_path):
    """Cards written before the light decoder have no ``kind``: they load as before."""
    model = _trained_stats(xchm.load_model("test-tiny", seed=4))
    saved = model.save(tmp_path / "old")
    meta = json.loads((saved / "card.json").read_text())
    assert meta["decoder"].pop("kind") == "reference"
    (saved / "card.json").write_text(json.dumps(meta))
    loaded = xchm.load_model(saved)
    assert isinstance(loaded.decoder, CHMDecoder) and loaded.decoder_spec == model.decoder_spec
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


def test_checkpoint__an_unknown_kind_is_a_weights_error(light_saved, tmp_path):
    _, saved = light_saved
    meta = json.loads((saved / "card.json").read_text())
    meta["decoder"]["kind"] = "heavy"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    (bad / "card.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="heavy"):
        xchm.load_model(bad)


# -- training ------------------------------------------------------------------------------
def test_train__light_decoder_trains_saves_and_resumes(cube, tmp_path):
    out = tmp_path / "run"
    result = train(
        cube, model="test-tiny", decoder="light", config=ONE_STEP, output=out, progress=False
    )
    best = xchm.load_model(result.best_checkpoint)
    assert isinstance(best.decoder, LightDecoder)
    assert best.card.provenance["decoder"] == "light"
    again = train(
        cube,
        model="test-tiny",
        decoder="light",
        config=ONE_STEP,
        output=out,
        resume=True,
        progress=False,
    )
    assert again.best_epoch == result.best_epoch == 0
    for other in (None, "reference"):
        with pytest.raises(ResumeError, match=r"decoder: the run used 'light', this call gives"):
            train(cube, model="test-tiny", decoder=other, config=ONE_STEP, output=out, resume=True)


def test_train__a_reference_run_refuses_to_resume_with_the_light_decoder(cube, tmp_path):
    out = tmp_path / "run"
    train(cube, model="test-tiny", config=ONE_STEP, output=out, progress=False)
    with pytest.raises(ResumeError, match="decoder: the run used 'reference' .*'light'"):
        train(cube, model="test-tiny", decoder="light", config=ONE_STEP, output=out, resume=True)


def test_find_lr__sweeps_the_light_decoder(cube, monkeypatch):
    calls = []
    forward = LightDecoder.forward
    monkeypatch.setattr(
        LightDecoder, "forward", lambda self, f: calls.append(1) or forward(self, f)
    )
    cfg = TrainConfig(**{**ONE_STEP.to_dict(), "max_steps_per_epoch": None})
    found = find_lr(cube, "test-tiny", decoder="light", config=cfg, steps=5, end_lr=1e-3)
    assert len(found.lrs) == 5 and len(calls) == 5


def test_fingerprint__reference_is_the_default_and_keeps_old_fingerprints(cube):
    plain = fingerprint(cube, "test-tiny", None, 1)
    assert "decoder" not in plain
    assert fingerprint(cube, "test-tiny", None, 1, decoder="reference") == plain
    light = fingerprint(cube, "test-tiny", None, 1, decoder="light")
    assert differences(plain, light) == [
        "decoder: the run used 'reference' (the default), this call gives 'light'"
    ]


def test_cli__train_decoder_light(cube, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", str(cube.path), "-o", str(out), "--model", "test-tiny", "--decoder"]
    fast = "--epochs 1 --batch-size 8 --max-steps-per-epoch 1 --num-workers 0 -q".split()
    assert main([*args, "light", *fast]) == 0
    assert json.loads((out / "best" / "card.json").read_text())["decoder"]["kind"] == "light"
    assert main([*args, "lite", *fast]) == 2  # a usage error, before any work
    assert "'reference', 'light'" in capsys.readouterr().err
