"""Atomic saves of model directories (best checkpoint, pretrained backbone)."""

import pytest

import xchm
from xchm.training.state import save_model_dir


def test_save_model_dir__replaces_an_earlier_save(tmp_path):
    dest = tmp_path / "best"
    save_model_dir(xchm.load_model("test-tiny", seed=0), dest)
    second = xchm.load_model("test-tiny", seed=1)
    save_model_dir(second, dest)
    loaded = xchm.load_model(dest).state_dict()
    assert all((loaded[k] == v).all() for k, v in second.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temp dirs left


def test_save_model_dir__a_failed_save_keeps_the_previous_one(tmp_path):
    dest = tmp_path / "best"
    first = xchm.load_model("test-tiny", seed=0)
    save_model_dir(first, dest)

    class Failing:
        def save(self, path):
            path.mkdir()
            (path / "partial").write_text("half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model_dir(Failing(), dest)
    loaded = xchm.load_model(dest).state_dict()
    assert all((loaded[k] == v).all() for k, v in first.state_dict().items())
