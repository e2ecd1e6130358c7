"""xchm.evaluate / evaluate_raster and ``xchm evaluate`` (CPU, test-tiny)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import torch
import xarray as xr

import xchm
import xchm.chips
from xchm.cli import main
from xchm.errors import BandError, InputError, OutputExistsError, PathNotFoundError, XCHMWarning
from xchm.evaluation import evaluate, evaluate_raster
from xchm.evaluation.metrics import height_metrics
from xchm.models.normalize import normalize_batch
from xchm.outputs import MARKER

CRS = "EPSG:32617"
KEYS = ("mae", "rmse", "bias", "r2", "pearson_r2")
REPORT_FILES = {"metrics.json", "density.png", "error_by_class.png", "examples.png"}


def scene(size_y, size_x, *, seed, left=400_000.0, hole=False):
    """(image, chm) DataArrays: nir/red/green DN (0 = nodata) and smooth positive heights."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size_y, 0:size_x]
    nir = 2500 + 1500 * np.sin(rows / 23.0) * np.cos(cols / 31.0) + rng.normal(0, 200, rows.shape)
    image = np.stack([nir, 0.5 * nir, 0.4 * nir]).clip(1, 9000).astype("uint16")
    if hole:
        # Small nodata holes every 160 px (kept: min_valid below 1), so that both splits
        # hold some whichever chips the random split gives each.
        for r in range(10, size_y - 8, 160):
            for c in range(20, size_x - 10, 160):
                image[1, r : r + 8, c : c + 10] = 0
    heights = (nir / 200.0 - 5 + rng.uniform(0, 2, rows.shape)).clip(0.1).astype("float32")
    coords = {
        "y": 7e6 - 2.0 * (np.arange(size_y) + 0.5),
        "x": left + 2.0 * (np.arange(size_x) + 0.5),
    }
    img = xr.DataArray(image, dims=("band", "y", "x"), coords={"band": [1, 2, 3], **coords})
    chm = xr.DataArray(heights, dims=("y", "x"), coords=coords)
    return img.rio.write_crs(CRS).rio.write_nodata(0), chm.rio.write_crs(CRS)


def write_scene(directory, name, img, chm):
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / f"{name}.tif", directory / f"{name}_chm.tif"
    img.rio.to_raster(paths[0])
    chm.rio.to_raster(paths[1])
    return paths


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    """Two scenes, 289 + 15 chips in two 256-chip chunks, random 80/20 train/val split."""
    src = tmp_path_factory.mktemp("src")
    pairs = [
        write_scene(src, "big", *scene(576, 576, seed=0, hole=True)),
        write_scene(src, "small", *scene(128, 192, seed=1, left=500_000.0)),
    ]
    return xchm.chips.build(
        pairs,
        tmp_path_factory.mktemp("cube") / "c.zarr",
        bands=("nir", "red", "green"),
        stride=32,
        min_valid=0.9,
        split_by="random",
        fractions={"train": 0.8, "val": 0.2},
        progress=False,
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Four chips, all in the val split (no train split)."""
    img, chm = scene(128, 128, seed=3)
    return xchm.chips.build(
        [(img, chm)],
        tmp_path_factory.mktemp("small") / "v.zarr",
        bands=("nir", "red", "green"),
        split_by="random",
        fractions={"val": 1.0},
        progress=False,
    )


@pytest.fixture(scope="module")
def model():
    """test-tiny with a loud output layer, so that predictions vary by metres."""
    net = xchm.load_model("test-tiny")
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        torch.nn.init.normal_(net.decoder.output.weight, std=1e4, generator=gen)
    return net


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return model.save(tmp_path_factory.mktemp("ckpt") / "model")


def direct(model, cube, split):
    """Run the model on all chips of the split at once; return pred, masked ref, scene ids."""
    sel = cube.sel(split=split)
    image, height = sel.read(np.arange(len(sel)))
    missing = (image == 0).any(axis=1)
    x = normalize_batch(torch.from_numpy(image.astype("float32")), model.card.statistics)
    x[torch.from_numpy(missing)[:, None].expand_as(x)] = 0
    with torch.inference_mode():
        pred = model(x, validate=False)[:, 0].numpy()
    return pred, np.where(missing, np.nan, height), sel.coord("scene")


@pytest.fixture(scope="module")
def expected(model, cube):
    return direct(model, cube, "val")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("out") / "report"


@pytest.fixture(scope="module")
def result(model, cube, report_dir):
    """One evaluation of the val split (batches of 24 across the chunk boundary)."""
    return evaluate(
        model, cube, split="val", batch_size=24, per_scene=True, output=report_dir, progress=False
    )


def assert_close(got, want, rtol=1e-4):
    assert got["n_pixels"] == want["n_pixels"]
    for key in KEYS:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=1e-5, err_msg=key)


# -- evaluate on a chip cube ---------------------------------------------------------------
def test_evaluate__equals_direct_computation(cube, expected, result):
    val = cube.sel(split="val")
    assert val.index.min() < 256 <= val.index.max()  # the split spans two stored chunks
    pred, ref, _ = expected
    assert np.isnan(ref).any() and np.isfinite(ref).any()  # the nodata hole is masked out
    want = height_metrics(pred, ref)
    assert_close(result, want)
    for got, row in zip(result["classes"], want["classes"], strict=True):
        assert_close(got, row)
    assert result["n_chips"] == len(val)
    assert (result["split"], result["model"], result["cube"]) == (
        "val",
        "test-tiny",
        str(cube.path),
    )


def test_evaluate__baseline_predicts_train_mean(cube, expected, result):
    _, train_height = cube.sel(split="train").read(np.arange(cube.splits["train"]))
    mean = float(np.nanmean(train_height.astype("float64")))
    _, ref, _ = expected
    assert result["baseline_source"] == "train"
    assert result["baseline"]["height"] == pytest.approx(mean, rel=1e-9)
    assert_close(result["baseline"], height_metrics(np.full_like(ref, mean), ref), rtol=1e-9)
    assert math.isnan(result["baseline"]["pearson_r2"])


def test_evaluate__selection_keeps_the_cube_train_mean_baseline(cube, model, result):
    one_scene = cube.sel(scene="small")
    got = evaluate(model, one_scene, split="val", progress=False)
    assert (
        got["n_chips"] == one_scene.splits["val"] == result["scenes"]["small"]["n_pixels"] // 4096
    )
    assert got["baseline"]["height"] == result["baseline"]["height"]
    assert_close(got, result["scenes"]["small"], rtol=1e-6)


def test_evaluate__baseline_without_train_split_uses_evaluated_split(small, model):
    result = evaluate(model, small, progress=False)
    assert result["baseline_source"] == "val"
    assert result["baseline"]["bias"] == pytest.approx(0, abs=1e-6)


def test_evaluate__per_scene_tables(expected, result):
    pred, ref, scenes = expected
    assert sorted(result["scenes"]) == sorted(set(scenes.tolist()))
    for name, got in result["scenes"].items():
        assert_close(got, height_metrics(pred[scenes == name], ref[scenes == name]))
    assert sum(m["n_pixels"] for m in result["scenes"].values()) == result["n_pixels"]


def test_evaluate__checkpoint_path_equals_object(small, model, checkpoint):
    by_path = evaluate(str(checkpoint), small.path, split=None, progress=False)
    by_object = evaluate(model, small, split=None, progress=False)
    assert by_path["model"] == str(checkpoint.resolve()) and by_path["split"] == "all"
    assert_close(by_path, by_object, rtol=1e-6)


def test_evaluate__restores_train_mode(small, model):
    model.train()
    try:
        evaluate(model, small, progress=False)
        assert model.training and model.decoder.training
    finally:
        model.eval()


def test_evaluate__band_mismatch_names_both(cube):
    rgb = xchm.load_model("test-tiny", bands=("red", "green", "blue"))
    with pytest.raises(BandError, match=r"\('red', 'green', 'blue'\).*\('nir', 'red', 'green'\)"):
        evaluate(rgb, cube, progress=False)


def test_evaluate__warns_on_other_pixel_size(small):
    fine = xchm.load_model("test-tiny", pixel_size=0.5)
    with pytest.warns(XCHMWarning, match="2 m but the model was made for 0.5 m") as said:
        evaluate(fine, small, progress=False)
    (warned,) = [w for w in said if "the model was made for" in str(w.message)]
    assert warned.filename == __file__  # the caller, past renamed_keywords' wrapper


def test_evaluate__unknown_split(small, model):
    with pytest.raises(InputError, match="split.*test"):
        evaluate(model, small, split="test", progress=False)


def test_evaluate__report_folder(result, report_dir):
    assert {p.name for p in report_dir.iterdir()} == REPORT_FILES | {MARKER}
    saved = json.loads((report_dir / "metrics.json").read_text())  # strict JSON: NaN is null
    assert saved["mae"] == pytest.approx(result["mae"])
    assert saved["classes"][-1]["hi"] is None and saved["report"] == str(report_dir)
    for name in REPORT_FILES - {"metrics.json"}:
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate__returns_an_evaluation_result(result, report_dir):
    assert isinstance(result, xchm.EvaluationResult) and isinstance(result, dict)
    assert (result.mae, result.rmse, result.bias) == (result["mae"], result["rmse"], result["bias"])
    assert result.r2 == result["r2"] and result.n_pixels == result["n_pixels"] > 0
    assert result.classes == result["classes"] and result.baseline is result["baseline"]
    assert result.scenes is result["scenes"] and result.report == report_dir
    assert "mae" in result and result.get("nothing") is None  # still a dict
    # to_dict(): the plain, strict-JSON dict that the report's metrics.json holds
    plain = result.to_dict()
    assert type(plain) is dict and plain["baseline"]["pearson_r2"] is None  # NaN -> None
    assert json.loads(json.dumps(plain, allow_nan=False)) == plain
    assert plain == json.loads((report_dir / "metrics.json").read_text())
    assert repr(result).startswith("EvaluationResult(mae=")


def test_evaluate__output_and_its_old_name_report(small, model, tmp_path):
    new = evaluate(model, small, output=tmp_path / "new", progress=False)
    with pytest.warns(FutureWarning, match=r"^evaluate\(report=\.\.\.\).*use output="):
        old = evaluate(model, small, report=tmp_path / "old", progress=False)
    assert (new.report, old.report) == (tmp_path / "new", tmp_path / "old")
    assert (tmp_path / "old" / "metrics.json").is_file() and old.mae == new.mae
    assert evaluate(model, small, progress=False).report is None  # no output: no report


def test_evaluate__refuses_non_empty_report_dir(small, model, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "metrics.json").write_text('{"mine": 1}')
    for overwrite in (False, True):  # not a report: never touched, even with overwrite
        with pytest.raises(OutputExistsError, match="not written by xchm"):
            evaluate(model, small, output=out, overwrite=overwrite, progress=False)
    assert (out / "metrics.json").read_text() == '{"mine": 1}'
    assert {p.name for p in out.iterdir()} == {"notes.txt", "metrics.json"}


def test_evaluate__replaces_an_earlier_report_only_with_overwrite(small, model, tmp_path):
    out = tmp_path / "report"
    evaluate(model, small, output=out, progress=False)
    with pytest.raises(OutputExistsError, match="overwrite"):
        evaluate(model, small, output=out, progress=False)
    evaluate(model, small, output=out, overwrite=True, progress=False)
    assert {p.name for p in out.iterdir()} == REPORT_FILES | {MARKER}


# -- evaluate_raster -------------------------------------------------------------------------
@pytest.fixture
def rasters():
    rng = np.random.default_rng(5)
    _, ref = scene(96, 80, seed=5)
    ref = ref.where(ref.x < ref.x[70])  # a NaN strip
    values = (0.7 * ref.values + 3 + rng.normal(0, 1.5, ref.shape)).astype("float32")
    values[:5] = np.nan
    pred = ref.copy(data=values)
    return pred, ref


def test_evaluate_raster__equals_numpy(rasters):
    pred, ref = rasters
    result = evaluate_raster(pred, ref)
    assert_close(result, height_metrics(pred.values, ref.values), rtol=1e-10)
    assert result["shape"] == [96, 80] and result["crs"] == CRS


def test_evaluate_raster__result_and_the_old_report_keyword(rasters, tmp_path):
    pred, ref = rasters
    result = evaluate_raster(pred, ref, output=tmp_path / "new")
    assert isinstance(result, xchm.EvaluationResult) and result.report == tmp_path / "new"
    assert result.mae == result["mae"] and result.baseline is None  # evaluate's only
    with pytest.warns(FutureWarning, match=r"^evaluate_raster\(report=\.\.\.\).*output="):
        old = evaluate_raster(pred, ref, report=tmp_path / "old")
    assert old.to_dict() == {**result.to_dict(), "report": str(tmp_path / "old")}


def test_evaluate_raster__dask_chunks_equal_eager(rasters):
    pred, ref = rasters
    eager = evaluate_raster(pred, ref)
    lazy = evaluate_raster(pred.chunk({"y": 32, "x": 24}), ref.chunk({"y": 40, "x": 80}))
    assert_close(lazy, eager, rtol=1e-10)
    mixed = evaluate_raster(pred.chunk({"y": 16, "x": 16}), ref)
    assert_close(mixed, eager, rtol=1e-10)


def test_evaluate_raster__misaligned_raises(rasters):
    pred, ref = rasters
    shifted = pred.assign_coords(x=pred.x + 1.0)
    with pytest.raises(InputError, match="reproject_match"):
        evaluate_raster(shifted, ref)
    with pytest.raises(InputError, match="CRS"):
        evaluate_raster(pred.rio.write_crs("EPSG:32618"), ref)


def test_evaluate_raster__irregular_grid_is_refused(rasters, tmp_path):
    pred, ref = rasters
    order = np.random.default_rng(1).permutation(pred.sizes["x"])
    shuffled = pred.isel(x=order)  # still has a transform from its first coordinates
    with pytest.raises(InputError, match="pred"):
        evaluate_raster(shuffled, ref.isel(x=order))
    with pytest.raises(PathNotFoundError, match="missing.tif"):
        evaluate_raster(tmp_path / "missing.tif", ref)


def test_evaluate_raster__geotiffs_with_nodata_and_report(rasters, tmp_path):
    pred, ref = rasters
    ref_file = ref.fillna(-9999.0).rio.write_nodata(-9999.0)
    ref_file.rio.to_raster(tmp_path / "ref.tif")
    pred.rio.to_raster(tmp_path / "pred.tif")
    result = evaluate_raster(tmp_path / "pred.tif", tmp_path / "ref.tif", output=tmp_path / "r")
    assert_close(result, height_metrics(pred.values, ref.values), rtol=1e-10)
    assert {p.name for p in (tmp_path / "r").iterdir()} == REPORT_FILES - {"examples.png"} | {
        MARKER
    }


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_evaluate__json_equals_function(small, model, checkpoint, capsys):
    code = main(["evaluate", str(checkpoint), str(small.path), "--json", "--per-scene"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    want = evaluate(model, small, per_scene=True, progress=False)
    assert printed["mae"] == pytest.approx(want["mae"], rel=1e-6)
    assert printed["baseline_source"] == "val" and set(printed["scenes"]) == set(want["scenes"])


def test_cli_evaluate__output_writes_the_report_and_report_still_works(small, tmp_path, capsys):
    args = ["evaluate", "test-tiny", str(small.path), "-q"]
    assert main([*args, "-o", str(tmp_path / "new")]) == 0
    assert f"wrote report to {tmp_path / 'new'}" in capsys.readouterr().out
    assert main([*args, "--report", str(tmp_path / "old")]) == 0  # the old spelling
    captured = capsys.readouterr()
    assert "--report is deprecated" in captured.err and "use -o/--output" in captured.err
    assert (tmp_path / "old" / "metrics.json").is_file()


def test_cli_evaluate__table(small, capsys):
    assert main(["evaluate", "test-tiny", str(small.path), "-q", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "Pearson r2" in out and "baseline" in out and "20+ m" in out


def test_cli_evaluate__bad_path_exits_1(tmp_path, capsys):
    assert main(["evaluate", "test-tiny", str(tmp_path / "missing.zarr"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xchm: error:") and err.count("\n") == 1


@pytest.mark.filterwarnings("ignore:precision=.* runs emulated")
def test_evaluate__precision_runs_the_model_in_that_dtype(small, model, checkpoint, capsys):
    from xchm.inference.precision import native_cpu

    fp32 = evaluate(model, small, progress=False, precision="fp32")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        bf16 = evaluate(model, small, progress=False, precision="bf16")
    emulated = [w for w in seen if "runs emulated" in str(w.message)]
    assert len(emulated) == (0 if native_cpu("bf16") else 1)  # said once, not per batch
    assert (fp32["precision"], fp32["dtype"]) == ("fp32", "float32")
    assert (bf16["precision"], bf16["dtype"]) == ("bf16", "bfloat16")
    assert bf16["mae"] != fp32["mae"]  # bf16 rounding reaches the scores...
    assert bf16["mae"] == pytest.approx(fp32["mae"], rel=0.02)  # ...by little
    auto = evaluate(model, small, progress=False)
    assert auto["precision"] == "auto" and auto["dtype"] in ("float32", "bfloat16")
    with pytest.raises(InputError, match="precision must be one of"):
        evaluate(model, small, progress=False, precision="half")
    args = ["evaluate", str(checkpoint), str(small.path), "--json", "-q", "--precision", "bf16"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dtype"] == "bfloat16" and printed["mae"] == pytest.approx(bf16["mae"])
