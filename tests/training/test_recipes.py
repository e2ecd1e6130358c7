"""Training recipes: TrainConfig.recipe and ``xchm train --recipe`` (no training here)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xchm.cli import build_parser, main
from xchm.cli.train import _train_config
from xchm.errors import InputError
from xchm.training import RECIPES, TrainConfig


def test_recipe__reference_is_the_defaults():
    assert TrainConfig.recipe("reference") == TrainConfig()


def test_recipe__each_sets_its_fields_and_keeps_the_other_defaults():
    defaults = TrainConfig().to_dict()
    for name, fields in RECIPES.items():
        cfg = TrainConfig.recipe(name).to_dict()
        assert {k: cfg[k] for k in fields} == dict(fields)
        assert {k: v for k, v in cfg.items() if k not in fields} == {
            k: v for k, v in defaults.items() if k not in fields
        }


def test_recipe__small_data_and_from_scratch_leave_the_reference_settings_that_do_not_learn():
    for name in ("small-data", "from-scratch"):
        cfg = TrainConfig.recipe(name)
        assert cfg.lr >= 1e-3 and cfg.loss == "mse" and cfg.output_bias_percentile == 50
        assert cfg.policy != "frozen" and cfg.batch_size <= 16


@given(
    name=st.sampled_from(sorted(RECIPES)),
    epochs=st.integers(1, 500),
    lr=st.floats(1e-8, 1.0),
)
def test_recipe__overrides_win_over_the_recipe(name, epochs, lr):
    cfg = TrainConfig.recipe(name, epochs=epochs, lr=lr)
    assert (cfg.epochs, cfg.lr) == (epochs, lr)
    assert cfg.policy == TrainConfig.recipe(name).policy


def test_recipe__unknown_name_lists_the_recipes():
    with pytest.raises(InputError, match="unknown training recipe 'fast'.*reference.*small-data"):
        TrainConfig.recipe("fast")


def test_recipe__bad_override_is_the_config_error():
    with pytest.raises(InputError, match="learning_rate"):
        TrainConfig.recipe("from-scratch", learning_rate=1.0)
    with pytest.raises(InputError, match="policy"):
        TrainConfig.recipe("from-scratch", policy="thaw")


def _args(*extra):
    return build_parser().parse_args(["train", "c.zarr", "-o", "run", *extra])


def test_cli_recipe__sets_the_config():
    assert _train_config(_args("--recipe", "from-scratch")) == TrainConfig.recipe("from-scratch")
    assert _train_config(_args()) == TrainConfig()  # no --recipe: the reference defaults


def test_cli_recipe__config_file_overrides_it_and_options_override_both(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"lr": 1e-3, "epochs": 7}))
    cfg = _train_config(_args("--recipe", "from-scratch", "--config", str(path), "--epochs", "3"))
    scratch = TrainConfig.recipe("from-scratch")
    assert (cfg.lr, cfg.epochs, cfg.policy, cfg.loss) == (1e-3, 3, scratch.policy, scratch.loss)


def test_cli_recipe__unknown_name_is_a_usage_error_listing_them(capsys):
    assert main(["train", "c.zarr", "-o", "run", "--recipe", "fast"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'fast'" in err and "from-scratch" in err


def test_cli_train__without_output_is_a_usage_error(tmp_path, capsys):
    assert main(["train", str(tmp_path / "c.zarr")]) == 2
    assert "-o/--output" in capsys.readouterr().err
