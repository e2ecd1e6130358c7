"""The run skeleton train and pretrain share (xchm.runs): each guarantee, checked in both."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import xchm
import xchm.chips
from xchm.errors import InputError, NonFiniteLossError, OutputExistsError, ResumeError
from xchm.pretraining import PretrainConfig, PretrainResult, pretrain
from xchm.runs import distributed
from xchm.runs.config import RunConfig
from xchm.runs.distributed import place
from xchm.runs.model import model_for_cube
from xchm.runs.run import Run
from xchm.runs.state import load_state, save_state
from xchm.training import TrainConfig, TrainResult, train

KINDS = ("training", "pretraining")
FORMATS = {"training": "xchm-train-state", "pretraining": "xchm-pretrain-state"}
#: Two steps an epoch, small heads: a run takes a second or two on the CPU.
SETTINGS = {
    "training": {"batch_size": 4, "num_workers": 0, "augment": False, "max_steps_per_epoch": 2},
    "pretraining": {
        "batch_size": 4,
        "max_steps_per_epoch": 2,
        "out_dim": 32,
        "head_hidden": 16,
        "head_bottleneck": 8,
        "local_crops": 1,
    },
}


def _config(kind, **settings):
    config_type = TrainConfig if kind == "training" else PretrainConfig
    return config_type(**{**SETTINGS[kind], "epochs": 1, **settings})


def _run(kind, cube, output, *, resume=False, progress=False, **settings):
    function = train if kind == "training" else pretrain
    return function(
        cube,
        model="test-tiny",
        config=_config(kind, **settings),
        output=output,
        resume=resume,
        progress=progress,
    )


def _rows(output):
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


class _Writer:
    """Stands in for torch.utils.tensorboard.SummaryWriter (not installed here)."""

    scalars: list[tuple[str, str, float, int]] = []

    def __init__(self, log_dir):
        self.log_dir = log_dir

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_scalar(self, tag, value, step):
        self.scalars.append((self.log_dir, tag, value, step))


# -- logs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_run__logs_metrics_jsonl_csv_and_tensorboard(kind, cube, tmp_path, monkeypatch):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _Writer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    monkeypatch.setattr(_Writer, "scalars", [])
    out = tmp_path / "run"
    result = _run(kind, cube, out, epochs=2, tensorboard=True)
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [0, 1] and rows == result.history
    table = (out / "metrics.csv").read_text().splitlines()
    assert table[0].split(",") == list(rows[0])
    assert [line.split(",") for line in table[1:]] == [[str(v) for v in r.values()] for r in rows]
    logged = {(tag, step): value for _, tag, value, step in _Writer.scalars}
    assert {d for d, *_ in _Writer.scalars} == {str(out / "tensorboard")}
    for r in rows:
        for key, value in r.items():
            if key != "epoch":
                assert logged[(key, r["epoch"])] == value


@pytest.mark.parametrize("kind", KINDS)
def test_run__a_run_killed_before_its_logs_logs_each_epoch_once(kind, cube, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_log, calls = Run.log, []

    def killed_at_the_second(self, history):
        calls.append(len(history))
        if len(calls) == 2:  # epoch 1's state is saved; its logs are not
            raise KeyboardInterrupt
        real_log(self, history)

    with monkeypatch.context() as m:
        m.setattr(Run, "log", killed_at_the_second)
        with pytest.raises(KeyboardInterrupt):
            _run(kind, cube, out, epochs=2)
    assert len(_rows(out)) == 1
    assert load_state(out / "checkpoints" / "last.pt", expected_format=FORMATS[kind])["epoch"] == 2
    result = _run(kind, cube, out, epochs=2, resume=True)  # nothing left to train
    assert [r["epoch"] for r in _rows(out)] == [0, 1] == [r["epoch"] for r in result.history]
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 2


# -- the non-finite loss check -----------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_run__a_diverging_loss_stops_before_its_checkpoint(kind, cube, tmp_path):
    settings = {"lr": 1e30, "grad_clip": 0.0, "max_steps_per_epoch": 3}
    if kind == "pretraining":
        settings["warmup_epochs"] = 0.0
    with pytest.raises(NonFiniteLossError, match=f"{kind} loss is (nan|inf) .*Lower lr"):
        _run(kind, cube, tmp_path / "r", **settings)
    assert not (tmp_path / "r" / "checkpoints").exists()
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_check_loss__passes_finite_values_and_names_the_step(tmp_path):
    run = Run("training", TrainConfig(), None, tmp_path, place("cpu"), {}, {"model": "m"})
    run.check_loss(1e30, 0, 0, "Lower lr")
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(NonFiniteLossError, match="at epoch 2 step 7: .*Lower lr, and start"):
            run.check_loss(bad, 2, 7, "Lower lr")


# -- resume ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_run__resume_refuses_another_config_or_another_kind_of_run(kind, cube, tmp_path):
    out = tmp_path / "run"
    _run(kind, cube, out)
    state = (out / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ResumeError, match=r"config: these differ: \['lr'\]"):
        _run(kind, cube, out, resume=True, lr=0.5)
    other = "pretraining" if kind == "training" else "training"
    with pytest.raises(OutputExistsError, match=f"holds an xchm {kind} run, not a {other} run"):
        _run(other, cube, out, resume=True)
    assert (out / "checkpoints" / "last.pt").read_bytes() == state  # untouched


@pytest.mark.parametrize("kind", KINDS)
def test_run__a_config_field_added_since_the_run_counts_as_its_default(kind, cube, tmp_path):
    out = tmp_path / "run"
    _run(kind, cube, out)
    path = out / "checkpoints" / "last.pt"
    state = load_state(path, expected_format=FORMATS[kind])
    del state["config"]["tensorboard"]  # as a run saved before the field existed
    save_state(state, path)
    assert len(_run(kind, cube, out, resume=True).history) == 1  # resumed, nothing to redo
    with pytest.raises(ResumeError, match=r"these differ: \['tensorboard'\]"):
        _run(kind, cube, out, resume=True, tensorboard=True)  # not the default: another job


# -- config base class -----------------------------------------------------------------------
@pytest.mark.parametrize("config_type", [TrainConfig, PretrainConfig])
def test_runconfig__save_load_and_every_problem_at_once(config_type, tmp_path):
    cfg = config_type(epochs=3, seed=5, checkpoint_every=10, tensorboard=True)
    assert isinstance(cfg, RunConfig)
    cfg.save(tmp_path / "c.json")
    assert config_type.load(tmp_path / "c.json") == cfg
    assert json.loads((tmp_path / "c.json").read_text()) == cfg.to_dict()
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="holds a JSON list, not an object"):
        config_type.load(tmp_path / "list.json")
    with pytest.raises(InputError, match=f"unknown {config_type.__name__} fields"):
        config_type.from_dict({**cfg.to_dict(), "epoch": 3})
    bad = "epochs.*batch_size.*seed.*lr.*grad_clip.*checkpoint_every"
    with pytest.raises(InputError, match=f"invalid {config_type.__name__}: {bad}"):
        config_type(epochs=0, batch_size=-1, seed=-1, lr=0, grad_clip=-1, checkpoint_every=0)


def test_runconfig__defaults_are_what_a_missing_field_means():
    assert TrainConfig.defaults()["epochs"] == 100 and PretrainConfig.defaults()["epochs"] == 10
    assert TrainConfig.defaults()["tensorboard"] is PretrainConfig.defaults()["tensorboard"]


# -- results ---------------------------------------------------------------------------------
def test_results__to_dict_is_strict_json():
    train_result = TrainResult(
        best_checkpoint=Path("runs/a/best"),
        history=[{"epoch": 0, "val_loss": math.nan, "steps": 3}],
        best_epoch=0,
        best_val_mae=math.inf,
    )
    data = train_result.to_dict()
    assert json.loads(json.dumps(data, allow_nan=False)) == {
        "best_checkpoint": "runs/a/best",
        "history": [{"epoch": 0, "val_loss": None, "steps": 3}],
        "best_epoch": 0,
        "stopped_early": False,
        "best_val_mae": None,
        "baseline_height": None,
        "baseline_mae": None,
        "beats_baseline": None,
    }
    ssl = PretrainResult(backbone=Path("ssl/backbone"), history=[{"loss": np.float32(2.5)}])
    assert ssl.to_dict() == {"backbone": "ssl/backbone", "history": [{"loss": 2.5}]}


# -- the model a run starts from ---------------------------------------------------------------
def test_model_for_cube__takes_the_cube_card_and_refuses_a_checkpoint_of_other_bands(
    cube, tmp_path
):
    net = model_for_cube(cube, "test-tiny", None, seed=0)
    assert net.card.bands == cube.bands and net.card.statistics == cube.statistics
    assert net.card.window == cube.window
    xchm.load_model("test-tiny", bands=("red", "green", "blue")).save(tmp_path / "rgb")
    with pytest.raises(InputError, match="expects bands"):
        model_for_cube(cube, tmp_path / "rgb", None, seed=0)


# -- DDP -------------------------------------------------------------------------------------
@pytest.mark.parametrize("made_by_caller", [False, True])
def test_process_group__xchm_ends_only_the_group_it_made(monkeypatch, made_by_caller):
    import torch.distributed as dist

    group = {"up": made_by_caller}
    registered: list = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dist, "is_initialized", lambda: group["up"])
    monkeypatch.setattr(dist, "init_process_group", lambda backend: group.update(up=True))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.atexit, "register", registered.append)
    assert distributed.process_group() == (1, 2, 0)
    assert distributed.process_group() == (1, 2, 0)  # joined: nothing more to do
    assert registered == ([] if made_by_caller else [distributed._destroy])
