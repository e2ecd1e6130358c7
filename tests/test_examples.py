"""The examples run as scripts, on the real NEON sample (small)."""

import re
import subprocess
import sys
import time
from pathlib import Path

import rasterio

from .sockets import listening, not_loopback

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_model_quickstart__runs(neon_dir):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "model_quickstart.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "checkpoint round trip identical: True" in out


def test_predict_neon__writes_a_cog(neon_dir, tmp_path):
    subprocess.run(
        [sys.executable, str(EXAMPLES / "predict_neon.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    with rasterio.open(tmp_path / "chm.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cog.crs.to_epsg() == 32619


def test_chips_neon__builds_a_cube_and_a_preview(neon_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "chips_neon.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "splits      scene:" in out
    assert (tmp_path / "preview.png").stat().st_size > 1000
    import xchm.chips

    cube = xchm.chips.open(tmp_path / "neon.zarr")
    assert len(cube) > 50 and cube.pixel_size == 0.5


def _run_watching_sockets(args, folder):
    """Run ``args``; return (stdout, stderr, every TCP socket its processes listened on)."""
    out, err = folder / "stdout.txt", folder / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(args, stdout=stdout, stderr=stderr, text=True)
        seen: set[tuple[str, int]] = set()
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= listening(proc.pid)
            time.sleep(0.05)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    assert proc.returncode == 0, err.read_text()
    return out.read_text(), err.read_text(), seen


def test_mosaic__merges_scenes_on_a_cluster_and_resumes(neon_dir, tmp_path):
    args = [sys.executable, str(EXAMPLES / "mosaic.py"), "--out", str(tmp_path / "out")]
    _, stderr, sockets = _run_watching_sockets(args, tmp_path)
    assert "4/4 regions computed" in stderr
    # The dashboard (and scheduler, workers, nannies) listened on this machine only.
    dashboard = int(re.search(r"Dask dashboard: http://127\.0\.0\.1:(\d+)/", stderr)[1])
    assert dashboard in {port for _, port in sockets}, sockets
    assert not not_loopback(sockets), sockets
    second = subprocess.run(args, capture_output=True, text=True, check=True)  # resumes
    assert "0/4 regions computed (4 already done)" in second.stderr
    assert "100% of pixels mapped" in second.stdout


def test_train_evaluate__trains_and_scores_held_out_plots(neon_dir, tmp_path):
    args = [sys.executable, str(EXAMPLES / "train_evaluate.py"), "--out", str(tmp_path)]
    out = subprocess.run([*args, "--epochs", "3"], capture_output=True, text=True, check=True)
    assert "held-out plots: MAE" in out.stdout and "train mean" in out.stdout
    assert (tmp_path / "report" / "density.png").exists()
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()


def test_pretrain_finetune__pretrains_unlabeled_then_trains_a_decoder(neon_dir, tmp_path):
    args = [sys.executable, str(EXAMPLES / "pretrain_finetune.py"), "--out", str(tmp_path)]
    out = subprocess.run(
        [*args, "--ssl-epochs", "2", "--epochs", "2"], capture_output=True, text=True, check=True
    )
    assert "unlabeled chips" in out.stdout and "held-out plots: MAE" in out.stdout
    import xchm
    import xchm.chips

    assert not xchm.chips.open(tmp_path / "unlabeled.zarr").labeled
    card = xchm.load_model(tmp_path / "run" / "best").card
    assert card.provenance["backbone_provenance"]["pretraining"] == "dino"


def test_object_storage__runs_against_the_s3_server_and_resumes(neon_dir, s3):
    """The example reads and writes only by URL, on the local S3 server (moto)."""
    prefix = f"{s3.url}/example"
    args = [sys.executable, str(EXAMPLES / "object_storage.py"), prefix]
    run = subprocess.run(args, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    first = run.stdout
    assert re.search(r"(\d+)/\1 regions computed", first), first
    assert "CRS EPSG:32619" in first
    keys = {o["Key"] for o in s3.server.client().list_objects_v2(Bucket=s3.bucket)["Contents"]}
    assert {"example/maps/chm.tif", "example/models/tiny/card.json"} <= keys
    assert any(k.startswith("example/maps/chm.zarr/chm/c/") for k in keys)
    again = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert re.search(r" 0/(\d+) regions computed \(\1 already done\)", again), again


def test_predict_chmv2__writes_a_cog_from_meta_layout_files(neon_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "predict_chmv2.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "model test-tiny-chmv2: bands ('red', 'green', 'blue')" in out
    with rasterio.open(tmp_path / "chm.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert abs(cog.res[0] - 0.6) < 1e-6
