"""xchm.train: learning, policies, checkpoints and exact resume (CPU, test-tiny)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import torch
import xarray as xr

import xchm
import xchm.chips
from xchm.errors import (
    DeviceError,
    InputError,
    NonFiniteLossError,
    OutputExistsError,
    PathNotFoundError,
    RandomWeightsWarning,
    ResumeError,
    XCHMWarning,
)
from xchm.outputs import prepare_output_dir
from xchm.runs.state import load_state, save_state
from xchm.training import TrainConfig, train
from xchm.training import trainer as trainer_module
from xchm.training.losses import height_loss
from xchm.training.policy import apply_policy, trainable_block_count

FAST = {
    "epochs": 4,
    "batch_size": 8,
    "lr": 1e-2,
    "num_workers": 0,
    "augment": False,
    "patience": 10,
}
ONE_STEP = TrainConfig(**{**FAST, "epochs": 1, "max_steps_per_epoch": 1})


def _learnable_scene(size=512, seed=0):
    """NIR/red/green DN whose chips' heights follow the NIR brightness (learnable)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    nir = 2500 + 1500 * np.sin(yy / 23.0) * np.cos(xx / 31.0) + rng.normal(0, 100, yy.shape)
    image = np.stack([nir, 0.5 * nir, 0.4 * nir]).clip(1, 9000).astype("uint16")
    heights = (nir / 200.0 - 5).clip(0.1).astype("float32")
    coords = {"y": 7e6 - 2.0 * (np.arange(size) + 0.5), "x": 4e5 + 2.0 * (np.arange(size) + 0.5)}
    img = xr.DataArray(image, dims=("band", "y", "x"), coords=coords).rio.write_crs("EPSG:32617")
    chm = xr.DataArray(heights, dims=("y", "x"), coords=coords).rio.write_crs("EPSG:32617")
    return img, chm


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    img, chm = _learnable_scene()
    return xchm.chips.build(
        [xchm.chips.ScenePair(img, chm, scene="learnable")],
        tmp_path_factory.mktemp("cube") / "c.zarr",
        bands=("nir", "red", "green"),
        split_by="block",
        block_size=1,
        fractions={"train": 0.75, "val": 0.25},
        progress=False,
    )


# -- config and loss ---------------------------------------------------------------------
def test_trainconfig__rejects_bad_values_at_once():
    with pytest.raises(InputError, match="epochs.*policy|policy.*epochs"):
        TrainConfig(epochs=0, policy="thaw")


def test_trainconfig__from_dict_rejects_unknown_fields():
    with pytest.raises(InputError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


def test_height_loss__asymmetric_weights_underestimation_and_skips_nan():
    pred = torch.tensor([1.0, 3.0, 0.0])
    target = torch.tensor([2.0, 2.0, float("nan")])
    cfg = TrainConfig(underestimation_penalty=5.0)
    assert float(height_loss(pred, target, cfg)) == pytest.approx((5 * 1 + 1) / 2)
    assert float(height_loss(pred, target, TrainConfig(loss="l1"))) == pytest.approx(1.0)


def test_height_loss__all_missing_labels_give_zero_with_a_gradient():
    pred = torch.ones(4, requires_grad=True)
    loss = height_loss(pred, torch.full((4,), float("nan")), TrainConfig())
    loss.backward()
    assert loss.detach().item() == 0 and pred.grad is not None


# -- policies ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "extra", "epoch", "blocks"),
    [
        ("frozen", {}, 5, set()),
        ("last_blocks", {"unfreeze_blocks": 2}, 0, {2, 3}),
        ("progressive", {"unfreeze_every": 2}, 0, set()),
        ("progressive", {"unfreeze_every": 2}, 3, {3}),
        ("progressive", {"unfreeze_every": 2}, 5, {2, 3}),
        ("progressive", {"unfreeze_every": 2}, 7, {1, 2, 3}),
        ("full", {"ft_rate": 0.0}, 0, set()),
    ],
)
def test_apply_policy__trains_exactly_the_intended_blocks(policy, extra, epoch, blocks):
    model = xchm.load_model("test-tiny")
    names = apply_policy(model, TrainConfig(policy=policy, **extra), epoch)
    trained_blocks = {int(n.split(".")[1]) for n in names if n.startswith("blocks.")}
    assert trained_blocks == blocks
    for name, p in model.backbone.named_parameters():
        in_block = name.startswith("blocks.") and int(name.split(".")[1]) in blocks
        assert p.requires_grad == (in_block or (bool(blocks) and name.startswith("norm.")))
    assert all(p.requires_grad for p in model.decoder.parameters())
    model.train()
    assert model.backbone.training == bool(blocks)


def test_apply_policy__full_trains_every_backbone_parameter():
    model = xchm.load_model("test-tiny")
    names = apply_policy(model, TrainConfig(policy="full", ft_rate=1.0), 0)
    assert len(names) == len(list(model.backbone.parameters()))


def test_trainable_block_count__progressive_schedule():
    cfg = TrainConfig(policy="progressive", unfreeze_every=3)
    assert [trainable_block_count(cfg, e, 2) for e in (0, 2, 3, 6, 30)] == [0, 0, 1, 2, 2]


# -- training --------------------------------------------------------------------------------
def test_train__learns_and_beats_predicting_the_mean(cube, tmp_path):
    result = train(
        cube,
        model="test-tiny",
        config=TrainConfig(**{**FAST, "epochs": 10}),
        output=tmp_path / "run",
        progress=False,
    )
    losses = [row["val_loss"] for row in result.history]
    assert min(losses[1:]) < losses[0]
    model = xchm.load_model(result.best_checkpoint)
    val = cube.sel(split="val")
    image, height = val.read(np.arange(len(val)))
    with torch.inference_mode():
        pred = model(torch.from_numpy(model.card.normalize(image, axis=1)))[:, 0].numpy()
    _, train_heights = cube.sel(split="train").read(np.arange(len(cube.sel(split="train"))))
    baseline = np.abs(height - np.nanmean(train_heights)).mean()
    mae = np.abs(pred - height).mean()
    assert mae < 0.8 * baseline
    assert model.card.statistics == cube.statistics
    assert model.card.provenance["epoch"] == result.best_epoch


def test_train__writes_logs_and_the_best_checkpoint(cube, tmp_path):
    out = tmp_path / "run"
    result = train(
        cube,
        model="test-tiny",
        config=TrainConfig(**{**FAST, "epochs": 2}),
        output=out,
        progress=False,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] == [r["epoch"] for r in result.history]
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,train_loss,val_loss")
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())).epochs == 2
    assert (result.best_checkpoint / "model.safetensors").exists()
    with pytest.raises(OutputExistsError, match="resume=True"):
        train(cube, model="test-tiny", config=TrainConfig(**FAST), output=out, progress=False)


def test_train__output_bias_starts_at_the_label_percentile(cube, tmp_path, monkeypatch):
    seen = {}
    original = trainer_module._label_percentile

    def spy(*args, **kwargs):
        seen["value"] = original(*args, **kwargs)
        return seen["value"]

    monkeypatch.setattr(trainer_module, "_label_percentile", spy)
    cfg = TrainConfig(**{**FAST, "epochs": 1, "max_steps_per_epoch": 1, "lr": 1e-12})
    result = train(cube, model="test-tiny", config=cfg, output=tmp_path / "r", progress=False)
    _, heights = cube.sel(split="train").read(np.arange(len(cube.sel(split="train"))))
    assert seen["value"] == pytest.approx(np.percentile(heights, 90), rel=0.05)
    model = xchm.load_model(result.best_checkpoint)
    assert model.decoder.output.bias.detach().item() == pytest.approx(seen["value"], rel=1e-3)


def test_train__resume_reaches_the_uninterrupted_weights(cube, tmp_path, monkeypatch):
    cfg = TrainConfig(
        **{**FAST, "epochs": 3, "augment": True, "checkpoint_every": 4, "policy": "last_blocks"}
    )
    full = train(cube, model="test-tiny", config=cfg, output=tmp_path / "full", progress=False)

    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def flaky_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6 + 6 + 5:  # epoch 2, after its mid-epoch checkpoint at step 4
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", flaky_step)
        with pytest.raises(KeyboardInterrupt):
            train(cube, model="test-tiny", config=cfg, output=tmp_path / "cut", progress=False)
    cut = load_state(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (cut["epoch"], cut["batch"]) == (2, 4)  # 6 batches per epoch: 16 steps saved
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 2

    ran = _count_steps(monkeypatch)
    resumed = train(
        cube, model="test-tiny", config=cfg, output=tmp_path / "cut", resume=True, progress=False
    )
    # It started where the cut run stopped: 2 steps to go, the optimizer already at 16.
    assert ran == {"steps": 2, "optimizer_step_before": 16}
    rows = [
        json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    a = xchm.load_model(full.best_checkpoint).state_dict()
    b = xchm.load_model(resumed.best_checkpoint).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert [r["val_loss"] for r in full.history] == [r["val_loss"] for r in resumed.history]


def _count_steps(monkeypatch):
    """Count AdamW steps from now on; note the optimizer's own step count at the first."""
    ran = {"steps": 0}
    real_step = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        if not ran["steps"]:
            counts = [int(s["step"]) for s in self.state.values() if "step" in s]
            ran["optimizer_step_before"] = max(counts, default=0)
        ran["steps"] += 1
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    return ran


def test_train__resume_refuses_a_changed_config(cube, tmp_path):
    train(cube, model="test-tiny", config=ONE_STEP, output=tmp_path / "r", progress=False)
    with pytest.raises(ResumeError, match="config: these differ.*lr"):
        train(
            cube,
            model="test-tiny",
            config=TrainConfig(**{**ONE_STEP.to_dict(), "lr": 1.0}),
            output=tmp_path / "r",
            resume=True,
            progress=False,
        )


# -- output folders and resume: nothing mixed, nothing overwritten ---------------------------
@pytest.fixture(scope="module")
def other_cube(tmp_path_factory):
    """A second, smaller cube of another landscape (same bands)."""
    img, chm = _learnable_scene(256, seed=1)
    return _build(img, chm, tmp_path_factory.mktemp("other") / "b.zarr")


def _build(img, chm, path, **kwargs):
    return xchm.chips.build(
        [xchm.chips.ScenePair(img, chm, scene="s")],
        path,
        bands=("nir", "red", "green"),
        block_size=1,
        progress=False,
        **kwargs,
    )


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_train__refuses_a_folder_it_did_not_write(cube, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "config.json").write_text('{"mine": 1}')
    with pytest.raises(OutputExistsError, match="not written by xchm"):
        xchm.train(cube, model="test-tiny", output=proj, config=ONE_STEP, progress=False)
    assert _files(proj) == {"config.json": b'{"mine": 1}'}  # nothing added or changed


def test_train__resume_refuses_another_cube(cube, other_cube, tmp_path):
    out = tmp_path / "run"
    train(cube, model="test-tiny", config=ONE_STEP, output=out, progress=False)
    before = _files(out)
    with pytest.raises(ResumeError, match=f"cube: the run trained on the cube {cube.path}"):
        train(other_cube, model="test-tiny", config=ONE_STEP, output=out, resume=True)
    assert _files(out) == before


def test_train__resume_refuses_a_cube_built_again_at_the_same_path(tmp_path):
    img, chm = _learnable_scene(256)
    first = _build(img, chm, tmp_path / "c.zarr")
    train(first, model="test-tiny", config=ONE_STEP, output=tmp_path / "run", progress=False)
    img2, chm2 = _learnable_scene(256, seed=42)
    _build(img2, chm2, tmp_path / "c.zarr", overwrite=True)
    with pytest.raises(ResumeError, match="c.zarr changed since the run started"):
        train(
            tmp_path / "c.zarr",
            model="test-tiny",
            config=ONE_STEP,
            output=tmp_path / "run",
            resume=True,
        )


def test_train__resume_refuses_another_preset_before_building_it(cube, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(cube, model="test-tiny", config=ONE_STEP, output=out, progress=False)
    monkeypatch.setattr(xchm.models.api, "load_model", _not_called)
    with pytest.raises(ResumeError, match="model: the run used 'test-tiny'.*'dinov3-vits16'"):
        train(cube, model="dinov3-vits16", config=ONE_STEP, output=out, resume=True)


def _not_called(*args, **kwargs):
    raise AssertionError("a model was built before the resume was checked")


def test_train__resume_refuses_other_weights(cube, tmp_path):
    out = tmp_path / "run"
    train(cube, model="test-tiny", config=ONE_STEP, output=out, progress=False)
    xchm.load_model("test-tiny", seed=5).save(tmp_path / "pretrained")
    with pytest.raises(ResumeError, match="weights: the run used none, this call gives checkpoint"):
        train(
            cube,
            model="test-tiny",
            weights=tmp_path / "pretrained",
            config=ONE_STEP,
            output=out,
            resume=True,
        )


def test_train__resume_accepts_a_moved_cube(cube, tmp_path):
    import shutil

    out = tmp_path / "run"
    train(cube, model="test-tiny", config=ONE_STEP, output=out, progress=False)
    shutil.copytree(cube.path, tmp_path / "moved.zarr")
    result = train(
        tmp_path / "moved.zarr", model="test-tiny", config=ONE_STEP, output=out, resume=True
    )
    assert len(result.history) == 1  # the finished run, nothing redone


@pytest.mark.parametrize("resume", [False, True])
def test_train__a_run_killed_before_its_first_checkpoint_starts_again(
    cube, tmp_path, monkeypatch, resume
):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", _interrupt)
        with pytest.raises(KeyboardInterrupt):
            train(cube, model="test-tiny", config=ONE_STEP, output=out, progress=False)
    assert sorted(_files(out)) == [".xchm-output.json", "config.json"]
    result = train(
        cube, model="test-tiny", config=ONE_STEP, output=out, resume=resume, progress=False
    )
    assert len(result.history) == 1


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_train__resumes_a_run_written_before_output_markers(cube, tmp_path):
    out = tmp_path / "run"
    train(cube, model="test-tiny", config=ONE_STEP, output=out, progress=False)
    (out / ".xchm-output.json").unlink()  # as an earlier xchm left it
    with pytest.raises(OutputExistsError, match="resume=True"):
        train(cube, model="test-tiny", config=ONE_STEP, output=out, progress=False)
    result = train(cube, model="test-tiny", config=ONE_STEP, output=out, resume=True)
    assert len(result.history) == 1
    assert (out / ".xchm-output.json").is_file()


def test_train__resume_refuses_a_folder_it_did_not_write(cube, tmp_path):
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "last.pt").write_bytes(b"my own file")
    with pytest.raises(OutputExistsError, match="is not an xchm training run"):
        train(cube, model="test-tiny", config=ONE_STEP, output=mine, resume=True)
    assert _files(mine) == {"checkpoints/last.pt": b"my own file"}


def test_train__resume_of_a_state_without_fingerprint_still_refuses_another_model(cube, tmp_path):
    out = tmp_path / "run"
    train(cube, model="test-tiny", config=ONE_STEP, output=out, progress=False)
    state = load_state(out / "checkpoints" / "last.pt")
    del state["job"]  # as an earlier xchm saved it
    save_state(state, out / "checkpoints" / "last.pt")
    with (
        pytest.warns(XCHMWarning, match="did not record its cube, model and weights"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", RandomWeightsWarning)
        with pytest.raises(ResumeError, match="does not fit the model 'dinov3-vits16'"):
            train(cube, model="dinov3-vits16", config=ONE_STEP, output=out, resume=True)


def test_train__refuses_an_output_of_another_kind(cube, tmp_path):
    prepare_output_dir(tmp_path / "ssl", "pretraining run")
    for resume in (False, True):
        with pytest.raises(OutputExistsError, match="pretraining run, not a training run"):
            train(cube, model="test-tiny", config=ONE_STEP, output=tmp_path / "ssl", resume=resume)


def test_train__resume_of_nothing_is_refused(cube, tmp_path):
    with pytest.raises(PathNotFoundError, match="nothing to resume"):
        train(cube, model="test-tiny", config=ONE_STEP, output=tmp_path / "new", resume=True)
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train__cuda_without_a_gpu_is_a_device_error(cube, tmp_path):
    with pytest.raises(DeviceError, match="CUDA is not available"):
        train(cube, model="test-tiny", config=ONE_STEP, output=tmp_path / "r", device="cuda")
    assert not (tmp_path / "r").exists()


def test_train__an_invalid_device_is_a_device_error(cube, tmp_path):
    with pytest.raises(DeviceError, match="'gpu0' is not a torch device"):
        train(cube, model="test-tiny", config=ONE_STEP, output=tmp_path / "r", device="gpu0")
    assert not (tmp_path / "r").exists()


def test_train__a_diverging_loss_stops_before_its_checkpoint(cube, tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 1, "lr": 1e30, "grad_clip": 0.0})
    with pytest.raises(NonFiniteLossError, match="training loss is nan.*Lower lr"):
        train(cube, model="test-tiny", config=cfg, output=tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_train__needs_a_val_split(tmp_path):
    img, chm = _learnable_scene(256)
    only_train = xchm.chips.build(
        [(img, chm)],
        tmp_path / "t.zarr",
        bands=("nir", "red", "green"),
        fractions={"train": 1.0},
        progress=False,
    )
    with pytest.raises(InputError, match="no 'val' chips"):
        train(only_train, model="test-tiny", output=tmp_path / "r", progress=False)
