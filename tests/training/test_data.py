"""ChipStream: exact, shuffled, resumable chip batches for DDP ranks and DataLoader workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xchm.chips
from tests.chips.conftest import make_pair, write_pair
from xchm.chips import writer
from xchm.errors import InputError
from xchm.training import plan
from xchm.training.data import ChipStream, make_loader

BANDS = ("nir", "red", "green")


def _build(directory, *, chunk, edit=None, **kwargs):
    """A 13 x 13 chip cube (stride 32 on 448 px) with ``chunk`` chips per Zarr chunk.

    Each chip is recognised by its upper-left pixel: bands 1 and 2 hold row + 1 and
    column + 1 (see make_pair).
    """
    image, chm = make_pair(height=448, width=448)
    if edit is not None:
        image = edit(image)
    pair = write_pair(directory / "src", image, chm)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "CHIPS_PER_CHUNK", chunk)
        mp.setattr(writer, "CHIPS_PER_SHARD", 2 * chunk)
        return xchm.chips.build(
            [pair],
            directory / "cube.zarr",
            bands=BANDS,
            stride=32,
            block_size=2,
            fractions={"train": 0.75, "val": 0.25},
            progress=False,
            **kwargs,
        )


@pytest.fixture(scope="module")
def cubes(tmp_path_factory):
    return {c: _build(tmp_path_factory.mktemp(f"chunk{c}"), chunk=c) for c in (5, 8)}


@pytest.fixture(scope="module")
def cube(cubes):
    return cubes[8]


def _keys(image):
    """Chip keys (upper-left pixel's row and column) of a batch or of stored chips."""
    image = np.asarray(image)
    return (image[:, 0, 0, 0].astype(np.int64) * 10_000 + image[:, 1, 0, 0]).tolist()


def _split_keys(cube, split):
    image = cube.image[...]
    return {k for k, s in zip(_keys(image), cube.coord("split"), strict=True) if s in split}


def _loader_batches(stream, workers, epoch=0, start=0):
    stream.set_epoch(epoch, start_batch=start)
    return list(make_loader(stream, num_workers=workers, pin_memory=False))


def _same(a, b):
    """Whether two lists of (image, height) batches are identical (NaN == NaN)."""
    return len(a) == len(b) and all(
        torch.equal(ia, ib) and torch.equal(ha.nan_to_num(-1), hb.nan_to_num(-1))
        for (ia, ha), (ib, hb) in zip(a, b, strict=True)
    )


def _interleave(per_worker):
    """Round-robin merge, as a DataLoader does: batch i from worker i % workers."""
    out, i = [], 0
    while any(i < len(w) for w in per_worker):
        out += [w[i] for w in per_worker if i < len(w)]
        i += 1
    return out


# -- coverage, equal counts, worker interleaving -------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_chipstream__ranks_and_workers_yield_each_chip_once(cube, world, workers):
    batch, drop_last = 8, world != 2  # drop_last=False with 2 ranks: every chip exactly once
    wanted = _split_keys(cube, {"train"})
    seen, counts = [], []
    for rank in range(world):
        stream = ChipStream(
            cube, batch_size=batch, rank=rank, world_size=world, drop_last=drop_last, seed=3
        )
        batches = _loader_batches(stream, workers, epoch=1)
        counts.append(len(batches))
        assert len(batches) == len(stream)
        seen += [k for image, _ in batches for k in _keys(image)]
        # a DataLoader takes batch i from worker i % workers
        k = max(workers, 1)
        per_worker = [list(stream.iter_worker(w, k, epoch=1)) for w in range(k)]
        assert _same(batches, _interleave(per_worker))
    assert len(set(counts)) == 1  # DDP: the same number of batches on every rank
    assert len(seen) == len(set(seen))
    assert set(seen) <= wanted
    if drop_last:
        assert len(wanted) - len(seen) < batch * world
        assert len(seen) == counts[0] * batch * world
    else:
        assert set(seen) == wanted


@settings(max_examples=30, deadline=None)
@given(
    chunk=st.sampled_from([5, 8]),
    batch=st.integers(1, 40),
    world=st.integers(1, 4),
    workers=st.integers(1, 3),
    buffer_chunks=st.integers(1, 4),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_chipstream__plan_is_exact_for_any_layout(
    cubes, chunk, batch, world, workers, buffer_chunks, drop_last, shuffle, epoch
):
    cube = cubes[chunk]
    wanted = _split_keys(cube, {"train"})
    if drop_last and len(wanted) < batch * world:
        with pytest.raises(InputError, match="fewer than batch_size x world_size"):
            ChipStream(cube, batch_size=batch, world_size=world)
        return
    seen = []
    for rank in range(world):
        stream = ChipStream(
            cube,
            batch_size=batch,
            rank=rank,
            world_size=world,
            drop_last=drop_last,
            shuffle=shuffle,
            buffer_chunks=buffer_chunks,
        )
        per_worker = [list(stream.iter_worker(w, workers, epoch=epoch)) for w in range(workers)]
        assert sum(len(w) for w in per_worker) == len(stream)
        for w, batches in enumerate(per_worker):  # worker w holds batches w, w + workers, ...
            assert len(batches) == len(range(w, len(stream), workers))
        for image, height in (b for w in per_worker for b in w):
            assert image.shape[1:] == (3, 64, 64) and height.shape == (len(image), 64, 64)
            assert len(image) == batch if drop_last else len(image) <= batch
            seen += _keys(image)
    assert len(seen) == len(set(seen))
    if drop_last:
        assert set(seen) <= wanted and len(wanted) - len(seen) < batch * world
    else:
        assert set(seen) == wanted


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(st.integers(1, 12), min_size=1, max_size=30),
    batch=st.integers(1, 40),
    width=st.integers(1, 5),
    data=st.data(),
)
def test_interleave__uses_every_chip_once_in_run_order(runs, batch, width, data):
    total = sum(runs)
    sizes = [batch] * (total // batch) + ([total % batch] if total % batch else [])
    sizes = data.draw(st.permutations(sizes))
    pieces = plan.interleave(np.array(runs), np.array(sizes), width)
    assert [sum(q for _, _, q in p) for p in pieces] == sizes
    next_first = [0] * len(runs)
    for batch_pieces in pieces:
        for r, first, count in batch_pieces:
            assert first == next_first[r] and count > 0
            next_first[r] += count
    assert next_first == runs
    opened = [min(r for r, _, _ in p) for p in pieces if p]
    assert opened == sorted(opened)  # runs open in order


def test_chipstream__plain_dataloader_gives_the_same_batches(cube):
    stream = ChipStream(cube, batch_size=8, augment=True)
    stream.set_epoch(1)
    plain = list(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2))
    assert _same(plain, _loader_batches(stream, 2, epoch=1))


# -- order, determinism, resume ------------------------------------------------------------
def test_chipstream__same_seed_and_epoch_repeat_other_epochs_differ(cube):
    stream = ChipStream(cube, batch_size=8)
    first = _loader_batches(stream, 0, epoch=2)
    again = _loader_batches(stream, 0, epoch=2)
    other = _loader_batches(stream, 0, epoch=3)
    reseeded = _loader_batches(ChipStream(cube, batch_size=8, seed=1), 0, epoch=2)
    assert _same(first, again)
    order = [_keys(i) for i, _ in first]
    assert order != [_keys(i) for i, _ in other]
    assert order != [_keys(i) for i, _ in reseeded]


def test_chipstream__one_worker_process_matches_the_main_process(cube):
    stream = ChipStream(cube, batch_size=8, augment=True)
    assert _same(_loader_batches(stream, 0, epoch=1), _loader_batches(stream, 1, epoch=1))


def test_chipstream__iterating_again_moves_to_the_next_epoch(cube):
    stream = ChipStream(cube, batch_size=16)
    stream.set_epoch(4)
    loader = make_loader(stream, num_workers=2, pin_memory=False, persistent_workers=True)
    epoch4, epoch5 = list(loader), list(loader)  # persistent workers keep their own copy
    assert _same(epoch4, _loader_batches(ChipStream(cube, batch_size=16), 2, epoch=4))
    assert _same(epoch5, _loader_batches(ChipStream(cube, batch_size=16), 2, epoch=5))


@pytest.mark.parametrize(("workers", "start"), [(0, 5), (2, 5), (2, 10)])
def test_chipstream__set_position_yields_exactly_the_remaining_batches(cube, workers, start):
    stream = ChipStream(cube, batch_size=8, augment=True)
    full = _loader_batches(stream, workers, epoch=2)
    resumed = ChipStream(cube, batch_size=8, augment=True)
    resumed.set_epoch(2)
    resumed.set_position(start)
    rest = list(make_loader(resumed, num_workers=workers, pin_memory=False))
    assert len(resumed) == len(full)
    assert _same(rest, full[start:])


def test_chipstream__resume_does_not_decode_chunks_of_skipped_batches(cube, monkeypatch):
    reads = []
    opened = ChipStream._open

    class Counting:
        def __init__(self, array):
            self.array = array

        def get_basic_selection(self, key, **kwargs):
            reads.append(key.start)
            return self.array.get_basic_selection(key, **kwargs)

    def counting_open(self):
        return tuple(Counting(a) for a in opened(self))

    monkeypatch.setattr(ChipStream, "_open", counting_open)
    stream = ChipStream(cube, batch_size=8, buffer_chunks=2)
    full = _loader_batches(stream, 0, epoch=0)
    full_reads = len(reads)
    reads.clear()
    last = _loader_batches(stream, 0, epoch=0, start=len(full) - 1)
    assert _same(last, full[-1:])
    assert 0 < len(reads) <= full_reads // 3


# -- what a batch holds --------------------------------------------------------------------
def test_chipstream__batches_are_compact_raw_dn_and_float_heights(cube):
    stream = ChipStream(cube, split="val", batch_size=16, shuffle=False, drop_last=False)
    batches = _loader_batches(stream, 0)
    image = torch.cat([i for i, _ in batches])
    height = torch.cat([h for _, h in batches])
    assert image.dtype == torch.int32 and height.dtype == torch.float32  # uint16 cube
    positions = cube.sel(split="val").index
    assert np.array_equal(image.numpy(), cube.image.get_orthogonal_selection((positions,)))
    assert np.array_equal(height.numpy(), cube.height.get_orthogonal_selection((positions,)))


def test_chipstream__native_image_dtype_keeps_uint16(cube):
    widened = _loader_batches(ChipStream(cube, batch_size=8), 2, epoch=1)
    native = _loader_batches(ChipStream(cube, batch_size=8, image_dtype="native"), 2, epoch=1)
    assert native[0][0].dtype == torch.uint16
    assert all(torch.equal(a.int(), b) for (a, _), (b, _) in zip(native, widened, strict=True))
    with pytest.raises(InputError, match="image_dtype uint8 cannot hold"):
        ChipStream(cube, image_dtype="uint8")


def test_chipstream__augment_applies_one_dihedral_transform_to_image_and_height(cube):
    plain = _loader_batches(ChipStream(cube, batch_size=16), 0, epoch=1)
    augmented = _loader_batches(ChipStream(cube, batch_size=16, augment=True), 0, epoch=1)
    used = set()
    for (image, height), (image_aug, height_aug) in zip(plain, augmented, strict=True):
        for img, hgt, img_a, hgt_a in zip(image, height, image_aug, height_aug, strict=True):
            matches = []
            for t in range(8):
                f = (lambda a: a.flip(-1)) if t >= 4 else (lambda a: a)
                candidate = (f(img).rot90(t % 4, (-2, -1)), f(hgt).rot90(t % 4, (-2, -1)))
                if torch.equal(candidate[0], img_a) and torch.equal(candidate[1], hgt_a):
                    matches.append(t)
            assert matches, "not a dihedral transform of the chip, or not the same for both"
            used.add(matches[0])
    assert len(used) == 8


def test_chipstream__missing_image_pixels_get_nan_heights(tmp_path):
    def punch(image):  # band 3 missing in a square, band 1 in a stripe
        image = image.copy()
        image[2, 40:80, 40:80] = 0
        image[0, 200:204, :] = 0
        return image

    cube = _build(tmp_path, chunk=8, edit=punch, min_valid=0.5)
    stream = ChipStream(cube, split=None, batch_size=32, shuffle=False, drop_last=False)
    batches = _loader_batches(stream, 0)
    image = torch.cat([i for i, _ in batches]).numpy()
    height = torch.cat([h for _, h in batches]).numpy()
    stored = cube.height[...]
    missing = (image == 0).any(axis=1)
    assert missing.any() and np.isfinite(stored[missing]).all()  # the cube keeps the heights
    assert np.isnan(height[missing]).all()
    assert np.array_equal(height[~missing], stored[~missing])


def test_chipstream__honours_the_split(cube):
    def keys(split):
        stream = ChipStream(cube, split=split, batch_size=8, drop_last=False)
        return [k for image, _ in _loader_batches(stream, 0) for k in _keys(image)]

    assert set(keys("val")) == _split_keys(cube, {"val"})
    assert len(keys(("train", "val"))) == len(cube)
    assert len(keys(None)) == len(cube)


# -- construction and pickling -------------------------------------------------------------
def test_chipstream__pickles_small_without_open_arrays(cube):
    stream = ChipStream(cube, batch_size=8)
    before = _loader_batches(stream, 0, epoch=1)  # opens the store in this process
    data = pickle.dumps(stream)
    assert len(data) < 1500
    copy = pickle.loads(data)
    assert copy._arrays is None
    assert _same(_loader_batches(copy, 0, epoch=1), before)


def test_chipstream__accepts_a_path_and_reports_bad_settings_at_once(cube):
    assert len(ChipStream(cube.path, batch_size=8)) == len(ChipStream(cube, batch_size=8))
    with pytest.raises(InputError, match="batch_size.*buffer_chunks.*rank"):
        ChipStream(cube, batch_size=0, buffer_chunks=0, rank=2, world_size=2)
    with pytest.raises(InputError, match="fewer than batch_size x world_size"):
        ChipStream(cube, split="val", batch_size=1000)
    with pytest.raises(InputError, match="start_batch"):
        ChipStream(cube, batch_size=8).set_position(10_000)


# -- images only (labels=False: unlabeled cubes, xchm.pretrain) ----------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_chipstream__images_only_yields_the_same_images_alone(cube, workers):
    labeled = _loader_batches(ChipStream(cube, batch_size=8, augment=True), workers, epoch=1)
    images = _loader_batches(
        ChipStream(cube, batch_size=8, augment=True, labels=False), workers, epoch=1
    )
    assert len(images) == len(labeled) > 1
    for image, (expected, _) in zip(images, labeled, strict=True):
        assert isinstance(image, torch.Tensor)  # the batch is the image tensor alone
        assert torch.equal(image, expected)  # same order, dtype and augmentation


def test_chipstream__images_only_streams_an_unlabeled_cube_exactly(tmp_path):
    image, _ = make_pair(height=448, width=448)
    source = tmp_path / "src"
    source.mkdir()
    image.rio.to_raster(source / "image.tif")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "CHIPS_PER_CHUNK", 8)
        mp.setattr(writer, "CHIPS_PER_SHARD", 16)
        cube = xchm.chips.build(
            [source / "image.tif"], tmp_path / "u.zarr", bands=BANDS, stride=32, progress=False
        )
    assert not cube.labeled
    with pytest.raises(InputError, match="labels=False"):
        ChipStream(cube, split=None)
    every = set(_keys(cube.image[...]))
    ranks = [
        ChipStream(cube, split=None, batch_size=8, rank=r, world_size=2, labels=False)
        for r in (0, 1)
    ]
    seen = [k for s in ranks for batch in _loader_batches(s, 0, epoch=3) for k in _keys(batch)]
    assert len(seen) == len(set(seen)) and set(seen) <= every  # each chip at most once
    assert len(every) - len(seen) < 8 * 2  # only the end of the epoch order left out
    whole = _loader_batches(ranks[0], 2, epoch=3)
    rest = _loader_batches(ranks[0], 2, epoch=3, start=4)
    assert all(torch.equal(a, b) for a, b in zip(rest, whole[4:], strict=True))
