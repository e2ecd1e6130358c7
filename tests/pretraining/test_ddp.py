"""DDP pretraining launched with torchrun: 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import xchm
import xchm.chips
from xchm.training.data import ChipStream

from ..training.test_trainer import _learnable_scene


@pytest.mark.slow
def test_pretrain__ddp_two_cpu_processes_share_the_epoch(tmp_path):
    img, _ = _learnable_scene(384)
    cube = xchm.chips.build(
        [img], tmp_path / "u.zarr", bands=("nir", "red", "green"), progress=False
    )
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "xchm",
        "pretrain",
        str(cube.path),
        "-o",
        str(out),
        "--model",
        "test-tiny",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--out-dim",
        "64",
        "--local-crops",
        "1",
        "-q",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # written once, by rank 0
    per_rank = len(ChipStream(cube, split=None, batch_size=4, world_size=2, labels=False))
    assert per_rank < len(ChipStream(cube, split=None, batch_size=4, labels=False))
    assert rows[0]["steps"] == per_rank  # each rank did its share, not the whole epoch
    model = xchm.load_model("test-tiny", weights=out / "backbone")
    assert model.card.bands == cube.bands
