import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
import zarr

import xchm
from xchm.cli import main
from xchm.inference.to_zarr import PROGRESS_GROUP

from .conftest import make_image


@pytest.fixture(scope="module")
def scene(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("cli")
    image = make_image(200, 170).assign_coords(band=[1, 2, 3])
    image.attrs["long_name"] = ("NIR", "Red", "Green")  # written as band descriptions
    image.rio.to_raster(folder / "scene.tif")
    model.save(folder / "model")
    return folder


def run(scene, out, *options, model=None):
    """Run `xchm predict` on the scene with the saved model; return the exit code."""
    model = model or str(scene / "model")
    return main(
        ["predict", str(scene / "scene.tif"), "-o", str(out), "--model", model, "-q", *options]
    )


def test_predict_cli__geotiff_to_cog_round_trip(scene, tmp_path, capsys):
    out = tmp_path / "chm.tif"
    code = run(scene, out, "--chunks", "128")
    assert code == 0 and "windows/s" in capsys.readouterr().out
    src_image = rioxarray.open_rasterio(scene / "scene.tif")
    with rasterio.open(out) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cog.crs == src_image.rio.crs and cog.transform == src_image.rio.transform()
        assert cog.dtypes[0] == "float32" and np.isnan(cog.nodata)
        values = cog.read(1)
    expected = xchm.predict(src_image, scene / "model").values
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-4)
    assert not list(tmp_path.glob(".*partial*"))


def test_predict_cli__int16_decimetres(scene, tmp_path):
    out = tmp_path / "chm_dm.tif"
    assert run(scene, out, "--int16-dm") == 0
    with rasterio.open(out) as cog:
        assert cog.dtypes[0] == "int16" and cog.nodata == -9999
        dm = cog.read(1)
    metres = xchm.predict(rioxarray.open_rasterio(scene / "scene.tif"), scene / "model").values
    np.testing.assert_array_equal(dm, np.round(metres * 10).astype("int16"))


def test_predict_cli__zarr_output(scene, tmp_path):
    out = tmp_path / "chm.zarr"
    assert run(scene, out) == 0
    back = xr.open_zarr(out, decode_coords="all", consolidated=False)["chm"]
    assert back.rio.crs == rioxarray.open_rasterio(scene / "scene.tif").rio.crs
    assert back.attrs["units"] == "m"


def test_predict_cli__zarr_output_resumes_and_refuses_another_job(scene, tmp_path, capsys):
    out = tmp_path / "chm.zarr"
    assert run(scene, out, "--chunks", "64", "--region-size", "64") == 0
    zarr.open_array(out, mode="r+", path=f"{PROGRESS_GROUP}/done")[0, 0] = 0  # as if cut off
    capsys.readouterr()
    assert run(scene, out, "--chunks", "64", "--region-size", "64") == 0
    assert "1/12 regions computed (11 already done)" in capsys.readouterr().err
    assert run(scene, out, "--chunks", "64", "--region-size", "64", "--overlap", "8") == 1
    assert "different job" in capsys.readouterr().err
    assert run(scene, out, "--chunks", "64", "--no-resume") == 1
    assert run(scene, out, "--chunks", "64", "--overlap", "8", "--overwrite") == 0
    assert xr.open_zarr(out, consolidated=False)["chm"].attrs["xchm_overlap"] == 8


def test_predict_cli__zarr_resume_accepts_another_spelling_of_the_input(
    scene, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "chm.zarr"
    monkeypatch.chdir(scene)
    args = ["-o", str(out), "--model", "model", "-q", "--chunks", "64", "--region-size", "64"]
    assert main(["predict", "scene.tif", *args]) == 0
    zarr.open_array(out, mode="r+", path=f"{PROGRESS_GROUP}/done")[0, 0] = 0  # as if cut off
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "predict",
                str(scene / "." / "scene.tif"),
                *args[:2],
                "--model",
                str(scene / "model"),
                *args[4:],
            ]
        )
        == 0
    )
    assert "1/12 regions computed (11 already done)" in capsys.readouterr().err


def test_predict_cli__several_inputs_make_one_mosaic(scene, tmp_path):
    whole = rioxarray.open_rasterio(scene / "scene.tif")
    parts = []
    for i, xs in enumerate((slice(0, 100), slice(80, 170))):
        whole.isel(x=xs).rio.to_raster(tmp_path / f"part{i}.tif")
        parts.append(str(tmp_path / f"part{i}.tif"))
    out = tmp_path / "mosaic.tif"
    args = ["predict", *parts, "-o", str(out), "--model", str(scene / "model"), "-q"]
    assert main([*args, "--scheduler", "local"]) == 0
    with rasterio.open(out) as cog:
        assert cog.transform == whole.rio.transform() and cog.shape == whole.shape[1:]
        np.testing.assert_allclose(
            cog.read(1), xchm.predict(whole, scene / "model").values, rtol=1e-5, atol=1e-4
        )


def test_predict_cli__refuses_to_overwrite(scene, tmp_path, capsys):
    out = tmp_path / "chm.tif"
    out.write_text("keep me")
    assert run(scene, out, model="test-tiny") == 1
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "keep me"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["-o", "x.png"], "must end in"), (["-o", "x.zarr", "--int16-dm"], "GeoTIFF")],
)
def test_predict_cli__bad_output(scene, tmp_path, capsys, args, message):
    args = [a if not a.startswith("x.") else str(tmp_path / a) for a in args]
    assert main(["predict", str(scene / "scene.tif"), *args, "--model", "test-tiny", "-q"]) == 1
    assert message in capsys.readouterr().err


def test_predict_cli__missing_input(tmp_path, capsys):
    args = [
        "predict",
        str(tmp_path / "nope.tif"),
        "-o",
        str(tmp_path / "o.tif"),
        "--model",
        "test-tiny",
    ]
    assert main(args) == 1
    assert "does not exist" in capsys.readouterr().err


# Zarr v3 has no stable spec for string arrays (the band names) yet.
@pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")
def test_predict_cli__zarr_input(scene, tmp_path, model):
    image = rioxarray.open_rasterio(scene / "scene.tif")
    image = image.assign_coords(band=["nir", "red", "green"])
    image.to_dataset(name="image").to_zarr(tmp_path / "scene.zarr", consolidated=False)
    out = tmp_path / "chm.tif"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "scene.zarr"),
                "-o",
                str(out),
                "--model",
                str(scene / "model"),
                "-q",
            ]
        )
        == 0
    )
    with rasterio.open(out) as cog:
        np.testing.assert_allclose(
            cog.read(1), xchm.predict(image, model).values, rtol=1e-5, atol=1e-4
        )
        assert cog.crs == image.rio.crs


def test_predict_cli__preset_model_warns_untrained(scene, tmp_path, caplog):
    assert run(scene, tmp_path / "chm.tif", model="test-tiny") == 0
    assert "untrained" in caplog.text


def test_predict_cli__nodata_auto_none_and_a_value(model, tmp_path):
    image = make_image(128, 128).assign_coords(band=[1, 2, 3])
    image.attrs["long_name"] = ("NIR", "Red", "Green")
    image[:, :10, :] = 0
    image.rio.write_nodata(0).rio.to_raster(tmp_path / "scene.tif")
    model.save(tmp_path / "model")

    def heights(*options):
        out = tmp_path / f"chm{len(list(tmp_path.glob('chm*.tif')))}.tif"
        args = ["predict", str(tmp_path / "scene.tif"), "-o", str(out), "--model"]
        assert main([*args, str(tmp_path / "model"), "-q", *options]) == 0
        with rasterio.open(out) as cog:
            return cog.read(1)

    auto = heights()  # the file's own nodata, 0
    assert np.isnan(auto[:10]).all() and np.isfinite(auto[10:]).all()
    np.testing.assert_array_equal(heights("--nodata", "0"), auto)
    assert np.isfinite(heights("--nodata", "none")).all()  # no nodata value: no warning


def test_predict_cli__says_how_many_all_nodata_windows_were_skipped(scene, tmp_path, capsys):
    image = rioxarray.open_rasterio(scene / "scene.tif")
    holed = image.copy(data=np.where(np.arange(200)[None, :, None] < 120, 0, image.values))
    holed.rio.write_nodata(0, inplace=True)
    holed.rio.to_raster(tmp_path / "holed.tif")
    for source, expect in ((scene / "scene.tif", False), (tmp_path / "holed.tif", True)):
        code = main(["predict", str(source), "-o", str(tmp_path / f"{expect}.tif"), "-q",
                     "--model", str(scene / "model")])  # fmt: skip
        out = capsys.readouterr().out
        assert code == 0 and ("all-nodata windows skipped" in out) is expect, out


def test_predict_cli__compile_option_parses_modes_and_refuses_others(capsys):
    from xchm.cli import build_parser

    parse = build_parser().parse_args
    base = ["predict", "in.tif", "-o", "out.tif", "--model", "test-tiny"]
    assert parse(base).compile is False
    assert parse([*base, "--compile"]).compile is True
    assert parse([*base, "--compile", "reduce-overhead"]).compile == "reduce-overhead"
    with pytest.raises(SystemExit) as exit_info:
        parse([*base, "--compile", "turbo"])
    assert exit_info.value.code == 2 and "reduce-overhead" in capsys.readouterr().err
