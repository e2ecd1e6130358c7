"""Training and pretraining from a chip cube on a real S3 server (moto on 127.0.0.1).

ChipStream over the cube in the store yields the very batches it yields over the same
cube on disk (same seed, any number of DataLoader workers, with and without reading
ahead, resumed mid-epoch), its workers reach the store with the options the cube was
opened with, and ``xchm.train`` / ``xchm.pretrain`` run from the URL, resume
recognising the cube from its metadata read through the store, and refuse a cube built
again at the same URL. No mocks: s3fs and botocore talk HTTP to the server.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import xchm
import xchm.chips
from tests import servers
from tests.chips.conftest import make_pair, write_pair
from xchm.chips import writer
from xchm.errors import PathNotFoundError, ResumeError
from xchm.pretraining import PretrainConfig
from xchm.runs.state import load_state
from xchm.training import TrainConfig
from xchm.training import data as data_module
from xchm.training.data import ChipStream, make_loader

from .test_trainer import _learnable_scene

BANDS = ("nir", "red", "green")
ONE_EPOCH = TrainConfig(epochs=1, batch_size=4, num_workers=0, augment=False)


def _build(output, pair, **kwargs):
    """A 13 x 13 chip cube (stride 32 on 448 px), 8 chips per chunk, 16 per shard."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "CHIPS_PER_CHUNK", 8)
        mp.setattr(writer, "CHIPS_PER_SHARD", 16)
        return xchm.chips.build(
            [pair],
            output,
            bands=BANDS,
            stride=32,
            block_size=2,
            fractions={"train": 0.75, "val": 0.25},
            progress=False,
            **kwargs,
        )


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    image, chm = make_pair(height=448, width=448)
    return write_pair(tmp_path_factory.mktemp("src"), image, chm)


@pytest.fixture(scope="module")
def local(tmp_path_factory, pair):
    return _build(tmp_path_factory.mktemp("local") / "cube.zarr", pair)


def _batches(stream, workers, *, epoch=0, start=0):
    stream.set_epoch(epoch, start_batch=start)
    return list(make_loader(stream, num_workers=workers, pin_memory=False))


def _same(a, b):
    """Whether two lists of (image, height) batches are identical (NaN == NaN)."""
    return len(a) == len(b) and all(
        torch.equal(ia, ib) and torch.equal(ha.nan_to_num(-1), hb.nan_to_num(-1))
        for (ia, ha), (ib, hb) in zip(a, b, strict=True)
    )


# -- the same batches as from disk -------------------------------------------------------------
def test_chipstream_s3__yields_the_batches_of_the_local_cube(s3, local, pair):
    url = f"{s3.url}/chips//cube.zarr"
    _build(url, pair)
    settings = {"batch_size": 8, "buffer_chunks": 3, "augment": True, "seed": 7}
    on_disk = ChipStream(local, **settings)
    # The plan depends on the number of workers (0 and 1 give the same): one per count.
    expected = {w: _batches(on_disk, w, epoch=1) for w in (0, 2)}
    assert len(expected[0]) == len(on_disk) > 3
    for workers, prefetch in [(0, None), (0, 0), (2, None), (2, 0)]:
        stream = ChipStream(url, prefetch=prefetch, **settings)
        assert stream.prefetch == (data_module.PREFETCH_REMOTE if prefetch is None else 0)
        assert _same(_batches(stream, workers, epoch=1), expected[workers]), (workers, prefetch)
    # Resumed mid-epoch, reading ahead only what the remaining batches need.
    stream = ChipStream(url, **settings)
    assert _same(_batches(stream, 2, epoch=1, start=3), expected[2][3:])
    expected = expected[0]
    # Images alone (pretraining's stream) and every chip of the val split once.
    images = ChipStream(url, labels=False, **settings)
    assert all(
        torch.equal(a, b)
        for a, b in zip(_batches(images, 0, epoch=1), (i for i, _ in expected), strict=True)
    )
    val = {"split": "val", "shuffle": False, "drop_last": False, "batch_size": 5}
    assert _same(_batches(ChipStream(url, **val), 2), _batches(ChipStream(local, **val), 2))
    servers.close_s3_clients()


def test_chipstream__reading_ahead_changes_no_batch(local):
    settings = {"batch_size": 8, "buffer_chunks": 2, "seed": 3}
    expected = _batches(ChipStream(local, prefetch=0, **settings), 0, epoch=2)
    for prefetch in (1, 3, 50):
        stream = ChipStream(local, prefetch=prefetch, **settings)
        assert _same(_batches(stream, 0, epoch=2), expected), prefetch
        assert _same(_batches(stream, 0, epoch=2, start=5), expected[5:]), prefetch
    # An epoch left early stops the reader threads.
    stream = ChipStream(local, prefetch=4, **settings)
    batches = iter(stream)
    next(batches)
    batches.close()


def test_chipstream_s3__workers_reach_the_store_with_the_cubes_storage_options(
    s3, local, pair, monkeypatch
):
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only the options know where the store is
    options = {"endpoint_url": s3.server.endpoint_url}
    _build(f"{s3.url}/cube.zarr", pair, storage_options=options)
    cube = xchm.chips.open(f"{s3.url}/cube.zarr", storage_options=options)
    expected = _batches(ChipStream(local, batch_size=8), 2)
    assert _same(_batches(ChipStream(cube, batch_size=8), 2), expected)
    by_url = ChipStream(f"{s3.url}/cube.zarr", batch_size=8, storage_options=options)
    assert _same(_batches(by_url, 2), expected)
    # Pickled (spawned workers, other machines), the stream keeps the options too.
    copy = pickle.loads(pickle.dumps(ChipStream(cube, batch_size=8)))
    assert _same(_batches(copy, 0), _batches(ChipStream(local, batch_size=8), 0))
    servers.close_s3_clients()


def test_chipstream_s3__a_missing_cube_is_named_as_typed(s3):
    with pytest.raises(PathNotFoundError, match=f"no Zarr store at {s3.url}/x//cube.zarr: "):
        ChipStream(f"{s3.url}/x//cube.zarr")
    servers.close_s3_clients()


# -- xchm.train and xchm.pretrain by URL -------------------------------------------------------
def _learnable_cube(output, *, seed=0, **kwargs):
    img, chm = _learnable_scene(256, seed=seed)
    return xchm.chips.build(
        [xchm.chips.ScenePair(img, chm, scene="learnable")],
        output,
        bands=BANDS,
        block_size=1,
        fractions={"train": 0.75, "val": 0.25},
        progress=False,
        **kwargs,
    )


def test_train_s3__runs_from_the_url_and_resume_recognises_the_cube(s3, tmp_path, monkeypatch):
    url = f"{s3.url}/chips//c.zarr"
    _learnable_cube(url)
    cfg = TrainConfig(**{**ONE_EPOCH.to_dict(), "epochs": 2})
    out = tmp_path / "run"

    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def cut_in_epoch_two(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:  # 3 batches per epoch: the run stops early in epoch 2
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch.optim.AdamW, "step", cut_in_epoch_two)
        with pytest.raises(KeyboardInterrupt):
            xchm.train(url, model="test-tiny", config=cfg, output=out, progress=False)
    state = load_state(out / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert state["job"]["cube"]["path"] == url  # as typed, for messages

    resumed = xchm.train(
        url, model="test-tiny", config=cfg, output=out, resume=True, progress=False
    )
    assert [row["epoch"] for row in resumed.history] == [0, 1]
    card = json.loads((resumed.best_checkpoint / "card.json").read_text())
    assert card["card"]["provenance"]["trained_on"] == url
    # A cube built again at the same URL is another cube: refused, named as typed.
    _learnable_cube(url, seed=5, overwrite=True)
    with pytest.raises(ResumeError, match=f"cube: the cube at {url} changed since the run"):
        xchm.train(url, model="test-tiny", config=cfg, output=out, resume=True)
    servers.close_s3_clients()


def test_pretrain_s3__one_tiny_epoch_from_the_url(s3, tmp_path):
    from xchm.datasets import synthetic_landscape

    url = f"{s3.url}/unlabeled.zarr"
    scene = synthetic_landscape(256, seed=3, nodata_edge=False)
    xchm.chips.build(
        [scene["image"]],
        url,
        bands=BANDS,
        split_by="random",
        fractions={"train": 1.0},
        progress=False,
    )
    cfg = PretrainConfig(
        batch_size=8, out_dim=64, head_hidden=32, head_bottleneck=16, local_crops=1, epochs=1
    )
    result = xchm.pretrain(
        url, model="test-tiny", config=cfg, output=tmp_path / "ssl", progress=False
    )
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    assert (result.backbone / "card.json").exists()
    state = load_state(
        tmp_path / "ssl" / "checkpoints" / "last.pt", expected_format="xchm-pretrain-state"
    )
    assert state["job"]["cube"]["path"] == url
    servers.close_s3_clients()


def test_train_s3__starts_from_a_checkpoint_by_url_known_by_its_weights(s3, tmp_path):
    cube = _learnable_cube(f"{s3.url}/c.zarr")
    start = xchm.load_model("test-tiny", bands=cube.bands, statistics=cube.statistics, seed=1)
    start.save(f"{s3.url}/models//start")
    cfg = TrainConfig(**{**ONE_EPOCH.to_dict(), "max_steps_per_epoch": 1})
    model = f"{s3.url}/models//start"
    xchm.train(cube, model=model, config=cfg, output=tmp_path / "run", progress=False)
    job = load_state(tmp_path / "run" / "checkpoints" / "last.pt")["job"]
    sha = json.loads(s3.get("models//start/card.json"))["weights"]["sha256"]
    assert job["model"] == {"path": model, "checkpoint": sha}
    servers.close_s3_clients()
