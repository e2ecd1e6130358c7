"""The chip cube the run tests read (both kinds of run)."""

from __future__ import annotations

import pytest

import xchm.chips

from ..training.test_trainer import _learnable_scene


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    """36 labeled chips (train and val): both kinds of run read it."""
    img, chm = _learnable_scene(384)
    return xchm.chips.build(
        [xchm.chips.ScenePair(img, chm, scene="s")],
        tmp_path_factory.mktemp("cube") / "c.zarr",
        bands=("nir", "red", "green"),
        block_size=1,
        progress=False,
    )
