"""xchm demo: scene -> chips -> training -> cluster prediction -> held-out evaluation."""

import json

import pytest
import rasterio

from xchm.cli import main
from xchm.demo import run_demo
from xchm.errors import InputError

pytestmark = pytest.mark.slow


def test_demo__synthetic_run_learns_more_than_the_mean_and_writes_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--size", "512", "--epochs", "8", "-q"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    for step in range(1, 7):
        assert f"[{step}/6]" in printed.out
    assert "Dask dashboard: http://127.0.0.1:" in printed.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["mae"] < summary["baseline"]["mae"] and summary["better_than_mean"]
    assert "predicting the train mean" in printed.out and "better than the mean" in printed.out
    with rasterio.open(out / "chm.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and cog.shape == (512, 512)
        assert cog.crs.to_epsg() == 3338
    names = {p.name for p in (out / "report").iterdir()}
    assert {"quicklook.png", "chm_predicted.png", "chm_truth.png", "error.png"} <= names
    assert {"density.png", "error_by_class.png", "metrics.json"} <= names


def test_demo__real_pairs_hold_out_whole_scenes(neon_dir, tmp_path):
    summary = run_demo(tmp_path / "real", real=neon_dir, epochs=4, progress=False)
    assert "real pairs" in summary["scene"]
    assert {"mae", "rmse", "bias", "r2"} <= set(summary["model"]) <= set(summary["baseline"])
    assert (tmp_path / "real" / "chm.tif").exists()
    assert (tmp_path / "real" / "report" / "density.png").exists()


def test_demo__refuses_to_overwrite_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        run_demo(tmp_path)
    with pytest.raises(InputError, match="not a demo's"):
        run_demo(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="at least two image/CHM pairs"):
        run_demo(tmp_path / "x", real=tmp_path)
    with pytest.raises(InputError, match="size"):
        run_demo(tmp_path / "y", size=100)
