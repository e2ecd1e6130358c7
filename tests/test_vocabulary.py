"""One vocabulary across the public API (issue 16): the same name for the same idea.

``output=`` is where a function writes; ``split_by=`` is how chips are split (``split=``
is a split label); ``progress=`` defaults to True and ``nodata=`` to ``"auto"`` (the
input's own value) wherever they exist. Old keyword names keep working for one release
with a ``FutureWarning`` (each rename is exercised in the test module of its function).
"""

from __future__ import annotations

import inspect

import pytest

import xchm
import xchm.chips
import xchm.demo
from xchm.chips.cube import ChipCube
from xchm.chips.preview import preview

#: Every public function that writes files, and the old name(s) of its ``output``.
WRITERS = {
    xchm.predict_to_zarr: {"store"},
    xchm.write_cog: {"path"},
    xchm.chips.build: {"store"},
    xchm.chips.from_directories: {"store"},
    xchm.chips.from_hf_dataset: {"store"},
    preview: {"path"},
    ChipCube.preview: {"path"},
    xchm.evaluate: {"report"},
    xchm.evaluate_raster: {"report"},
    xchm.demo.run_demo: {"out"},
    xchm.train: set(),
    xchm.pretrain: set(),
}
#: Long-running functions with a progress bar.
LONG_RUNNING = [
    xchm.predict_to_zarr,
    xchm.chips.build,
    xchm.chips.from_directories,
    xchm.chips.from_hf_dataset,
    xchm.evaluate,
    xchm.train,
    xchm.pretrain,
    xchm.demo.run_demo,
]
#: Functions that read images with a nodata value.
NODATA = [
    xchm.predict,
    xchm.accessor.CHMAccessor.predict,
    xchm.chips.build,
    xchm.chips.from_directories,
    xchm.chips.from_hf_dataset,
]


def _parameters(function):
    return inspect.signature(function).parameters


@pytest.mark.parametrize("function", list(WRITERS), ids=lambda f: f.__qualname__)
def test_vocabulary__the_place_to_write_is_output(function):
    params = _parameters(function)
    assert "output" in params
    old = WRITERS[function]
    assert not (old | {"store", "report", "out"}) & set(params)  # (path: an input elsewhere)
    assert getattr(function, "__xchm_renamed__", {}).keys() >= old  # still accepted


@pytest.mark.parametrize(
    "function", [xchm.chips.build, xchm.chips.from_directories, xchm.chips.from_hf_dataset]
)
def test_vocabulary__the_splitting_method_is_split_by(function):
    assert "split_by" in _parameters(function) and "split" not in _parameters(function)
    assert function.__xchm_renamed__["split"] == "split_by"


def test_vocabulary__split_is_a_split_label_where_it_remains():
    for function in (xchm.evaluate, preview):
        assert _parameters(function)["split"].annotation == "str | None"


def test_vocabulary__progress_is_on_by_default_everywhere():
    defaults = {f.__qualname__: _parameters(f)["progress"].default for f in LONG_RUNNING}
    assert set(defaults.values()) == {True}, defaults


def test_vocabulary__nodata_defaults_to_the_inputs_own_everywhere():
    defaults = {f.__qualname__: _parameters(f)["nodata"].default for f in NODATA}
    assert set(defaults.values()) == {"auto"}, defaults


def test_vocabulary__renamed_keywords_keep_the_signature_and_docs():
    for function, old in WRITERS.items():
        if old:
            assert function.__wrapped__.__doc__ == function.__doc__
            assert inspect.signature(function) == inspect.signature(function.__wrapped__)
