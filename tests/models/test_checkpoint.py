import json

import pytest
import torch

import xchm
from xchm.errors import InputError, ModelNotFoundError, OutputExistsError, WeightsError
from xchm.testing import write_meta_weights


def _train_a_little(model, steps=3):
    """Move decoder weights and BatchNorm statistics away from their initial values."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(steps):
        x = torch.randn(4, model.card.num_bands, model.card.window, model.card.window)
        loss = (model(x) - 5.0).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _assert_identical(a, b):
    x = torch.randn(3, a.card.num_bands, a.card.window, a.card.window)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
        for fa, fb in zip(a.features(x), b.features(x), strict=True):
            assert torch.equal(fa, fb)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert a.card == b.card


def test_save_load__bit_identical_after_training(tmp_path):
    model = _train_a_little(xchm.load_model("test-tiny"))
    model.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "card.json",
        "model.safetensors",
    ]
    _assert_identical(model, xchm.load_model(tmp_path / "ckpt"))


def test_save_load__multilevel_four_bands_meta_periods(tmp_path):
    write_meta_weights(tmp_path / "w.pth")
    stats = {
        b: xchm.BandStats(clip_max=1000.0, mean=0.3, std=0.1)
        for b in ("blue", "green", "red", "nir")
    }
    model = xchm.load_model(
        "test-tiny",
        weights=tmp_path / "w.pth",
        bands=("blue", "green", "red", "nir"),
        statistics=stats,
        multilevel=True,
        window=32,
        pixel_size=0.5,
    )
    model = _train_a_little(model)
    model.save(str(tmp_path / "ckpt"))  # str paths work too
    again = xchm.load_model(str(tmp_path / "ckpt"))
    _assert_identical(model, again)
    assert torch.equal(again.backbone.rope.periods, model.backbone.rope.periods)
    assert again.card.provenance["weights_layout"] == "meta"


def test_save__overwrites_previous_checkpoint(tmp_path):
    first = xchm.load_model("test-tiny")
    first.save(tmp_path / "ckpt")
    second = _train_a_little(xchm.load_model("test-tiny", seed=2))
    second.save(tmp_path / "ckpt")
    _assert_identical(second, xchm.load_model(tmp_path / "ckpt"))
    assert [p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".")] == []


def test_save__refuses_a_file_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WeightsError, match="is a file"):
        xchm.load_model("test-tiny").save(tmp_path / "file")


@pytest.mark.parametrize("name", ["card.json", "notes.txt"])
def test_save__refuses_a_folder_that_is_not_a_checkpoint(tmp_path, name):
    (tmp_path / name).write_text('{"mine": 1}')
    with pytest.raises(OutputExistsError, match="not an xchm checkpoint"):
        xchm.load_model("test-tiny").save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_text() == '{"mine": 1}'


def test_card_json__documents_the_contract(tmp_path):
    xchm.load_model("test-tiny").save(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "card.json").read_text())
    assert meta["format"] == "xchm-checkpoint" and meta["format_version"] == 1
    assert meta["card"]["bands"] == ["nir", "red", "green"]
    assert meta["card"]["statistics"][0]["clip_max"] == 7142.0
    assert len(meta["weights"]["sha256"]) == 64


@pytest.fixture
def saved(tmp_path):
    xchm.load_model("test-tiny").save(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_load__missing_card(saved):
    (saved / "card.json").unlink()
    with pytest.raises(WeightsError, match="card.json is missing"):
        xchm.load_model(saved)


def test_load__missing_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no model.safetensors"):
        xchm.load_model(saved)


def test_load__corrupt_weights(saved):
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[-10:] = b"\xff" * 10
    (saved / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256"):
        xchm.load_model(saved)


def test_load__weights_from_another_checkpoint(saved, tmp_path):
    _train_a_little(xchm.load_model("test-tiny")).save(tmp_path / "other")
    (saved / "model.safetensors").write_bytes(
        (tmp_path / "other" / "model.safetensors").read_bytes()
    )
    with pytest.raises(WeightsError, match="does not match"):
        xchm.load_model(saved)


def test_load__card_describing_another_architecture(saved):
    meta = json.loads((saved / "card.json").read_text())
    meta["card"]["feature_indices"] = [0, 1, 2, 3]  # multilevel: a fuse layer the file lacks
    (saved / "card.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="does not fit the architecture"):
        xchm.load_model(saved)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: "{not json", "not valid JSON"),
        (lambda m: json.dumps({**m, "format": "other"}), "not an xchm card"),
        (lambda m: json.dumps({**m, "format_version": 99}), "upgrade xchm"),
        (lambda m: json.dumps({**m, "card": {**m["card"], "preset": "nope"}}), "nope"),
        (lambda m: json.dumps({**m, "card": {**m["card"], "window": 30}}), "window"),
    ],
)
def test_load__invalid_card_json(saved, edit, match):
    meta = json.loads((saved / "card.json").read_text())
    (saved / "card.json").write_text(edit(meta))
    with pytest.raises(WeightsError, match=match):
        xchm.load_model(saved)


def test_load__file_instead_of_directory(saved):
    with pytest.raises(WeightsError, match="checkpoints are directories"):
        xchm.load_model(saved / "model.safetensors")


def test_load__options_cannot_change_a_checkpoint(saved):
    with pytest.raises(InputError, match="bands"):
        xchm.load_model(saved, bands=("red", "green", "blue"))
    assert xchm.load_model(saved, bands=("NIR", "Red", "Green")).card.bands == (
        "nir",
        "red",
        "green",
    )


def test_load__unknown_name_is_not_found():
    with pytest.raises(ModelNotFoundError):
        xchm.load_model("some/where/model")


def test_save__files_get_normal_permissions(tmp_path):
    import os
    import stat

    xchm.load_model("test-tiny").save(tmp_path / "ckpt")
    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.safetensors", "card.json"):
        mode = stat.S_IMODE((tmp_path / "ckpt" / name).stat().st_mode)
        assert mode == 0o666 & ~mask, (name, oct(mode))


def test_predict__a_model_file_says_how_to_make_it_a_checkpoint_directory(saved):
    from xchm.datasets import synthetic_landscape

    image = synthetic_landscape(256, seed=0)["image"]
    with pytest.raises(ModelNotFoundError, match="is a file, not a checkpoint directory.*import"):
        xchm.predict(image, saved / "model.safetensors")
