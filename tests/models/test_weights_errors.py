"""Every unreadable or foreign weights file or checkpoint is a WeightsError naming the file.

Issue 15, case 5: a text file given as weights raised ``KeyError: 101`` and a truncated
``.safetensors`` a bare ``SafetensorError``. Each reader (``read_tensors``, the Hugging
Face folder and shard index, the Meta/HF/timm conversions, ``card.json`` and
``model.safetensors`` of xchm checkpoints) is fed broken input here.
"""

import datetime
import json
import pickle
import shutil
import struct
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import xchm
from xchm.errors import InputError, WeightsError
from xchm.testing import export_meta_state_dict, random_backbone

_EXPECTED = r"expected a PyTorch state dict .* or a \.safetensors file"


def _meta_state():
    return export_meta_state_dict(random_backbone("test-tiny"))


def _pth(tmp_path, obj, name="w.pth"):
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def _text(tmp_path, name, text="hello, my notes about the canopy height model\n"):
    # torch.load fails on text in many ways: "hello" gives KeyError: 101 (issue 15),
    # "a..." IndexError, "my..." UnpicklingError.
    path = tmp_path / name
    path.write_text(text * 5)
    return path


def _bytes(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _truncated(tmp_path, suffix, keep=0.5):
    state = _meta_state()
    path = tmp_path / f"cut{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.float().contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:keep])
    return path


def _foreign_zip(tmp_path):
    path = tmp_path / "archive.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not a torch file")
    return path


def _pickle(tmp_path, obj):
    path = tmp_path / "plain.pth"
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)
    return path


def _lying_safetensors(tmp_path):
    """A header that promises 800 bytes of data where there are 8."""
    header = b'{"cls_token": {"dtype": "F32", "shape": [200], "data_offsets": [0, 800]}}'
    path = tmp_path / "lying.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    return path


def _folder(tmp_path, files):
    folder = tmp_path / "snapshot"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def _hf_without_key_proj(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    state = {
        "embeddings.register_tokens": torch.zeros(1, 4, 64),
        "layer.0.attention.q_proj.weight": torch.zeros(64, 64),
        "layer.0.attention.v_proj.weight": torch.zeros(64, 64),
    }
    save_file(state, str(folder / "model.safetensors"))
    return folder


def _meta_with(**changes):
    def build(tmp_path):
        return _pth(tmp_path, {**_meta_state(), **changes})

    return build


# (builder, what the message must say besides the file's name)
BAD_WEIGHTS = {
    "text file .pth (issue reproduction)": (
        lambda t: _text(t, "notes.pth"),
        rf"it is a text file .*KeyError: 101.*{_EXPECTED}",
    ),
    "text file starting with 'a'": (
        lambda t: _text(t, "a.pt", "a note\n"),
        rf"it is a text file .*IndexError.*{_EXPECTED}",
    ),
    "text file starting with 'my'": (
        lambda t: _text(t, "my.pt", "my notes\n"),
        rf"it is a text file .*{_EXPECTED}",
    ),
    "text file .safetensors": (
        lambda t: _text(t, "notes.safetensors"),
        rf"it is a text file .*SafetensorError.*{_EXPECTED}",
    ),
    "empty .pth": (lambda t: _bytes(t, "e.pth", b""), rf"empty \(0 bytes\).*{_EXPECTED}"),
    "empty .safetensors": (
        lambda t: _bytes(t, "e.safetensors", b""),
        rf"empty \(0 bytes\).*{_EXPECTED}",
    ),
    "random bytes": (
        lambda t: _bytes(t, "noise.ckpt", bytes(range(7, 250))),
        rf"unknown format.*{_EXPECTED}",
    ),
    "truncated .pth": (
        lambda t: _truncated(t, ".pth"),
        rf"zip archive .* not a complete PyTorch file.*{_EXPECTED}",
    ),
    "truncated .safetensors": (
        lambda t: _truncated(t, ".safetensors"),
        rf"safetensors file .* truncated or corrupt.*{_EXPECTED}",
    ),
    "truncated .safetensors header": (
        lambda t: _truncated(t, ".safetensors", keep=20),
        "truncated or corrupt",
    ),
    "safetensors header beyond the data": (_lying_safetensors, "truncated or corrupt"),
    "zip that is not a torch file": (_foreign_zip, rf"zip archive.*{_EXPECTED}"),
    "plain pickle": (
        lambda t: _pickle(t, {"cls_token": [1.0, 2.0]}),
        rf"pickle .* not a complete PyTorch file.*{_EXPECTED}",
    ),
    "torch file of a list": (lambda t: _pth(t, [1, 2, 3]), "holds a list, not a state dict"),
    "torch file with an object": (
        lambda t: _pth(t, {"cls_token": datetime.date(2025, 1, 1)}),
        "objects other than tensors.*weights_only",
    ),
    "dict without tensors": (lambda t: _pth(t, {"model": {"a": [1, 2]}}), "no tensors"),
    "bare tensor": (lambda t: _pth(t, torch.zeros(3)), "a Tensor, not a state dict"),
    "empty dict": (lambda t: _pth(t, {}), "an empty dict, not a state dict"),
    "integer keys": (lambda t: _pth(t, {1: torch.zeros(2)}), "not parameter names"),
    "not a DINOv3 state dict": (
        lambda t: _pth(t, {"conv1.weight": torch.zeros(3)}),
        "not a DINOv3 backbone in Meta's layout",
    ),
    "integer tensors": (
        _meta_with(cls_token=torch.zeros(1, 1, 64, dtype=torch.int64)),
        "non-float tensors .*cls_token",
    ),
    "RoPE periods of another shape": (
        _meta_with(**{"rope_embed.periods": torch.ones(5)}),
        r"rope_embed\.periods: file \(5,\), model \(4,\)",
    ),
    "folder without model files": (
        lambda t: _folder(t, {"config.json": "{}"}),
        "holds no model.safetensors",
    ),
    "broken shard index": (
        lambda t: _folder(t, {"model.safetensors.index.json": "{not json"}),
        r"cannot read the shard index .*expected a JSON object with a \"weight_map\"",
    ),
    "shard index without weight_map": (
        lambda t: _folder(t, {"model.safetensors.index.json": "[1, 2]"}),
        "has no weight_map",
    ),
    "shard index naming a path outside the folder": (
        lambda t: _folder(
            t, {"model.safetensors.index.json": '{"weight_map": {"a": "../../etc/passwd"}}'}
        ),
        "not file names in its folder",
    ),
    "shard index naming a number": (
        lambda t: _folder(t, {"model.safetensors.index.json": '{"weight_map": {"a": 3}}'}),
        "not file names in its folder",
    ),
    "shard index naming a missing shard": (
        lambda t: _folder(
            t, {"model.safetensors.index.json": '{"weight_map": {"a": "model-1.safetensors"}}'}
        ),
        "lists 'model-1.safetensors', which is not in the folder",
    ),
    "Hugging Face layer without k_proj": (
        _hf_without_key_proj,
        r"layer 0 .* lacks attention\.k_proj\.weight",
    ),
}


@pytest.mark.parametrize("case", list(BAD_WEIGHTS))
def test_load_model__bad_weights_file_is_a_weights_error(tmp_path, case):
    build, match = BAD_WEIGHTS[case]
    path = build(tmp_path)
    with pytest.raises(WeightsError, match=match) as info:
        xchm.load_model("test-tiny", weights=path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, OSError)  # WeightsError is also the builtin a user catches


def test_load_model__text_file_weights_message_is_one_clear_line(tmp_path):
    """The reproduction of issue 15 case 5, word for word."""
    path = _text(tmp_path, "notes.pth")
    with pytest.raises(WeightsError) as info:
        xchm.load_model("test-tiny", weights=str(path))
    message = str(info.value)
    assert message.startswith(f"cannot read {str(path)!r} as a weights file: it is a text file")
    assert "\n" not in message


def test_read_tensors__direct_calls_name_the_file(tmp_path):
    from xchm.models.weights import read_tensors

    for path in (_text(tmp_path, "notes.bin"), _truncated(tmp_path, ".safetensors")):
        with pytest.raises(WeightsError, match=str(path)):
            read_tensors(path)
    with pytest.raises(WeightsError, match="is a directory"):
        read_tensors(tmp_path)


# -- xchm checkpoints (card.json + model.safetensors) -----------------------------------
@pytest.fixture(scope="module")
def _saved(tmp_path_factory):
    return xchm.load_model("test-tiny").save(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture
def saved(_saved, tmp_path):
    return shutil.copytree(_saved, tmp_path / "model")


def _edit_card(edit):
    def apply(folder):
        meta = json.loads((folder / "card.json").read_text())
        (folder / "card.json").write_text(json.dumps(edit(meta)))
        return folder / "card.json"

    return apply


def _write(name, data):
    def apply(folder):
        (folder / name).write_bytes(data)
        return folder / name

    return apply


def _weights_with_card_digest(data):
    """Replace model.safetensors and update the card's digest, so only the reader can tell."""

    def apply(folder):
        import hashlib

        (folder / "model.safetensors").write_bytes(data)
        meta = json.loads((folder / "card.json").read_text())
        meta["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
        (folder / "card.json").write_text(json.dumps(meta))
        return folder / "model.safetensors"

    return apply


BAD_CHECKPOINTS = {
    "card.json not JSON": (_write("card.json", b"{not json"), "not valid JSON"),
    "card.json binary": (_write("card.json", b"\xff\xfe\x00garbage"), "not valid JSON"),
    "card.json empty": (_write("card.json", b""), "not valid JSON"),
    "card.json a list": (_write("card.json", b"[1, 2]"), "not an xchm card"),
    "card without weights digest": (
        _edit_card(lambda m: {k: v for k, v in m.items() if k != "weights"}),
        "missing field 'weights'",
    ),
    "card with a digest that is no digest": (
        _edit_card(lambda m: {**m, "weights": {"sha256": 5}}),
        "not a SHA-256",
    ),
    "card without decoder": (
        _edit_card(lambda m: {k: v for k, v in m.items() if k != "decoder"}),
        "missing field 'decoder'",
    ),
    "card with bands a number": (
        _edit_card(lambda m: {**m, "card": {**m["card"], "bands": 5}}),
        "bands must be a list",
    ),
    "card with statistics of the wrong type": (
        _edit_card(lambda m: {**m, "card": {**m["card"], "statistics": [1, 2, 3]}}),
        "invalid model card",
    ),
    "card with a decoder of three stages": (
        _edit_card(lambda m: {**m, "decoder": {**m["decoder"], "widths": [8, 8, 8]}}),
        "cannot be built.*4 widths",
    ),
    "card with an unknown preset": (
        _edit_card(lambda m: {**m, "card": {**m["card"], "preset": "vit-huge-9000"}}),
        "vit-huge-9000",
    ),
    "weights text with a matching digest": (
        _weights_with_card_digest(b"not a safetensors file"),
        "cannot read .*model.safetensors",
    ),
    "weights empty with a matching digest": (
        _weights_with_card_digest(b""),
        "cannot read .*model.safetensors",
    ),
    "weights truncated": (
        lambda f: _write("model.safetensors", (f / "model.safetensors").read_bytes()[:999])(f),
        "SHA-256 differs",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_load_model__bad_checkpoint_is_a_weights_error(saved, case):
    edit, match = BAD_CHECKPOINTS[case]
    edit(saved)
    with pytest.raises(WeightsError, match=match) as info:
        xchm.load_model(saved)
    assert str(saved) in str(info.value)


@pytest.mark.parametrize("case", ["card.json not JSON", "weights text with a matching digest"])
def test_load_model__bad_checkpoint_as_backbone_weights(saved, case):
    """A broken xchm checkpoint passed as ``weights=`` (pretrain's backbone/) too."""
    edit, match = BAD_CHECKPOINTS[case]
    edit(saved)
    with pytest.raises(WeightsError, match=match):
        xchm.load_model("test-tiny", weights=saved)


# -- the building blocks refuse with xchm's errors, not bare ValueErrors ----------------
def test_adapt_patch_embed__twice_is_an_input_error():
    from xchm.models.backbone import adapt_patch_embed

    backbone = random_backbone("test-tiny")
    adapt_patch_embed(backbone, (0, 0, 1, 2))
    with pytest.raises(InputError, match="takes 4"):
        adapt_patch_embed(backbone, (0, 1, 2))


def test_adapt_patch_embed__index_outside_rgb_is_an_input_error():
    from xchm.models.backbone import adapt_patch_embed

    with pytest.raises(InputError, match="0 red, 1 green, 2 blue"):
        adapt_patch_embed(random_backbone("test-tiny"), (0, 3))


def test_set_rope_periods__foreign_shape_is_a_weights_error():
    from xchm.models.backbone import set_rope_periods

    with pytest.raises(WeightsError, match="another architecture"):
        set_rope_periods(random_backbone("test-tiny"), torch.ones(7))


def test_chm_decoder__wrong_number_of_stages_is_an_input_error():
    from xchm.models.decoder import CHMDecoder
    from xchm.models.presets import DecoderSpec

    with pytest.raises(InputError, match="4 widths"):
        CHMDecoder(64, 1, DecoderSpec(widths=(8, 8, 8)), output_bias=0.0)
