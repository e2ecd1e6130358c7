"""xchm.pretrain on CPU with test-tiny: learning, EMA teacher, exact resume, hand-over to train."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import xchm
import xchm.chips
from xchm.errors import (
    BandError,
    DeviceError,
    InputError,
    NonFiniteLossError,
    OutputExistsError,
    PathNotFoundError,
    RandomWeightsWarning,
    ResumeError,
    WeightsError,
    XCHMWarning,
)
from xchm.pretraining import PretrainConfig, pretrain
from xchm.pretraining.heads import IBOTLoss
from xchm.pretraining.network import SelfDistillationNet, block_masks
from xchm.pretraining.trainer import _SelfDistillation, _warn_if_collapsed
from xchm.runs.state import load_state, save_state
from xchm.training import TrainConfig

from ..training.test_trainer import _count_steps, _learnable_scene

#: Small heads and few views: seconds per run on a 2-core CPU.
SMALL = {
    "batch_size": 8,
    "out_dim": 64,
    "head_hidden": 32,
    "head_bottleneck": 16,
    "local_crops": 1,
}
ONE_STEP = PretrainConfig(**{**SMALL, "epochs": 1, "max_steps_per_epoch": 1})


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    """An unlabeled cube of a varied synthetic landscape (images only)."""
    from xchm.datasets import synthetic_landscape

    scene = synthetic_landscape(512, seed=3, nodata_edge=False)
    return xchm.chips.build(
        [scene["image"]],
        tmp_path_factory.mktemp("u") / "u.zarr",
        bands=("nir", "red", "green"),
        split_by="random",
        fractions={"train": 1.0},
        progress=False,
    )


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    img, chm = _learnable_scene(384)
    return xchm.chips.build(
        [xchm.chips.ScenePair(img, chm, scene="l")],
        tmp_path_factory.mktemp("l") / "l.zarr",
        bands=("nir", "red", "green"),
        block_size=1,
        progress=False,
    )


def _tensors(module_state):
    return {k: v.clone() for k, v in module_state.items()}


# -- parts ---------------------------------------------------------------------------------
def test_block_masks__ratio_bounds_and_one_patch_visible():
    cfg = PretrainConfig(mask_probability=1.0, mask_ratio_min=0.3, mask_ratio_max=1.0)
    masks = block_masks(200, (4, 4), cfg, generator=torch.Generator().manual_seed(0))
    counts = masks.sum(dim=1)
    assert int(counts.min()) >= round(0.3 * 16)
    assert int(counts.max()) <= 15  # never every patch
    none = block_masks(
        50, (4, 4), PretrainConfig(mask_probability=0.0), generator=torch.Generator()
    )
    assert not none.any()


def test_ibot_loss__counts_masked_patches_only():
    loss = IBOTLoss(8)
    student, teacher = torch.randn(2, 16, 8), torch.randn(2, 16, 8)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :3] = True
    before = loss(student, teacher, mask, teacher_temp=0.04)
    changed = student.clone()
    changed[1] += 5  # a view with no mask
    changed[0, 5:] -= 3  # unmasked patches of the masked view
    assert torch.equal(loss(changed, teacher, mask, teacher_temp=0.04), before)
    changed[0, 0] *= 2  # a masked patch
    assert not torch.equal(loss(changed, teacher, mask, teacher_temp=0.04), before)


def test_self_distillation_net__mask_hides_only_masked_patches():
    torch.manual_seed(0)
    net = SelfDistillationNet(xchm.load_model("test-tiny").backbone, PretrainConfig(**SMALL))
    with torch.no_grad():
        net.mask_token.normal_()  # a non-trivial mask token
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    with torch.no_grad():
        plain = net.features(x)
        assert torch.equal(net.features(x, mask), plain)  # nothing masked: the same
        mask[0, 4] = True
        masked = net.features(x, mask)
        assert torch.equal(masked[1], plain[1])  # the other chip is untouched
        assert not torch.allclose(masked[0], plain[0])
        assert torch.equal(net.features(x), plain)  # the mask does not stick


# -- the run -------------------------------------------------------------------------------
def test_pretrain__lowers_the_loss_on_an_unlabeled_cube(unlabeled, tmp_path):
    assert not unlabeled.labeled
    cfg = PretrainConfig(**{**SMALL, "epochs": 6, "lr": 2e-3, "warmup_epochs": 0.5})
    torch.set_num_threads(1)  # reproducible sums
    try:
        result = pretrain(
            unlabeled, model="test-tiny", config=cfg, output=tmp_path / "a", progress=False
        )
        # Control: the same views with a student that barely moves.
        still = pretrain(
            unlabeled,
            model="test-tiny",
            config=PretrainConfig(**{**cfg.to_dict(), "lr": 1e-9, "min_lr": 1e-9}),
            output=tmp_path / "b",
            progress=False,
        )
    finally:
        torch.set_num_threads(2)
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < losses[0] - 0.2, losses
    assert losses[-1] < still.history[-1]["loss"] - 0.2
    for row in result.history:
        assert {"dino_loss", "ibot_loss", "teacher_entropy", "teacher_batch_entropy"} <= set(row)
        assert row["teacher_batch_entropy"] > 0.5  # not collapsed onto one prototype
        assert row["teacher_information"] > 0.1  # outputs depend on the chip
    assert (tmp_path / "a" / "backbone" / "card.json").is_file()
    assert len((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()) == 6
    table = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    assert table[0].startswith("epoch,") and "teacher_information" in table[0]
    assert len(table) == 1 + 6


def test_pretrain__teacher_is_the_ema_of_the_student(unlabeled, tmp_path):
    cfg = PretrainConfig(**{**SMALL, "epochs": 1, "max_steps_per_epoch": 1})
    start = _SelfDistillation(unlabeled, cfg, "test-tiny", None, torch.device("cpu"), 1)
    start.build()
    s0, t0 = _tensors(start.student.state_dict()), _tensors(start.teacher.state_dict())
    for k in s0:
        assert torch.equal(s0[k], t0[k]), k  # both start from the same weights
    momentum = start.schedules(0)["momentum"]

    pretrain(unlabeled, model="test-tiny", config=cfg, output=tmp_path / "r", progress=False)
    state = load_state(
        tmp_path / "r" / "checkpoints" / "last.pt", expected_format="xchm-pretrain-state"
    )
    s1, t1 = state["student"], state["teacher"]
    moved = 0
    for name, _ in start.student.named_parameters():
        expected = t0[name] * momentum + s1[name] * (1 - momentum)
        torch.testing.assert_close(t1[name], expected, rtol=0, atol=1e-7, msg=name)
        moved += int(not torch.equal(s1[name], s0[name]))
    assert moved > 10  # the student took a real step, so the check above has teeth
    assert not torch.equal(
        t1["backbone.blocks.0.attn.qkv.weight"], s1["backbone.blocks.0.attn.qkv.weight"]
    )


def test_pretrain__resume_reaches_the_uninterrupted_state(unlabeled, tmp_path, monkeypatch):
    cfg = PretrainConfig(**{**SMALL, "epochs": 2, "max_steps_per_epoch": 4, "checkpoint_every": 2})
    full = pretrain(
        unlabeled, model="test-tiny", config=cfg, output=tmp_path / "full", progress=False
    )

    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def flaky_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4 + 3:  # epoch 1, after its mid-epoch checkpoint at step 2
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", flaky_step)
        with pytest.raises(KeyboardInterrupt):
            pretrain(
                unlabeled, model="test-tiny", config=cfg, output=tmp_path / "cut", progress=False
            )
    cut = load_state(
        tmp_path / "cut" / "checkpoints" / "last.pt", expected_format="xchm-pretrain-state"
    )
    assert (cut["epoch"], cut["batch"]) == (1, 2)  # 4 steps per epoch: 6 steps saved
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 1

    ran = _count_steps(monkeypatch)
    resumed = pretrain(
        unlabeled,
        model="test-tiny",
        config=cfg,
        output=tmp_path / "cut",
        resume=True,
        progress=False,
    )
    # It started where the cut run stopped: 2 steps to go, the optimizer already at 6.
    assert ran == {"steps": 2, "optimizer_step_before": 6}
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 2
    a = load_state(
        tmp_path / "full" / "checkpoints" / "last.pt", expected_format="xchm-pretrain-state"
    )
    b = load_state(
        tmp_path / "cut" / "checkpoints" / "last.pt", expected_format="xchm-pretrain-state"
    )
    for part in ("student", "teacher", "dino_loss", "ibot_loss"):
        for key in a[part]:
            torch.testing.assert_close(b[part][key], a[part][key], rtol=0, atol=0, msg=key)
    keys = ("loss", "dino_loss", "ibot_loss", "steps")
    assert [[r[k] for k in keys] for r in resumed.history] == [
        [r[k] for k in keys] for r in full.history
    ]


def test_pretrain__refuses_overwrite_changed_config_and_tiny_cubes(unlabeled, tmp_path):
    cfg = ONE_STEP
    pretrain(unlabeled, model="test-tiny", config=cfg, output=tmp_path / "r", progress=False)
    with pytest.raises(OutputExistsError, match="resume=True"):
        pretrain(unlabeled, model="test-tiny", config=cfg, output=tmp_path / "r", progress=False)
    with pytest.raises(ResumeError, match="config: these differ: \\['lr'\\]"):
        pretrain(
            unlabeled,
            model="test-tiny",
            config=PretrainConfig(**{**cfg.to_dict(), "lr": 0.1}),
            output=tmp_path / "r",
            resume=True,
            progress=False,
        )
    with pytest.raises(PathNotFoundError, match="nothing to resume"):
        pretrain(unlabeled, model="test-tiny", config=cfg, output=tmp_path / "new", resume=True)
    with pytest.raises(InputError, match="smaller batch_size"):
        pretrain(
            unlabeled,
            model="test-tiny",
            config=PretrainConfig(**{**cfg.to_dict(), "batch_size": 100_000}),
            output=tmp_path / "big",
        )
    assert not (tmp_path / "new").exists() and not (tmp_path / "big").exists()


def test_pretrain__refuses_a_folder_it_did_not_write(unlabeled, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "config.json").write_text('{"mine": 1}')
    with pytest.raises(OutputExistsError, match="not written by xchm"):
        xchm.pretrain(unlabeled, model="test-tiny", output=proj, config=ONE_STEP, progress=False)
    assert [p.name for p in proj.iterdir()] == ["config.json"]
    assert (proj / "config.json").read_text() == '{"mine": 1}'


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"cube": "labeled"},
            "cube: the run trained on the cube .*u.zarr, this call gives .*l.zarr",
        ),
        ({"model": "dinov3-vits16"}, "model: the run used 'test-tiny', this call gives 'dinov3"),
    ],
)
def test_pretrain__resume_refuses_another_cube_or_model(
    unlabeled, labeled, tmp_path, change, message
):
    out = tmp_path / "run"
    pretrain(unlabeled, model="test-tiny", config=ONE_STEP, output=out, progress=False)
    state = (out / "checkpoints" / "last.pt").read_bytes()
    given = {"cube": unlabeled, "model": "test-tiny"}
    given.update({k: labeled if v == "labeled" else v for k, v in change.items()})
    with pytest.raises(ResumeError, match=message):
        pretrain(given["cube"], model=given["model"], config=ONE_STEP, output=out, resume=True)
    assert (out / "checkpoints" / "last.pt").read_bytes() == state


def test_pretrain__resume_of_a_state_without_fingerprint_still_refuses_another_model(
    unlabeled, tmp_path
):
    out = tmp_path / "run"
    pretrain(unlabeled, model="test-tiny", config=ONE_STEP, output=out, progress=False)
    state = load_state(out / "checkpoints" / "last.pt", expected_format="xchm-pretrain-state")
    del state["job"]  # as an earlier xchm saved it
    save_state(state, out / "checkpoints" / "last.pt")
    with (
        pytest.warns(XCHMWarning, match="did not record its cube, model and weights"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", RandomWeightsWarning)
        with pytest.raises(ResumeError, match="does not fit the model 'dinov3-vits16'"):
            pretrain(unlabeled, model="dinov3-vits16", config=ONE_STEP, output=out, resume=True)


def test_pretrain__a_diverging_loss_is_a_non_finite_loss_error(unlabeled, tmp_path):
    cfg = PretrainConfig(
        **{
            **SMALL,
            "epochs": 1,
            "max_steps_per_epoch": 3,
            "lr": 1e30,
            "grad_clip": 0.0,
            "warmup_epochs": 0.0,
        }
    )
    with pytest.raises(NonFiniteLossError, match="pretraining loss is nan.*Lower lr"):
        pretrain(unlabeled, model="test-tiny", config=cfg, output=tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_pretrain__cuda_without_a_gpu_is_a_device_error(unlabeled, tmp_path):
    with pytest.raises(DeviceError, match="CUDA is not available"):
        pretrain(
            unlabeled, model="test-tiny", config=ONE_STEP, output=tmp_path / "r", device="cuda"
        )
    assert not (tmp_path / "r").exists()


# -- hand-over to fine-tuning --------------------------------------------------------------
def test_pretrained_backbone__loads_in_train_with_its_bands_and_statistics(
    unlabeled, labeled, tmp_path
):
    cfg = PretrainConfig(**{**SMALL, "epochs": 1, "max_steps_per_epoch": 2})
    run = pretrain(
        unlabeled, model="test-tiny", config=cfg, output=tmp_path / "ssl", progress=False
    )
    teacher = load_state(
        tmp_path / "ssl" / "checkpoints" / "last.pt", expected_format="xchm-pretrain-state"
    )["teacher"]
    assert unlabeled.statistics != labeled.statistics  # so the check below means something

    result = xchm.train(
        labeled,
        model="test-tiny",
        weights=run.backbone,
        config=TrainConfig(epochs=1, batch_size=8, num_workers=0, max_steps_per_epoch=2),
        output=tmp_path / "ft",
        progress=False,
    )
    tuned = xchm.load_model(result.best_checkpoint)
    for key, value in tuned.backbone.state_dict().items():
        torch.testing.assert_close(value, teacher["backbone." + key], rtol=0, atol=0, msg=key)
    assert tuned.card.statistics == unlabeled.statistics  # the backbone's, not the cube's
    assert tuned.card.provenance["backbone_from"] == str(run.backbone)
    assert tuned.card.provenance["backbone_provenance"]["pretraining"] == "dino"


def test_checkpoint_weights__refuse_other_bands_band_maps_and_presets(unlabeled, tmp_path):
    cfg = PretrainConfig(**{**SMALL, "epochs": 1, "max_steps_per_epoch": 1})
    run = pretrain(
        unlabeled, model="test-tiny", config=cfg, output=tmp_path / "ssl", progress=False
    )
    with pytest.raises(BandError, match="nir"):
        xchm.load_model("test-tiny", weights=run.backbone, bands=("red", "green", "blue"))
    with pytest.raises(InputError, match="band_map"):
        xchm.load_model("test-tiny", weights=run.backbone, band_map="reference")
    with pytest.raises(WeightsError, match="test-tiny"):
        xchm.load_model("dinov3-vits16", weights=run.backbone)
    x = torch.from_numpy(np.zeros((1, 3, 64, 64), dtype=np.float32))
    assert xchm.load_model("test-tiny", weights=run.backbone)(x).shape == (1, 1, 64, 64)


def test_cli_pretrain_then_train(unlabeled, labeled, tmp_path, capsys):
    from xchm.cli import main

    out = tmp_path / "ssl"
    code = main(
        [
            "pretrain",
            str(unlabeled.path),
            "-o",
            str(out),
            "--model",
            "test-tiny",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out-dim",
            "64",
            "--local-crops",
            "1",
            "--max-steps-per-epoch",
            "2",
            "-q",
        ]
    )
    assert code == 0
    assert "xchm train" in capsys.readouterr().out
    code = main(
        [
            "train",
            str(labeled.path),
            "-o",
            str(tmp_path / "ft"),
            "--model",
            "test-tiny",
            "--weights",
            str(out / "backbone"),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--num-workers",
            "0",
            "--max-steps-per-epoch",
            "1",
            "-q",
        ]
    )
    assert code == 0
    assert xchm.load_model(tmp_path / "ft" / "best").card.provenance["backbone_from"]


def test_pretrain__student_and_teacher_start_from_the_given_weights(unlabeled, tmp_path):
    from xchm.testing import write_meta_weights

    rgb = write_meta_weights(tmp_path / "meta.pth", seed=7)  # a backbone unlike seed 0's
    cfg = PretrainConfig(**{**SMALL, "epochs": 1, "max_steps_per_epoch": 1})
    start = _SelfDistillation(
        unlabeled, cfg, "test-tiny", tmp_path / "meta.pth", torch.device("cpu"), 1
    )
    start.build()
    given = rgb.state_dict()
    for net in (start.student, start.teacher):
        own = net.backbone.state_dict()
        for key, value in given.items():
            if key != "patch_embed.proj.weight":  # adapted to the cube's bands
                torch.testing.assert_close(own[key], value, rtol=0, atol=0, msg=key)
    # Continuing from an earlier run's backbone: its teacher is the new start.
    run = pretrain(unlabeled, model="test-tiny", config=cfg, output=tmp_path / "a", progress=False)
    again = _SelfDistillation(unlabeled, cfg, "test-tiny", run.backbone, torch.device("cpu"), 1)
    again.build()
    before = xchm.load_model(run.backbone).backbone.state_dict()
    for key, value in again.teacher.backbone.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)


def _student_change(cube, tmp_path, name, **settings):
    """Max |change| of each student tensor over a short run from its seeded start."""
    base = {**SMALL, "epochs": 1, "max_steps_per_epoch": 3, "warmup_epochs": 0}
    cfg = PretrainConfig(**{**base, **settings})
    start = _SelfDistillation(cube, cfg, "test-tiny", None, torch.device("cpu"), 1)
    start.build()
    before = _tensors(start.student.state_dict())
    out = tmp_path / name
    pretrain(cube, model="test-tiny", config=cfg, output=out, progress=False)
    after = load_state(out / "checkpoints" / "last.pt", expected_format="xchm-pretrain-state")
    return {k: float((after["student"][k] - before[k]).abs().max()) for k in before}


def test_pretrain__layer_decay_holds_the_bottom_of_the_backbone(unlabeled, tmp_path):
    embed, top = "backbone.patch_embed.proj.weight", "backbone.blocks.3.attn.qkv.weight"
    plain = _student_change(unlabeled, tmp_path, "plain", layer_decay=1.0)
    held = _student_change(unlabeled, tmp_path, "held", layer_decay=1e-3)
    assert plain[embed] > 1e-4 and plain[top] > 1e-4
    assert held[embed] < 1e-9 < held[top]  # 1e-3**5 vs 1e-3 of the rate


def test_pretrain__weight_decay_follows_its_cosine_schedule(unlabeled, tmp_path):
    from xchm.pretraining.heads import cosine_schedule

    cfg = PretrainConfig(
        **{**SMALL, "epochs": 2, "max_steps_per_epoch": 2}, weight_decay=0.04, weight_decay_end=0.4
    )
    out = tmp_path / "wd"
    result = pretrain(unlabeled, model="test-tiny", config=cfg, output=out, progress=False)
    wd = [row["weight_decay"] for row in result.history]
    # rows carry the value at each epoch's last step (1 and 3 of 4): rising to 0.4
    assert wd == pytest.approx([cosine_schedule(0.04, 0.4, s, 4) for s in (1, 3)])
    assert 0.04 < wd[0] < wd[1] < 0.4
    state = load_state(out / "checkpoints" / "last.pt", expected_format="xchm-pretrain-state")
    used = {g["wd_scale"]: g["weight_decay"] for g in state["optimizer"]["param_groups"]}
    assert used == pytest.approx({1.0: cosine_schedule(0.04, 0.4, 3, 4), 0.0: 0.0})


def test_pretrain__frozen_prototypes_wait_for_their_epochs(unlabeled, tmp_path):
    top = "backbone.blocks.3.attn.qkv.weight"
    frozen = _student_change(unlabeled, tmp_path, "frozen", freeze_prototypes_epochs=1.0)
    free = _student_change(unlabeled, tmp_path, "free", freeze_prototypes_epochs=0.0)
    protos = [k for k in frozen if k.endswith("prototypes")]
    assert len(protos) == 2  # the DINO and the iBOT head
    assert max(frozen[k] for k in protos) == 0 and frozen[top] > 1e-4
    assert min(free[k] for k in protos) > 1e-4


def test_entropies__information_is_zero_when_every_chip_looks_alike():
    from xchm.pretraining.trainer import _entropies

    sched = {"teacher_temp": 1.0}
    alike = _entropies(torch.randn(1, 16).repeat(8, 1), sched)
    assert alike["teacher_information"] == pytest.approx(0.0, abs=1e-5)
    assert alike["teacher_batch_entropy"] > 0.5  # the batch-entropy check alone misses it
    distinct = _entropies(30 * torch.eye(8, 16), sched)  # each chip its own prototype
    assert distinct["teacher_information"] == pytest.approx(math.log(8), abs=1e-3)


def test_pretrain__warns_when_the_teacher_ignores_its_input(caplog):
    import logging

    row = {"epoch": 3, "loss": 1.0, "teacher_information": 1e-4}
    with caplog.at_level(logging.WARNING, logger="xchm.pretraining.trainer"):
        _warn_if_collapsed(row)
        _warn_if_collapsed({**row, "epoch": 4, "teacher_information": 0.5})
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "epoch 3" in warned[0] and "collapsed" in warned[0]
