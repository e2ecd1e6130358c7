"""xchm.train compares its best val MAE with predicting the train mean (CPU, test-tiny)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import xchm
from xchm.cli import main
from xchm.errors import XCHMWarning
from xchm.training import TrainConfig, train
from xchm.training.baseline import mean_baseline
from xchm.training.trainer import SUMMARY

from .small_cube import learnable_cube, learnable_cube_fixture, one_thread  # noqa: F401

#: A run that learns this cube: the from-scratch recipe, 3 short epochs.
LEARNS = TrainConfig.recipe("from-scratch", epochs=3, batch_size=8, num_workers=0, augment=False)
#: A run that cannot learn: a rate of ~0, the output started at the 90th percentile.
STUCK = TrainConfig.recipe(
    "reference", epochs=1, batch_size=8, num_workers=0, lr=1e-9, max_steps_per_epoch=1
)


def _no_skill_warnings(record):
    return [
        w for w in record if issubclass(w.category, XCHMWarning) and "train mean" in str(w.message)
    ]


def test_mean_baseline__is_the_train_mean_scored_on_val(cube):
    train_h = cube.sel(split="train").read(np.arange(cube.splits["train"]))[1]
    val_h = cube.sel(split="val").read(np.arange(cube.splits["val"]))[1]
    mean = float(np.nanmean(train_h.astype(np.float64)))
    base = mean_baseline(cube)
    assert base["height"] == pytest.approx(mean)
    assert base["mae"] == pytest.approx(float(np.nanmean(np.abs(val_h - mean))))
    assert base["n_pixels"] == int(np.isfinite(val_h).sum())
    # The very baseline xchm.evaluate reports on the val split (one reader of heights).
    model = xchm.load_model("test-tiny", bands=cube.bands, statistics=cube.statistics)
    scored = xchm.evaluate(model, cube, split="val", progress=False)
    assert scored.baseline["height"] == base["height"]
    assert scored.baseline["mae"] == pytest.approx(base["mae"], rel=1e-6)


def test_train__a_run_that_cannot_learn_warns_and_records_it(cube, tmp_path):
    with pytest.warns(
        XCHMWarning, match="no better than predicting the train mean.*--recipe.*find_lr"
    ):
        result = train(
            cube, model="test-tiny", config=STUCK, output=tmp_path / "run", progress=False
        )
    assert result.beats_baseline is False
    assert result.best_val_mae >= result.baseline_mae
    assert result.baseline_mae == pytest.approx(mean_baseline(cube)["mae"])
    summary = json.loads((tmp_path / "run" / SUMMARY).read_text())
    assert summary["beats_baseline"] is False
    assert summary["baseline_mae"] == pytest.approx(result.baseline_mae)
    assert summary["best_val_mae"] == pytest.approx(result.history[result.best_epoch]["val_mae"])


@pytest.mark.slow
def test_train__a_run_that_learns_does_not_warn(cube, tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = train(
            cube, model="test-tiny", config=LEARNS, output=tmp_path / "run", progress=False
        )
    assert not _no_skill_warnings(record)
    assert result.beats_baseline is True
    assert result.best_val_mae < result.baseline_mae
    summary = json.loads((tmp_path / "run" / SUMMARY).read_text())
    assert summary["beats_baseline"] is True and "history" not in summary
    assert xchm.load_model(summary["best_checkpoint"]) is not None


def test_cli_train__prints_the_baseline_comparison(cube, tmp_path, capsys):
    args = ["train", str(cube.path), "-o", str(tmp_path / "run"), "--model", "test-tiny"]
    args += ["--recipe", "reference", "--lr", "1e-9", "--epochs", "1", "--batch-size", "8"]
    args += ["--max-steps-per-epoch", "1", "--num-workers", "0", "-q"]
    with pytest.warns(XCHMWarning, match="train mean"):
        assert main(args) == 0
    out = capsys.readouterr().out
    assert "baseline (the train mean" in out and "does NOT beat it" in out
    assert "--recipe" in out and "--find-lr" in out
