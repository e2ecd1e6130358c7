"""xchm.training.find_lr and ``xchm train --find-lr`` (CPU, test-tiny)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from xchm.cli import main
from xchm.errors import InputError
from xchm.training import TrainConfig, find_lr
from xchm.training.lr_finder import suggest_lr

from .small_cube import learnable_cube, learnable_cube_fixture, one_thread  # noqa: F401

#: The settings swept: lr 1e-2 learns this cube in a few epochs (test_baseline_warning).
SCRATCH = TrainConfig.recipe("from-scratch", batch_size=8, num_workers=0, augment=False)


def _files(folder):
    return sorted(
        (os.path.relpath(os.path.join(d, f), folder), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, _, names in os.walk(folder)
        for f in names
    )


# -- reading the curve ----------------------------------------------------------------------
def _curve(best_log_lr, n=60, noise=0.0, seed=0):
    """A range-test curve: flat, falling around ``best_log_lr``, then blowing up."""
    lrs = np.logspace(-6, 1, n)
    x = np.log10(lrs)
    loss = 2 - np.tanh((x - best_log_lr) * 2) + np.exp(np.clip((x - best_log_lr - 1) * 4, -50, 50))
    return lrs, loss + np.random.default_rng(seed).normal(0, noise, n)


@given(best=st.floats(-4.5, -1.0))
def test_suggest_lr__min10_is_a_tenth_of_the_lowest_point(best):
    lrs, loss = _curve(best)
    lr, rule = suggest_lr(lrs, loss)
    assert rule == "min/10"
    assert lr == pytest.approx(lrs[np.argmin(loss)] / 10)


@given(best=st.floats(-4.5, -1.0))
def test_suggest_lr__steepest_is_on_the_falling_slope_before_the_lowest_point(best):
    lrs, loss = _curve(best)
    lr, rule = suggest_lr(lrs, loss, rule="steepest")
    assert rule == "steepest"
    assert lr < lrs[np.argmin(loss)]
    assert abs(np.log10(lr) - best) < 0.25  # tanh falls fastest at its centre


def test_suggest_lr__too_short_a_curve_gives_nan_and_a_flat_start_falls_back():
    assert np.isnan(suggest_lr([1e-3, 1e-2, 1e-1], [1.0, 0.5, 2.0])[0])
    lrs = np.logspace(-5, 0, 20)
    rising = np.linspace(1, 3, 20)  # lowest at the start: no slope before it to read
    assert suggest_lr(lrs, rising, rule="steepest")[1] == "min/10"


def test_find_lr__bad_arguments_are_named_at_once(cube):
    with pytest.raises(InputError, match="start_lr.*steps.*smoothing.*rule"):
        find_lr(cube, "test-tiny", start_lr=1.0, end_lr=0.1, steps=2, smoothing=1.0, rule="best")


# -- the sweep ------------------------------------------------------------------------------
@pytest.mark.slow
def test_find_lr__suggests_a_sane_lr_where_1e_2_is_known_to_learn(cube):
    state = torch.get_rng_state()
    found = find_lr(cube, "test-tiny", config=SCRATCH, steps=40, start_lr=1e-5, end_lr=10)
    assert len(found.lrs) == len(found.losses) == len(found.raw_losses) > 30
    assert np.all(np.diff(found.lrs) > 0) and found.lrs[0] == pytest.approx(1e-5)
    assert 1e-3 <= found.suggestion <= 1e-1, found.to_dict()
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    json.dumps(found.to_dict(), allow_nan=False)


def test_find_lr__a_diverging_sweep_stops_early(cube):
    cfg = TrainConfig.recipe("from-scratch", batch_size=8, num_workers=0, grad_clip=0.0)
    found = find_lr(cube, "test-tiny", config=cfg, steps=40, start_lr=1e-1, end_lr=1e6)
    assert found.stopped_early
    assert len(found.lrs) < 40
    last = found.losses[-1]
    assert not np.isfinite(last) or last > 4 * min(found.losses[:-1])


def test_cli_find_lr__prints_the_suggestion_and_writes_nothing(cube, tmp_path, capsys):
    before = _files(cube.path)
    run = tmp_path / "run"
    args = ["train", str(cube.path), "--find-lr", "--find-lr-steps", "12", "-o", str(run)]
    args += ["--model", "test-tiny", "--recipe", "from-scratch", "--batch-size", "8"]
    args += ["--num-workers", "0", "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "suggested lr:" in out and "--recipe from-scratch --lr " in out
    assert not run.exists() and list(tmp_path.iterdir()) == []
    assert _files(cube.path) == before


def test_cli_find_lr__json_is_the_curve(cube, capsys):
    args = ["train", str(cube.path), "--find-lr", "--find-lr-steps", "8", "--json", "-q"]
    args += ["--model", "test-tiny", "--recipe", "from-scratch", "--batch-size", "8"]
    args += ["--num-workers", "0"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["lrs"]) == len(data["losses"]) == 8 and data["rule"] in ("min/10", "steepest")
