"""DDP training launched with torchrun: 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import xchm
import xchm.chips
from xchm.training.data import ChipStream

from .test_trainer import _learnable_scene


@pytest.mark.slow
def test_train__ddp_two_cpu_processes_share_the_epoch(tmp_path):
    img, chm = _learnable_scene(384)
    cube = xchm.chips.build(
        [xchm.chips.ScenePair(img, chm, scene="s")],
        tmp_path / "c.zarr",
        bands=("nir", "red", "green"),
        block_size=1,
        progress=False,
    )
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",  # rendezvous on localhost, on a free port
        "-m",
        "xchm",
        "train",
        str(cube.path),
        "-o",
        str(out),
        "--model",
        "test-tiny",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--lr",
        "0.01",
        "-q",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # written once, by rank 0
    per_rank = len(ChipStream(cube, split="train", batch_size=4, rank=0, world_size=2))
    assert rows[0]["steps"] == per_rank  # each rank did its half, not the whole epoch
    model = xchm.load_model(out / "best")
    assert model.card.bands == cube.bands
