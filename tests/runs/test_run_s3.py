"""Training and pretraining runs whose directory is in object storage (moto on 127.0.0.1).

The run writes into a local staging folder and :class:`xchm.runs.mirror.Mirror` sends
each write to the store; the output rule, the resume checks and config.json act on the
store itself. Checked here: the store holds the whole run, a run cut mid-epoch resumes
from the store alone (its staging folder gone, as on another machine) to the weights of
an uninterrupted run, the output rule refuses in the store what it refuses on disk, and
the mirror sends changed files once, in the order they were written. No mocks: s3fs
talks HTTP to the server.
"""

from __future__ import annotations

import io
import json
import tempfile

import pytest
import torch
from safetensors.torch import load as load_safetensors

import xchm
from tests import servers
from xchm.cli import main
from xchm.errors import OutputExistsError, PathNotFoundError
from xchm.runs.mirror import Mirror
from xchm.runs.run import Run
from xchm.storage import location
from xchm.training import TrainConfig

from .test_run import FORMATS, KINDS, _config, _run

MODEL = {"training": "best", "pretraining": "backbone"}


@pytest.fixture
def staging_root(tmp_path, monkeypatch):
    """Temporary folders (the staging folders) go here, to see that none is left."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _staged(root):
    return list(root.glob("xchm-run-*"))


def _keys(s3, prefix):
    listed = s3.server.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return sorted(o["Key"].removeprefix(prefix) for o in listed.get("Contents", []))


def _state(s3, key):
    return torch.load(io.BytesIO(s3.get(key)), weights_only=True)


def _weights(data: bytes):
    return load_safetensors(data)


@pytest.mark.parametrize("kind", KINDS)
def test_run_s3__a_cut_run_resumes_from_the_store_to_the_uninterrupted_weights(
    kind, cube, s3, tmp_path, staging_root, monkeypatch
):
    settings = {"epochs": 2, "checkpoint_every": 1}
    full = _run(kind, cube, tmp_path / "full", **settings)
    url = f"{s3.url}/runs//{kind}/"
    real, calls = Run.checkpoint, []

    def cut_after_the_third(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # epoch 1, step 1: the state is sent, the epoch is not done
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Run, "checkpoint", cut_after_the_third)
        with pytest.raises(KeyboardInterrupt):
            _run(kind, cube, url, **settings)
    prefix = f"runs//{kind}/"
    cut = _state(s3, f"{prefix}checkpoints/last.pt")
    assert (cut["epoch"], cut["batch"]) == (1, 1)
    assert len(s3.get(f"{prefix}metrics.jsonl").decode().splitlines()) == 1
    assert _staged(staging_root) == []  # released: the resume has only the store

    resumed = _run(kind, cube, url, resume=True, **settings)
    assert _keys(s3, prefix) == sorted(
        [".xchm-output.json", "config.json", "checkpoints/last.pt", "metrics.jsonl"]
        + ["metrics.csv", f"{MODEL[kind]}/card.json", f"{MODEL[kind]}/model.safetensors"]
        + (["summary.json"] if kind == "training" else [])
    )
    saved = resumed.best_checkpoint if kind == "training" else resumed.backbone
    assert saved == f"{url}{MODEL[kind]}"  # the URL as typed, for load_model
    here = full.best_checkpoint if kind == "training" else full.backbone
    a = xchm.load_model(here).state_dict()
    b = xchm.load_model(saved).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    rows = [json.loads(r) for r in s3.get(f"{prefix}metrics.jsonl").decode().splitlines()]
    drop = {"seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows] == [
        {k: v for k, v in r.items() if k not in drop} for r in full.history
    ]
    assert _state(s3, f"{prefix}checkpoints/last.pt")["format"] == FORMATS[kind]
    assert _staged(staging_root) == []
    servers.close_s3_clients()


def test_run_s3__the_output_rule_holds_in_the_store(cube, s3, staging_root):
    foreign = f"{s3.url}/mine"
    s3.put("mine/notes.txt", b"keep me")
    with pytest.raises(OutputExistsError, match=f"{foreign} is not empty and was not written"):
        _run("training", cube, foreign)
    assert _keys(s3, "mine/") == ["notes.txt"]

    url = f"{s3.url}/run"
    with pytest.raises(PathNotFoundError, match=f"nothing to resume: {url}/checkpoints/last.pt"):
        _run("training", cube, url, resume=True)
    _run("training", cube, url)
    state = s3.get("run/checkpoints/last.pt")
    with pytest.raises(OutputExistsError, match=f"{url} holds an xchm training run; pass resume"):
        _run("training", cube, url)
    with pytest.raises(OutputExistsError, match="holds an xchm training run, not a pretraining"):
        _run("pretraining", cube, url, resume=True)
    assert s3.get("run/checkpoints/last.pt") == state  # untouched

    # A run killed before its first checkpoint is started over, in the store too.
    s3.delete("run/checkpoints/last.pt")
    s3.delete("run/metrics.jsonl")
    s3.delete("run/metrics.csv")
    for key in _keys(s3, "run/best/"):
        s3.delete(f"run/best/{key}")
    s3.put("run/checkpoints/old.tmp", b"x")
    _run("training", cube, url)
    assert "checkpoints/old.tmp" not in _keys(s3, "run/")
    assert _state(s3, "run/checkpoints/last.pt")["epoch"] == 1
    assert _staged(staging_root) == []
    servers.close_s3_clients()


def test_mirror__sends_new_and_changed_files_once_in_the_order_written(s3, staging_root):
    import os

    mirror = Mirror(location(f"{s3.url}/m"))
    staged = mirror.staging
    assert staged.parent == staging_root
    (staged / "z.bin").write_bytes(b"first")
    (staged / "sub").mkdir()
    (staged / "sub" / "a.bin").write_bytes(b"second")
    os.utime(staged / "sub" / "a.bin", ns=(2_000_000_000, 2_000_000_000))
    os.utime(staged / "z.bin", ns=(1_000_000_000, 1_000_000_000))
    (staged / ".best.tmp").mkdir()
    (staged / ".best.tmp" / "model.safetensors").write_bytes(b"half")  # a save under way
    assert mirror.send() == ["z.bin", "sub/a.bin"]
    assert s3.get("m/z.bin") == b"first" and s3.get("m/sub/a.bin") == b"second"
    assert _keys(s3, "m/") == ["sub/a.bin", "z.bin"]
    assert mirror.send() == []  # nothing changed: nothing sent
    (staged / "z.bin").write_bytes(b"again")
    assert mirror.send() == ["z.bin"]
    assert s3.get("m/z.bin") == b"again"
    mirror.close()
    assert not staged.exists()
    servers.close_s3_clients()


def test_cli_train_pretrain_evaluate_s3__cube_run_and_report_in_the_store(s3, tmp_path, capsys):
    from tests.training.test_stream_s3 import _learnable_cube

    cube_url = f"{s3.url}/chips.zarr"
    _learnable_cube(cube_url)
    run_url = f"{s3.url}/runs/ft"
    config = f"{s3.url}/configs/ft.json"  # the --config file may be in the store too
    _config("training").save(config)
    assert TrainConfig.load(config) == _config("training")
    argv = ["train", cube_url, "-o", run_url, "--model", "test-tiny", "-q", "--config", config]
    assert main(argv) == 0
    assert f"checkpoint {run_url}/best" in capsys.readouterr().out
    assert main(argv) == 1  # a second run into the same URL: refused, pointed to --resume
    assert "resume" in capsys.readouterr().err

    ssl_url = f"{s3.url}/runs/ssl"
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps(_config("pretraining").to_dict()))
    argv = ["pretrain", cube_url, "-o", ssl_url, "--model", "test-tiny", "-q", "--config", str(pre)]
    assert main(argv) == 0
    assert f"pretrained backbone {ssl_url}/backbone" in capsys.readouterr().out

    report = f"{s3.url}/reports/ft"
    argv = ["evaluate", f"{run_url}/best", cube_url, "-o", report, "--json", "-q"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(s3.get("reports/ft/metrics.json"))["mae"] == printed["mae"]
    servers.close_s3_clients()


def test_run__a_read_only_url_is_refused_before_any_request(cube, tmp_path):
    from xchm.errors import OutputError

    url = "http://127.0.0.1:9/runs/a"  # nothing listens there: a request would fail otherwise
    with pytest.raises(OutputError, match=f"cannot write a run to {url}: xchm only reads http"):
        _run("training", cube, url)
