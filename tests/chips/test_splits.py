"""Split labels: no requested split left empty, stable, no block on two sides."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xchm.chips
from xchm.chips import SplitRule
from xchm.errors import XCHMWarning

from .conftest import CRS, LEFT, TOP

BANDS = ("nir", "red", "green")
RES = 2.0
FRACTIONS = st.sampled_from(
    [
        {"train": 0.8, "val": 0.2},
        {"train": 0.9, "val": 0.1},
        {"train": 0.5, "val": 0.5},
        {"train": 0.7, "val": 0.2, "test": 0.1},
        {"train": 0.98, "val": 0.01, "test": 0.01},
    ]
)


def _scene(height, width, seed=0, left=LEFT):
    """A fully valid image and positive heights: no chip is filtered out."""
    rng = np.random.default_rng(seed)
    coords = {
        "y": TOP - RES * (np.arange(height) + 0.5),
        "x": left + RES * (np.arange(width) + 0.5),
    }
    image = rng.integers(1, 4000, (3, height, width)).astype("uint16")
    heights = rng.uniform(1, 20, (height, width)).astype("float32")
    return (
        xr.DataArray(image, dims=("band", "y", "x"), coords=coords).rio.write_crs(CRS),
        xr.DataArray(heights, dims=("y", "x"), coords=coords).rio.write_crs(CRS),
    )


def _blocks_with_whole_chips(height, width, window, stride, block_size):
    """Blocks holding a chip wholly inside them (the units the guarantee counts)."""
    side = block_size * window
    blocks = set()
    for r in range(0, height - window + 1, stride):
        for c in range(0, width - window + 1, stride):
            if r // side == (r + window - 1) // side and c // side == (c + window - 1) // side:
                blocks.add((r // side, c // side))
    return len(blocks)


def _build(path, pairs, **kwargs):
    kwargs.setdefault("bands", BANDS)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("nodata", None)
    return xchm.chips.build(pairs, path, **kwargs)


def _labels_by_origin(cube):
    keys = zip(cube.coord("scene"), cube.coord("origin_x"), cube.coord("origin_y"), strict=True)
    return dict(zip(keys, cube.coord("split"), strict=True))


# -- the rule alone ------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    fractions=FRACTIONS,
    seed=st.integers(0, 2**31),
)
def test_assign__no_label_empty_when_units_suffice(sizes, fractions, seed):
    rule = SplitRule(fractions=fractions, seed=seed)
    units = {(f"s{g}", 0, b): f"s{g}" for g, n in enumerate(sizes) for b in range(n)}
    labels = rule.assign(units)
    assert set(labels) == set(units)
    if len(units) >= len(fractions):
        assert set(labels.values()) == set(fractions)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 60), fractions=FRACTIONS, seed=st.integers(0, 2**31))
def test_assign__a_large_group_keeps_the_fractions(n, fractions, seed):
    # Quota: floor or ceil of n * fraction per label, except where an empty label
    # took one unit (then the fullest label gave it).
    labels = SplitRule(fractions=fractions, seed=seed).assign({("s", 0, b): "s" for b in range(n)})
    counts = Counter(labels.values())
    for name, fraction in fractions.items():
        low, high = math.floor(n * fraction - 1e-9), math.ceil(n * fraction + 1e-9)
        assert low - 1 <= counts[name] <= max(high, 1)


def test_assign__a_group_of_one_is_labelled_by_its_hash_alone():
    rule = SplitRule(method="scene", fractions={"train": 0.5, "val": 0.5}, seed=3)
    for scene in ("a", "b", "c", "d"):
        assert rule.assign({(scene,): scene}) == {(scene,): rule.label(scene)}


def test_assign__does_not_depend_on_the_order_of_units():
    rule = SplitRule(fractions={"train": 0.7, "val": 0.2, "test": 0.1}, seed=1)
    units = [((f"s{i % 3}", i, 0), f"s{i % 3}") for i in range(20)]
    assert rule.assign(dict(units)) == rule.assign(dict(reversed(units)))


# -- cubes -----------------------------------------------------------------------------
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    stride=st.sampled_from([8, 16]),
    block_size=st.integers(1, 3),
    fractions=FRACTIONS,
    seed=st.integers(0, 2**16),
)
def test_build__no_requested_split_is_empty_when_blocks_suffice(
    tmp_path_factory, rows, cols, stride, block_size, fractions, seed
):
    window = 16
    height, width = rows * window, cols * window
    blocks = _blocks_with_whole_chips(height, width, window, stride, block_size)
    path = tmp_path_factory.mktemp("split") / "c.zarr"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cube = _build(
            path,
            [_scene(height, width, seed)],
            window=window,
            stride=stride,
            block_size=block_size,
            fractions=fractions,
            seed=seed,
        )
    empty = [w for w in caught if issubclass(w.category, XCHMWarning)]
    if blocks >= len(fractions):
        assert set(cube.splits) == set(fractions), (blocks, cube.splits)
        assert not empty
    else:
        assert set(cube.splits) != set(fractions) and len(empty) == 1


@pytest.mark.parametrize("seed", [1, 6, 8, 15])
def test_build__one_512_px_scene_at_stride_32_always_has_val(tmp_path, seed):
    # The case the issue measured: 2 x 2 blocks; hashed alone, val was empty about 4
    # times in 10, with seeds 6, 8 and 15 among them.
    cube = _build(tmp_path / "c.zarr", [_scene(512, 512, seed)], stride=32, block_size=4, seed=seed)
    assert cube.splits["val"] > 0 and cube.splits["train"] > cube.splits["val"]


def test_build__warns_with_the_counts_when_blocks_are_fewer_than_splits(tmp_path):
    counts = r"1 block with chips for 2 splits .*chips per split: \{'(train|val)': 30\}"
    with pytest.warns(XCHMWarning, match=r"split (val|train) has no chip: " + counts):
        cube = _build(tmp_path / "c.zarr", [_scene(320, 384)])  # one 8 x 8-chip block
    assert len(cube.splits) == 1 and cube.attrs["split"]["counts"] == cube.splits


def test_build__an_unlabeled_cube_does_not_warn(tmp_path):
    image, _ = _scene(320, 384)
    cube = _build(tmp_path / "c.zarr", [image], seed=1)  # warnings are errors in tests
    assert len(cube) == 30 and not cube.labeled


def test_build__same_inputs_give_the_same_labels_in_any_scene_order(tmp_path):
    pairs = [_scene(256, 192, 0), _scene(128, 320, 1, left=LEFT + 10_000)]
    scenes = [
        xchm.chips.ScenePair(*pair, scene=name)
        for pair, name in zip(pairs, ("a", "b"), strict=True)
    ]
    options = {"window": 32, "stride": 16, "block_size": 2}
    first = _build(tmp_path / "1.zarr", scenes, **options)
    again = _build(tmp_path / "2.zarr", scenes, **options)
    swapped = _build(tmp_path / "3.zarr", scenes[::-1], **options)
    assert _labels_by_origin(first) == _labels_by_origin(again) == _labels_by_origin(swapped)
    assert set(first.splits) == {"train", "val"}


def test_build__no_block_and_no_pixel_is_shared_between_splits(tmp_path):
    window, stride, block_size = 32, 8, 2
    cube = _build(
        tmp_path / "c.zarr",
        [_scene(384, 320, 2)],
        window=window,
        stride=stride,
        block_size=block_size,
        fractions={"train": 0.6, "val": 0.2, "test": 0.2},
    )
    labels, blocks = cube.coord("split"), cube.coord("block")
    for block in np.unique(blocks):
        assert len(set(labels[blocks == block])) == 1
    # Footprints of chips of different splits never overlap (the split buffer).
    side = window * RES
    x0, y0 = cube.coord("origin_x"), cube.coord("origin_y")
    overlap_x = np.abs(x0[:, None] - x0[None, :]) < side
    overlap_y = np.abs(y0[:, None] - y0[None, :]) < side
    assert not (overlap_x & overlap_y & (labels[:, None] != labels[None, :])).any()
    assert set(labels) == {"train", "val", "test"}
    assert cube.attrs["filters"]["removed"]["split_buffer"] > 0
    assert sum(cube.attrs["split"]["counts"].values()) == len(cube)
