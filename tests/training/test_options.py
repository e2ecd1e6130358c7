"""TrainConfig options that change how training runs, each observed where it acts.

Early stopping, the backbone's lower learning rate (``ft_rate``), the two
schedules, gradient clipping and the huber loss are watched at the optimizer
(learning rates, gradient norms and how far parameters move at each AdamW step);
``--config`` and ``--resume`` through ``xchm train`` / ``xchm pretrain``. CPU,
``test-tiny``, a cube of 36 chips: seconds per test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import torch
import xarray as xr

import xchm
import xchm.chips
from xchm.cli import main
from xchm.models.normalize import prepare_inputs
from xchm.runs.state import load_state
from xchm.training import TrainConfig, train
from xchm.training import epoch as epoch_module
from xchm.training import trainer as trainer_module
from xchm.training.losses import height_loss

#: Small, fast runs: 2-chip batches, no workers, no augmentation.
FAST = {"batch_size": 2, "num_workers": 0, "augment": False, "lr": 1e-3}


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    """36 chips of 64 px whose heights follow the NIR brightness (train and val)."""
    size = 384
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    nir = 2500 + 1500 * np.sin(yy / 23.0) * np.cos(xx / 31.0) + rng.normal(0, 100, yy.shape)
    image = np.stack([nir, 0.5 * nir, 0.4 * nir]).clip(1, 9000).astype("uint16")
    heights = (nir / 200.0 - 5).clip(0.1).astype("float32")
    coords = {"y": 7e6 - 2.0 * (np.arange(size) + 0.5), "x": 4e5 + 2.0 * (np.arange(size) + 0.5)}
    img = xr.DataArray(image, dims=("band", "y", "x"), coords=coords).rio.write_crs("EPSG:32617")
    chm = xr.DataArray(heights, dims=("y", "x"), coords=coords).rio.write_crs("EPSG:32617")
    built = xchm.chips.build(
        [xchm.chips.ScenePair(img, chm, scene="s")],
        tmp_path_factory.mktemp("cube") / "c.zarr",
        bands=("nir", "red", "green"),
        block_size=1,
        fractions={"train": 0.75, "val": 0.25},
        progress=False,
    )
    assert built.splits["train"] >= 16 and built.splits["val"] >= 4
    return built


@pytest.fixture
def steps(monkeypatch):
    """Record, at every AdamW step: group lrs, the gradient norm, how far each group moved."""
    records: list[dict] = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        params = {
            g["name"]: [p for p in g["params"] if p.grad is not None] for g in self.param_groups
        }
        grads = [p.grad for ps in params.values() for p in ps]
        norm = float(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        )
        before = {name: [p.detach().clone() for p in ps] for name, ps in params.items()}
        out = real_step(self, *args, **kwargs)
        moved = {
            name: max(
                (
                    float((p.detach() - b).abs().max())
                    for p, b in zip(ps, before[name], strict=True)
                ),
                default=0.0,
            )
            for name, ps in params.items()
        }
        records.append(
            {
                "lr": {g["name"]: g["lr"] for g in self.param_groups},
                "grad_norm": norm,
                "moved": moved,
                "optimizer_step": max(
                    (int(s["step"]) for s in self.state.values() if "step" in s), default=0
                ),
            }
        )
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    return records


def scripted_epochs(monkeypatch, val_losses):
    """Replace the epochs' work (not the loop around them): each validation reports the
    next of ``val_losses``; return the learning rates each epoch would train at.

    For what the loop decides (early stopping, schedules), the steps themselves do not
    matter; skipping them keeps the tests fast.
    """
    it = iter(val_losses)
    lrs: list[dict[str, float]] = []

    def fake_run_epoch(run, net, opt, *args, **kwargs):
        lrs.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()  # no gradients: changes nothing, but the scheduler sees a step
        return {"loss": 0.0, "steps": 1}

    def fake_validate(run, net):
        loss = next(it)
        return {"loss": loss, "mae": loss, "rmse": loss, "bias": 0.0, "n_pixels": 1}

    for module in (epoch_module, trainer_module):  # wherever the loop finds them
        monkeypatch.setattr(module, "run_epoch", fake_run_epoch, raising=module is epoch_module)
        monkeypatch.setattr(module, "validate", fake_validate, raising=module is epoch_module)
    return lrs


def run(cube, tmp_path, name="run", **settings):
    cfg = TrainConfig(**{**FAST, **settings})
    return train(cube, model="test-tiny", config=cfg, output=tmp_path / name, progress=False)


# -- early stopping ---------------------------------------------------------------------------
def test_train__early_stopping_after_patience_epochs_without_improvement(
    cube, tmp_path, monkeypatch
):
    # Best at epoch 1; epochs 2, 3 and 4 are no better: patience 3 ends the run there,
    # before the better epoch 5 it would have reached.
    scripted_epochs(monkeypatch, [5.0, 4.0, 4.5, 4.0, 4.2, 1.0, 1.0, 1.0])
    result = run(cube, tmp_path, epochs=8, patience=3)
    assert [r["epoch"] for r in result.history] == [0, 1, 2, 3, 4]
    assert result.stopped_early is True
    assert result.best_epoch == 1
    assert xchm.load_model(result.best_checkpoint).card.provenance["epoch"] == 1
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    state = load_state(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["epoch"] == 5
    assert state["best"] == {"loss": 4.0, "epoch": 1, "bad_epochs": 3}


def test_train__resume_after_early_stopping_trains_no_more(cube, tmp_path, monkeypatch):
    scripted_epochs(monkeypatch, [5.0, 6.0, 6.0])
    stopped = run(cube, tmp_path, epochs=8, patience=2)
    assert stopped.stopped_early and len(stopped.history) == 3
    # The run is over: resuming it finds nothing left to do (a better epoch would
    # otherwise be trained and recorded).
    lrs = scripted_epochs(monkeypatch, [1.0] * 8)
    cfg = TrainConfig(**{**FAST, "epochs": 8, "patience": 2})
    again = train(
        cube, model="test-tiny", config=cfg, output=tmp_path / "run", resume=True, progress=False
    )
    assert lrs == []
    assert again.stopped_early is True
    assert len(again.history) == 3 and again.best_epoch == 0


def test_train__without_a_stall_every_epoch_runs(cube, tmp_path, monkeypatch):
    # Two bad epochs at a time never reach patience 3; an improvement resets the count.
    scripted_epochs(monkeypatch, [5.0, 6.0, 6.0, 4.0, 7.0, 7.0])
    result = run(cube, tmp_path, epochs=6, patience=3)
    assert len(result.history) == 6 and result.stopped_early is False
    assert result.best_epoch == 3


# -- ft_rate: the backbone's lower learning rate ----------------------------------------------
def test_train__ft_rate_scales_the_backbone_step(cube, tmp_path, steps):
    # AdamW's first step moves each parameter by lr * g / (|g| + eps), i.e. by its
    # group's lr wherever the gradient is not tiny (no weight decay here).
    run(
        cube,
        tmp_path,
        epochs=1,
        max_steps_per_epoch=1,
        policy="full",
        ft_rate=0.1,
        lr=1e-3,
        weight_decay=0.0,
        grad_clip=0.0,
    )
    (first,) = steps
    assert first["lr"] == {"decoder": pytest.approx(1e-3), "backbone": pytest.approx(1e-4)}
    assert first["moved"]["decoder"] == pytest.approx(1e-3, rel=1e-3)
    assert first["moved"]["backbone"] == pytest.approx(1e-4, rel=1e-3)


@pytest.mark.parametrize(("policy", "ft_rate"), [("full", 0.0), ("frozen", 0.5)])
def test_train__frozen_backbone_does_not_move(cube, tmp_path, steps, policy, ft_rate):
    run(cube, tmp_path, epochs=1, max_steps_per_epoch=1, policy=policy, ft_rate=ft_rate)
    (first,) = steps
    assert first["moved"]["backbone"] == 0.0
    assert first["moved"]["decoder"] > 0


# -- learning-rate schedules ------------------------------------------------------------------
def _lr(epochs, group="decoder"):
    return [e[group] for e in epochs]


def test_train__cosine_schedule_warms_up_then_decays(cube, tmp_path, monkeypatch):
    lrs = scripted_epochs(monkeypatch, [3.0, 2.0, 1.0, 0.5])
    result = run(cube, tmp_path, epochs=4, scheduler="cosine", warmup_epochs=1, ft_rate=0.1)
    # Epoch 0 warms up at half the rate; then a cosine over the 3 remaining epochs:
    # (1 + cos(pi * k / 3)) / 2 for k = 0, 1, 2.
    expected = [0.5e-3, 1e-3, 0.75e-3, 0.25e-3]
    assert _lr(lrs) == pytest.approx(expected)
    assert _lr(lrs, "backbone") == pytest.approx([0.1 * x for x in expected])
    # The history records the rate after each epoch's scheduler step (the next epoch's).
    assert [r["lr_decoder"] for r in result.history] == pytest.approx(
        [*expected[1:], 0.0], abs=1e-12
    )


def test_train__cosine_schedule_with_longer_warmup(cube, tmp_path, monkeypatch):
    lrs = scripted_epochs(monkeypatch, [5.0, 4.0, 3.0, 2.0, 1.0])
    run(cube, tmp_path, epochs=5, scheduler="cosine", warmup_epochs=2)
    # (e + 1) / 3 while warming up, then (1 + cos(pi * k / 3)) / 2.
    factors = [1 / 3, 2 / 3, 1.0, 0.75, 0.25]
    assert _lr(lrs) == pytest.approx([1e-3 * f for f in factors])


def test_train__plateau_schedule_halves_after_patience_down_to_min_lr(cube, tmp_path, monkeypatch):
    # The validation loss never improves after epoch 0. ReduceLROnPlateau with
    # patience 1 cuts the rate once 2 epochs in a row were no better: after epochs 2
    # and 4 (used from epochs 3 and 5), never below min_lr (backbone: min_lr * ft_rate).
    lrs = scripted_epochs(monkeypatch, [3.0] * 7)
    run(
        cube,
        tmp_path,
        epochs=7,
        patience=0,  # no early stopping
        scheduler="plateau",
        plateau_patience=1,
        plateau_factor=0.5,
        min_lr=3e-4,
        lr=1e-3,
        ft_rate=0.1,
    )
    expected = [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 3e-4, 3e-4]
    assert _lr(lrs) == pytest.approx(expected)
    assert _lr(lrs, "backbone") == pytest.approx([0.1 * x for x in expected])


def test_train__plateau_schedule_keeps_the_rate_while_the_loss_improves(
    cube, tmp_path, monkeypatch
):
    lrs = scripted_epochs(monkeypatch, [5.0, 4.0, 3.0, 2.0])
    run(cube, tmp_path, epochs=4, scheduler="plateau", plateau_patience=0, lr=1e-3)
    assert _lr(lrs) == pytest.approx([1e-3] * 4)


def test_train__learning_rates_reach_the_optimizer_steps(cube, tmp_path, steps):
    # The schedule acts on the groups that AdamW steps with (cosine, first epoch: half).
    run(cube, tmp_path, epochs=2, max_steps_per_epoch=1, scheduler="cosine", ft_rate=0.1)
    assert [r["lr"]["decoder"] for r in steps] == pytest.approx([0.5e-3, 1e-3])
    assert [r["lr"]["backbone"] for r in steps] == pytest.approx([0.5e-4, 1e-4])


# -- gradient clipping ------------------------------------------------------------------------
def test_train__grad_clip_bounds_the_gradient_norm(cube, tmp_path, steps):
    # An output bias far from the labels gives large gradients to clip.
    settings = {"epochs": 1, "max_steps_per_epoch": 1, "output_bias_percentile": None}
    run(cube, tmp_path, "free", grad_clip=0.0, **settings)
    free = [r["grad_norm"] for r in steps]
    assert min(free) > 10 * 0.05  # so the clip below has work to do
    steps.clear()
    run(cube, tmp_path, "clipped", grad_clip=0.05, **settings)
    clipped = [r["grad_norm"] for r in steps]
    assert len(clipped) == 1
    assert max(clipped) == pytest.approx(0.05, rel=1e-4)
    assert all(n <= 0.05 * (1 + 1e-4) for n in clipped)


# -- the huber loss ---------------------------------------------------------------------------
def test_height_loss__huber_by_hand():
    pred = torch.tensor([0.0, 0.5, 3.0, 1.0])
    target = torch.tensor([2.0, 0.0, 0.5, float("nan")])
    # |e| = 2, 0.5, 2.5; huber(e) = e^2 / 2 if |e| <= delta else delta * (|e| - delta / 2).
    delta1 = (1 * (2 - 0.5) + 0.5**2 / 2 + 1 * (2.5 - 0.5)) / 3
    delta2 = (2**2 / 2 + 0.5**2 / 2 + 2 * (2.5 - 1)) / 3
    assert float(height_loss(pred, target, TrainConfig(loss="huber"))) == pytest.approx(delta1)
    cfg = TrainConfig(loss="huber", huber_delta=2.0)
    assert float(height_loss(pred, target, cfg)) == pytest.approx(delta2)


def test_train__loss_huber_is_what_training_and_validation_use(cube, tmp_path):
    result = run(cube, tmp_path, epochs=1, max_steps_per_epoch=1, loss="huber", huber_delta=0.5)
    # Recompute the validation loss of the saved model by hand: huber with delta 0.5.
    model = xchm.load_model(result.best_checkpoint)
    val = cube.sel(split="val")
    image, height = val.read(np.arange(len(val)))
    x = prepare_inputs(
        torch.from_numpy(image), cube.nodata, model.card.statistics, torch.device("cpu")
    )
    with torch.inference_mode():
        pred = model(x, validate=False)[:, 0].double().numpy()
    valid = np.isfinite(height)
    err = np.abs(pred - height)[valid]
    huber = np.where(err <= 0.5, err**2 / 2, 0.5 * (err - 0.25)).mean()
    assert result.history[0]["val_loss"] == pytest.approx(huber, rel=1e-4)
    assert not result.history[0]["val_loss"] == pytest.approx((err**2).mean(), rel=1e-2)


# -- xchm train: --config and --resume --------------------------------------------------------
def _train_argv(cube, out, *extra):
    return ["train", str(cube.path), "-o", str(out), "--model", "test-tiny", "-q", *extra]


def test_cli_train__config_file_sets_fields_and_options_override_it(cube, tmp_path, steps):
    config = tmp_path / "cfg.json"
    config.write_text(
        json.dumps(
            {
                "epochs": 2,  # the option below says 1
                "batch_size": 2,
                "num_workers": 0,
                "max_steps_per_epoch": 1,
                "lr": 2.5e-4,
                "ft_rate": 0.2,
                "policy": "full",
                "loss": "huber",  # fields without an option of their own:
                "huber_delta": 2.0,
                "grad_clip": 0.0,
                "augment": False,
            }
        )
    )
    out = tmp_path / "run"
    assert main(_train_argv(cube, out, "--config", str(config), "--epochs", "1")) == 0
    saved = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert saved.epochs == 1  # the option wins over the file
    assert (saved.lr, saved.loss, saved.huber_delta, saved.grad_clip) == (2.5e-4, "huber", 2.0, 0.0)
    assert saved.augment is False
    assert len(steps) == 1  # 1 epoch of 1 step
    assert steps[0]["lr"] == {"decoder": pytest.approx(2.5e-4), "backbone": pytest.approx(5e-5)}


def test_cli_train__bad_config_field_is_one_line_error(cube, tmp_path, capsys):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"learning_rate": 1e-3}))
    assert main(_train_argv(cube, tmp_path / "run", "--config", str(config))) == 1
    err = capsys.readouterr().err
    assert "learning_rate" in err and "Traceback" not in err


def test_cli_train__resume_continues_a_cut_run(cube, tmp_path, monkeypatch, capsys):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({**FAST, "epochs": 2, "max_steps_per_epoch": 2}))
    out = tmp_path / "run"
    argv = _train_argv(cube, out, "--config", str(config))
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def cut_in_epoch_one(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1, its first batch: the state on disk is at (1, 0)
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", cut_in_epoch_one)
        assert main(argv) == 130
    cut = load_state(out / "checkpoints" / "last.pt")
    assert (cut["epoch"], cut["batch"]) == (1, 0)
    # Without --resume the run directory is not started over.
    assert main(argv) == 1
    assert "resume" in capsys.readouterr().err

    done = []
    real_step = torch.optim.AdamW.step

    def counting(self, *args, **kwargs):
        if not done:
            done.append(max(int(s["step"]) for s in self.state.values() if "step" in s))
        done.append("step")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting)
    assert main([*argv, "--resume"]) == 0
    # It started after the 2 steps of epoch 0 and ran only epoch 1.
    assert done == [2, "step", "step"]
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert "best epoch" in capsys.readouterr().out


# -- xchm pretrain: --config and --resume -----------------------------------------------------
#: Small heads, one local crop: a pretraining step takes well under a second.
SMALL_PRETRAIN = {
    "batch_size": 4,
    "out_dim": 32,
    "head_hidden": 16,
    "head_bottleneck": 8,
    "local_crops": 1,
}


def _pretrain_argv(cube, out, *extra):
    return ["pretrain", str(cube.path), "-o", str(out), "--model", "test-tiny", "-q", *extra]


def test_cli_pretrain__config_file_sets_fields_and_options_override_it(cube, tmp_path):
    from xchm.pretraining import PretrainConfig

    config = tmp_path / "cfg.json"
    settings = {**SMALL_PRETRAIN, "epochs": 1, "max_steps_per_epoch": 1, "teacher_temp": 0.05}
    config.write_text(json.dumps(settings))
    out = tmp_path / "ssl"
    assert main(_pretrain_argv(cube, out, "--config", str(config), "--out-dim", "24")) == 0
    saved = PretrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert saved.out_dim == 24  # the option wins over the file
    assert (saved.head_hidden, saved.head_bottleneck, saved.teacher_temp) == (16, 8, 0.05)
    state = load_state(out / "checkpoints" / "last.pt", expected_format="xchm-pretrain-state")
    assert state["dino_loss"]["center"].shape[-1] == 24  # the heads were built from it


def test_cli_pretrain__resume_continues_a_cut_run(cube, tmp_path, monkeypatch):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({**SMALL_PRETRAIN, "epochs": 2, "max_steps_per_epoch": 2}))
    out = tmp_path / "ssl"
    argv = _pretrain_argv(cube, out, "--config", str(config))
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def cut_in_epoch_one(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", cut_in_epoch_one)
        assert main(argv) == 130
    cut = load_state(out / "checkpoints" / "last.pt", expected_format="xchm-pretrain-state")
    assert (cut["epoch"], cut["batch"]) == (1, 0)
    assert main(argv) == 1  # refused without --resume

    done = []
    real_step = torch.optim.AdamW.step

    def counting(self, *args, **kwargs):
        if not done:
            done.append(max(int(s["step"]) for s in self.state.values() if "step" in s))
        done.append("step")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting)
    assert main([*argv, "--resume"]) == 0
    assert done == [2, "step", "step"]
    state = load_state(out / "checkpoints" / "last.pt", expected_format="xchm-pretrain-state")
    assert (state["epoch"], state["batch"]) == (2, 0)
    assert [r["epoch"] for r in state["history"]] == [0, 1]
