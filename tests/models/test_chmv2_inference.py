"""A CHMv2 model through xchm's unchanged interfaces: predict, .chm, Zarr, COG, cluster, bench.

The model is ``test-tiny-chmv2`` (CHMv2's DPT head and bins on test-tiny's backbone)
from a checkpoint, so every path loads it the way a user's CHMv2 checkpoint loads.
"""

from __future__ import annotations

import numpy as np
import pytest
import rioxarray  # noqa: F401  (the .rio accessor)
import torch
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xchm


def rgb_image(height: int, width: int, *, seed: int = 0) -> xr.DataArray:
    """An 8-bit RGB scene at 0.6 m (CHMv2's input), north-up, UTM."""
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, (3, height // 8 + 1, width // 8 + 1)).repeat(8, 1).repeat(8, 2)
    data = np.clip(smooth[:, :height, :width] + rng.integers(-20, 20, (3, height, width)), 0, 255)
    return xr.DataArray(
        data.astype(np.uint8),
        dims=("band", "y", "x"),
        coords={
            "band": ["red", "green", "blue"],
            "y": 5_000_000.0 - 0.6 * np.arange(height),
            "x": 400_000.0 + 0.6 * np.arange(width),
        },
    ).rio.write_crs("EPSG:32617")


def _informative(model):
    """Spread the random head's logits so heights vary by metres (tests can see changes)."""
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("chmv2") / "model"
    _informative(xchm.load_model("test-tiny-chmv2")).save(path)
    return path


@pytest.fixture
def image():
    return rgb_image(160, 144)


def test_predict__chmv2_accessor_lazy_equals_eager(checkpoint, image):
    eager = xchm.predict(image, checkpoint)
    lazy = image.chunk({"y": 64, "x": 96}).chm.predict(checkpoint)
    assert lazy.chunks is not None  # lazy until computed
    np.testing.assert_allclose(lazy.compute().values, eager.values, atol=1e-4)
    assert float(eager.std()) > 0.1 and eager.attrs["units"] == "m"


def test_predict_to_zarr__chmv2_store_equals_predict_and_writes_a_cog(checkpoint, image, tmp_path):
    ds = xchm.predict_to_zarr(image, checkpoint, tmp_path / "chm.zarr", region_size=64)
    expected = xchm.predict(image, checkpoint)
    np.testing.assert_allclose(ds["chm"].values, expected.values, atol=1e-4)
    cog = xchm.write_cog(ds["chm"], tmp_path / "chm.tif")
    import rasterio

    with rasterio.open(cog) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        np.testing.assert_allclose(src.read(1), expected.values, atol=1e-4)


def test_predict__chmv2_uncertainty(checkpoint, image):
    ds = xchm.predict(image, checkpoint, uncertainty=True)
    assert float(ds["chm_std"].max()) > 0


def test_predict__chmv2_resolution_warning_at_2m(checkpoint):
    coarse = rgb_image(64, 64)
    coarse = coarse.assign_coords(
        y=5_000_000.0 - 2.0 * np.arange(64), x=400_000.0 + 2.0 * np.arange(64)
    )
    with pytest.warns(xchm.errors.XCHMWarning, match="0.6 m"):
        xchm.predict(coarse, checkpoint)


def _direct(model, image, y, x):
    """The model on one window of the image, normalised by its card."""
    window = model.card.window
    crop = image.values[:, y : y + window, x : x + window]
    z = torch.from_numpy(model.card.normalize(crop))[None]
    with torch.no_grad():
        return model(z)[0, 0].numpy()


@pytest.fixture(scope="module")
def models_by_window(checkpoint, tmp_path_factory):
    """The checkpoint's weights at windows 32, 48 (odd patch grid) and 64."""
    base = xchm.load_model(checkpoint)
    out = {}
    for window in (32, 48, 64):
        model = xchm.load_model("test-tiny-chmv2", window=window)
        model.load_state_dict(base.state_dict())
        path = tmp_path_factory.mktemp("w") / f"w{window}"
        model.save(path)
        out[window] = (model, path)
    return out


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(window=st.sampled_from([32, 48, 64]), overlap_16ths=st.integers(0, 3))
def test_predict__chmv2_heights_do_not_depend_on_window_layout(
    models_by_window, window, overlap_16ths
):
    """Each pixel is a blend of the windows covering it, each the model on those pixels.

    With no overlap every window's pixels are the model's output on that window; with
    overlap every pixel lies between the lowest and highest of its windows' outputs.
    """
    overlap = min(16 * overlap_16ths, window - 16)
    model, path = models_by_window[window]
    image = rgb_image(144, 144, seed=1)
    chm = xchm.predict(image.chunk({"y": 80, "x": 64}), path, overlap=overlap).values
    stride = window - overlap
    origins = [o for o in range(0, 144 - window + 1, stride)]
    low = np.full((144, 144), np.inf)
    high = np.full((144, 144), -np.inf)
    covered = np.zeros((144, 144), bool)
    for y in origins:
        for x in origins:
            h = _direct(model, image, y, x)
            sl = np.s_[y : y + window, x : x + window]
            low[sl], high[sl] = np.minimum(low[sl], h), np.maximum(high[sl], h)
            covered[sl] = True
    # Pixels every one of whose windows lies inside the image (edge windows read mirrors).
    inside = np.zeros(144, bool)
    for p in range(144):
        firsts = [k * stride for k in range(-window, 144) if k * stride <= p < k * stride + window]
        inside[p] = all(0 <= o <= 144 - window and o in origins for o in firsts)
    mask = covered & inside[:, None] & inside[None, :]
    assert mask.sum() > 0
    tol = 1e-3  # float32 sums of differently batched windows differ by ~1e-4 m at 35 m
    assert np.all(chm[mask] >= low[mask] - tol) and np.all(chm[mask] <= high[mask] + tol)
    if overlap == 0:
        np.testing.assert_allclose(chm[mask], low[mask], atol=tol)


@pytest.mark.slow
def test_predict__chmv2_on_the_cluster_equals_the_local_result(checkpoint, image):
    with xchm.cluster.start(
        gpus=None, n_workers=2, threads_per_worker=1, dashboard_address=None, quiet=True
    ) as client:
        lazy = xchm.predict(image.chunk({"y": 80, "x": 72}), checkpoint)
        on_cluster = client.compute(lazy.data).result()
    np.testing.assert_allclose(on_cluster, xchm.predict(image, checkpoint).values, atol=1e-4)


def test_predict__chmv2_preset_by_name_with_meta_files(checkpoint, image, tmp_path):
    """A preset name + weights/backbone_weights paths (what workers get: paths, not a model)."""
    from xchm.inference.runtime import spec_for
    from xchm.testing import export_meta_state_dict

    model = xchm.load_model(checkpoint)
    torch.save(model.decoder.state_dict(), tmp_path / "head.pth")
    torch.save(export_meta_state_dict(model.backbone), tmp_path / "backbone.pth")
    spec, card = spec_for(
        "test-tiny-chmv2", weights=tmp_path / "head.pth", backbone_weights=tmp_path / "backbone.pth"
    )
    assert card.bands == ("red", "green", "blue") and card.pixel_size == 0.6
    assert dict(spec.options)["backbone_weights"] == str(tmp_path / "backbone.pth")
    by_name = xchm.predict(
        image,
        "test-tiny-chmv2",
        weights=tmp_path / "head.pth",
        backbone_weights=tmp_path / "backbone.pth",
    )
    loaded = xchm.load_model(
        "test-tiny-chmv2", weights=tmp_path / "head.pth", backbone_weights=tmp_path / "backbone.pth"
    )
    np.testing.assert_array_equal(by_name.values, xchm.predict(image, loaded).values)
    # A resumable store knows the backbone file: another one is another job.
    from xchm.inference.job import model_identity

    torch.save(
        export_meta_state_dict(xchm.load_model("test-tiny").backbone), tmp_path / "other.pth"
    )
    digests = {
        model_identity("test-tiny-chmv2", tmp_path / "head.pth", tmp_path / name)[0]
        for name in ("backbone.pth", "other.pth")
    }
    assert len(digests) == 2
    # Meta's layout rounds the RoPE periods to bf16: within a millimetre of the checkpoint.
    np.testing.assert_allclose(by_name.values, xchm.predict(image, checkpoint).values, atol=1e-3)


def test_gflop_per_window__chmv2_counts_the_dpt_head(checkpoint):
    from xchm.inference.benchmark import gflop_per_window

    gflop = gflop_per_window(xchm.load_model(checkpoint), torch.device("cpu"))
    assert gflop["decoder"] > 0 and gflop["total"] == pytest.approx(
        gflop["backbone"] + gflop["decoder"]
    )


def test_chmv2_windows_benchmark__runs_and_reports(tmp_path):
    """Smoke run of benchmarks/chmv2_windows.py (its numbers live in RESULTS.md)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "chmv2_windows.py"
    args = ["--seam-preset", "test-tiny-chmv2", "--scene", "128", "--windows", "64", "--no-speed"]
    out = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, check=True
    ).stdout
    row = [line for line in out.splitlines() if line.startswith("| 64 |")]
    assert row and "17.3" in row[0]  # chmv2's GFLOP per 64 px window


def test_cli_predict__chmv2_from_meta_files_with_backbone_weights(
    checkpoint, image, tmp_path, caplog
):
    """``xchm predict --weights HEAD --backbone-weights BACKBONE`` equals the Python API."""
    import rioxarray as rxr

    from xchm.cli import main
    from xchm.testing import export_meta_state_dict

    model = xchm.load_model(checkpoint)
    torch.save(model.decoder.state_dict(), tmp_path / "head.pth")
    torch.save(export_meta_state_dict(model.backbone), tmp_path / "backbone.pth")
    scene = tmp_path / "scene.tif"
    image.rio.to_raster(scene)
    files = ["--weights", str(tmp_path / "head.pth")]
    files += ["--backbone-weights", str(tmp_path / "backbone.pth")]
    out = tmp_path / "chm.tif"
    argv = ["predict", str(scene), "-o", str(out), "--model", "test-tiny-chmv2", "-q"]
    argv += ["--bands", "rgb"]  # a GeoTIFF without band descriptions
    assert main([*argv, *files]) == 0
    assert "untrained" not in caplog.text  # the head file is CHMv2's trained decoder
    expected = xchm.predict(
        rxr.open_rasterio(scene),
        "test-tiny-chmv2",
        weights=tmp_path / "head.pth",
        backbone_weights=tmp_path / "backbone.pth",
        bands="rgb",
    )
    written = rxr.open_rasterio(out).squeeze("band", drop=True)
    np.testing.assert_allclose(written.values, expected.values, atol=1e-4)


def test_predict__default_overlap_is_a_quarter_of_the_window(checkpoint, image):
    """Seam-free by default: 64 px for CHMv2's 256 px windows, 16 px for 64 px windows."""
    model = xchm.load_model(checkpoint)
    assert xchm.predict(image, model.to("cpu")).attrs["xchm_overlap"] == model.card.window // 4
    wide = xchm.load_model("test-tiny-chmv2", window=128)
    assert xchm.predict(image, wide).attrs["xchm_overlap"] == 32
    small = xchm.load_model("test-tiny-chmv2", window=64)
    assert xchm.predict(image, small).attrs["xchm_overlap"] == 16  # as before for 64 px
