import pickle
import warnings

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xchm
from xchm.errors import (
    BandError,
    DeviceError,
    InputError,
    InputTypeError,
    ModelNotFoundError,
    WeightsError,
    XCHMError,
    XCHMWarning,
)
from xchm.testing import responsive_model

from .conftest import make_image


def _chunked(image, ychunk, xchunk):
    return image.chunk({"band": -1, "y": ychunk, "x": xchunk})


# -- invariance ----------------------------------------------------------------------
def _holes(image, boxes, how):
    """``image`` missing in ``boxes`` (every band): NaN in float, or 65535 declared as nodata."""
    data = image.astype("float32") if how == "nan" else image.copy()
    for r0, r1, c0, c1 in boxes:
        data[:, r0:r1, c0:c1] = np.nan if how == "nan" else 65535
    return data, (None if how == "nan" else 65535)


@st.composite
def _hole_across(draw, size, chunk):
    """A [start, stop) run that crosses the first chunk border (or lies anywhere)."""
    length = draw(st.integers(1, min(80, size)))
    if chunk < size and draw(st.booleans()):
        start = draw(st.integers(max(0, chunk - length), min(chunk - 1, size - length)))
    else:
        start = draw(st.integers(0, size - length))
    return start, start + length


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    height=st.integers(128, 160),
    width=st.integers(128, 160),
    data=st.data(),
)
def test_predict__chunk_invariant(model, height, width, data):
    """Any chunking (and axis order) gives the one-chunk result: heights, spread, nodata.

    Chunks leave at least one window (64 px) after the first, so that the kernel
    really runs on two or more chunks per axis (a thinner rest is merged into its
    neighbour, and the image would be one chunk). Holes of missing pixels are
    drawn across the first chunk border half of the time.
    """
    image = make_image(height, width, seed=height * width)
    ychunk = data.draw(st.integers(64, height - 64), label="ychunk")
    xchunk = data.draw(st.integers(64, width - 64), label="xchunk")
    overlap = data.draw(st.sampled_from([0, 16, 32]), label="overlap")
    uncertainty = data.draw(st.booleans(), label="uncertainty")
    boxes = [
        data.draw(_hole_across(height, ychunk), label="rows")
        + data.draw(_hole_across(width, xchunk), label="cols")
        for _ in range(data.draw(st.integers(1, 2), label="holes"))
    ]
    image, nodata = _holes(image, boxes, data.draw(st.sampled_from(["nan", "value"])))
    flip_y, flip_x = data.draw(st.booleans(), label="flip_y"), data.draw(st.booleans(), "flip_x")
    order = {
        "y": slice(None, None, -1 if flip_y else 1),
        "x": slice(None, None, -1 if flip_x else 1),
    }

    kwargs = {"overlap": overlap, "nodata": nodata, "uncertainty": uncertainty}
    eager = xchm.predict(image, model, **kwargs)
    lazy = xchm.predict(_chunked(image.isel(order), ychunk, xchunk), model, **kwargs)
    layers = ["chm", "chm_std"] if uncertainty else [None]
    for name in layers:
        one, chunked = (r if name is None else r[name] for r in (eager, lazy))
        assert isinstance(chunked.data, dsa.Array)
        np.testing.assert_allclose(chunked.values, one.isel(order).values, rtol=1e-5, atol=1e-4)
        missing = np.zeros((height, width), bool)
        for r0, r1, c0, c1 in boxes:
            missing[r0:r1, c0:c1] = True
        np.testing.assert_array_equal(np.isnan(one.values), missing)


def test_predict__accessor_equals_function(model, image):
    chunked = _chunked(image, 64, 100)
    by_function = xchm.predict(chunked, model).values
    np.testing.assert_array_equal(chunked.chm.predict(model).values, by_function)


def test_accessor__spells_out_predicts_signature():
    """``da.chm.predict`` lists xchm.predict's arguments, defaults and types (not **kwargs).

    Red when either gains, loses or changes a parameter the other does not.
    """
    import inspect

    def described(function, skip):
        params = list(inspect.signature(function).parameters.values())[skip:]
        return [(p.name, p.kind, p.default, p.annotation) for p in params]

    assert described(xchm.accessor.CHMAccessor.predict, 1) == described(xchm.predict, 1)
    assert "overlap" in (xchm.accessor.CHMAccessor.predict.__doc__ or "")


def test_predict__output_varies_and_is_metres(model, image):
    chm = xchm.predict(image, model)
    assert chm.dtype == np.float32 and chm.name == "chm"
    assert (chm.values >= 0).all() and chm.values.std() > 0.5


def test_predict__integer_and_float_input_agree(model, image):
    a = xchm.predict(image, model)
    b = xchm.predict(image.astype("float32"), model)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-5)


def test_predict__band_order_does_not_matter(model, image):
    shuffled = image.isel(band=[2, 0, 1])  # green, nir, red
    np.testing.assert_array_equal(
        xchm.predict(shuffled, model).values, xchm.predict(image, model).values
    )


# -- laziness and the graph -------------------------------------------------------------
def test_predict__builds_the_graph_without_reading_or_running(model, image):
    reads = []

    def read(block):
        if block.size:  # dask probes functions with empty arrays while building graphs
            reads.append(1)
        return block

    source = _chunked(image, 64, 64)
    spy = source.copy(data=source.data.map_blocks(read, dtype=source.dtype))
    assert reads == []
    result = xchm.predict(spy, model)
    assert reads == []
    assert isinstance(result.data, dsa.Array)
    result.compute()
    assert len(reads) > 0


def test_predict__graph_is_small_and_holds_no_model(tmp_path, image):
    model = xchm.load_model("test-tiny")
    model_bytes = sum(p.numel() * 4 for p in model.parameters())
    result = xchm.predict(_chunked(image, 64, 64), model)
    graph = pickle.dumps(dict(result.data.__dask_graph__()))
    assert len(graph) < model_bytes / 4
    model.save(tmp_path / "ckpt")
    from_path = xchm.predict(_chunked(image, 64, 64), tmp_path / "ckpt")
    assert len(pickle.dumps(dict(from_path.data.__dask_graph__()))) < model_bytes / 4


def test_predict__checkpoint_path_and_object_agree(tmp_path, model, image):
    model.save(tmp_path / "ckpt")
    np.testing.assert_array_equal(
        xchm.predict(image, tmp_path / "ckpt").values, xchm.predict(image, model).values
    )


def test_predict__does_not_change_the_callers_model(image):
    model = xchm.load_model("test-tiny").train()
    model.freeze_backbone()
    modes = {name: module.training for name, module in model.named_modules()}
    xchm.predict(image, model)
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert model.training and not model.backbone.training


def test_predict__runs_a_model_in_training_mode_as_in_eval_mode(image):
    model = responsive_model("test-tiny")  # batch norm statistics differ from batch ones
    expected = xchm.predict(image, model.eval()).values
    np.testing.assert_array_equal(xchm.predict(image, model.train()).values, expected)


def test_predict__preset_name(image):
    chm = xchm.predict(image, "test-tiny")
    assert chm.attrs["xchm_model"] == "test-tiny"


@pytest.mark.parametrize(
    ("device", "match"), [("gpu0", "not a torch device"), ("cuda:7", "CUDA is not available|GPU")]
)
def test_predict__bad_device_is_a_device_error(model, image, device, match):
    with pytest.raises(DeviceError, match=match):
        xchm.predict(image, model, device=device).compute()


def test_predict__text_weights_file_is_refused_before_any_work(image, tmp_path):
    notes = tmp_path / "notes.pth"
    notes.write_text("not weights\n")
    with pytest.raises(WeightsError, match=r"notes\.pth.*text file"):
        xchm.predict(image, "test-tiny", weights=notes)  # graph building only: no compute


# -- georeferencing and attributes ----------------------------------------------------
def test_predict__keeps_coords_crs_transform(model, image):
    chm = xchm.predict(_chunked(image, 100, 64), model)
    assert chm.dims == ("y", "x")
    np.testing.assert_array_equal(chm.y, image.y)
    np.testing.assert_array_equal(chm.x, image.x)
    assert chm.rio.crs == image.rio.crs
    assert chm.rio.transform() == image.rio.transform()
    assert np.isnan(chm.rio.nodata)
    card = model.card
    assert chm.attrs["units"] == "m"
    assert chm.attrs["xchm_card_digest"] == card.digest()
    assert chm.attrs["xchm_version"] == xchm.__version__


def test_predict__missing_crs_warns(model):
    with pytest.warns(XCHMWarning, match="no CRS"):
        chm = xchm.predict(make_image(crs=None), model)
    assert chm.rio.crs is None


def test_predict__far_resolution_warns_with_fix(model):
    with pytest.warns(XCHMWarning, match=r"resolution=2"):
        xchm.predict(make_image(res=0.5), model)


# -- the pixel grid (issue 15, case 6) -------------------------------------------------
@pytest.fixture
def no_weights(tmp_path, model):
    """A checkpoint without its weights: predicting anything fails once the model loads."""
    model.save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    return tmp_path / "ckpt"


def test_predict__fails_later_without_weights(no_weights, image):
    """The control for the tests below: their InputError comes before any model work."""
    with pytest.raises(Exception) as info:
        xchm.predict(image, no_weights)
    assert not isinstance(info.value, InputError)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("dim", ["x", "y"])
def test_predict__shuffled_coordinates_are_refused_before_any_work(no_weights, chunked, dim):
    image = make_image(128, 128)
    image = image.isel({dim: np.random.default_rng(1).permutation(128)})  # the case
    if chunked:
        image = _chunked(image, 64, 64)
    with pytest.raises(InputError, match=rf"'{dim}' coordinate is not monotonic.*sortby"):
        xchm.predict(image, no_weights)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda im: im.isel(x=np.r_[0:64, 70:134]), "'x' coordinate is not evenly spaced"),
        (lambda im: im.isel(y=np.r_[0:64, 63:127]), "'y' coordinate repeats a value"),
        (
            lambda im: im.assign_coords(x=2.0 * np.arange(140) * (1 + 0.002 * np.arange(140))),
            "'x' coordinate is not evenly spaced",
        ),  # a stretched grid: steps 2.0 .. 2.6
        (lambda im: im.assign_coords(x=im.x.values * np.nan), "'x' coordinate has NaN"),
    ],
)
def test_predict__irregular_coordinates_are_refused(no_weights, make, match):
    with pytest.raises(InputError, match=match):
        xchm.predict(make(make_image(128, 140)), no_weights)


def test_predict__float32_coordinates_are_a_regular_grid(model):
    """Coordinates stored as float32 are regular up to their rounding (0.25 m at 4e6)."""
    image = make_image(96, 96, res=2.1)
    image = image.assign_coords(x=(4e6 + image.x.values).astype("float32"))
    assert np.ptp(np.diff(image.x.values.astype("float64"))) > 0.01 * 2.1  # not exactly regular
    with warnings.catch_warnings():
        warnings.simplefilter("error", XCHMWarning)
        chm = xchm.predict(image, model)
    np.testing.assert_array_equal(chm.x, image.x)


@pytest.mark.parametrize("order", [{"y": slice(None, None, -1)}, {"x": slice(None, None, -1)}])
def test_predict__reversed_axes_give_the_same_map(model, order):
    """South-up (y increasing) or east-to-west input: the same heights, in the input's order."""
    image = make_image(150, 130)
    # A cached GeoTransform (as rioxarray.open_rasterio leaves) goes stale when reversed.
    image = image.rio.write_transform(image.rio.transform())
    reversed_ = image.isel(order)
    chm = xchm.predict(reversed_, model)
    np.testing.assert_array_equal(chm.values, xchm.predict(image, model).isel(order).values)
    np.testing.assert_array_equal(chm.y, reversed_.y)
    np.testing.assert_array_equal(chm.x, reversed_.x)
    assert chm.rio.transform() == reversed_.rio.transform(recalc=True)
    assert chm.rio.bounds() == image.rio.bounds()
    lazy = xchm.predict(_chunked(reversed_, 100, 70), model)
    assert lazy.chunks == ((100, 50), (70, 60))  # the input's chunks, in the input's order
    np.testing.assert_allclose(lazy.values, chm.values, rtol=1e-5, atol=1e-4)


def _geographic(lat0, res_deg, n=128):
    image = make_image(n, n, crs=None)
    return image.assign_coords(
        y=lat0 - res_deg * (np.arange(n) + 0.5), x=-150 + res_deg * (np.arange(n) + 0.5)
    ).rio.write_crs("EPSG:4326")


def test_predict__geographic_crs_pixels_are_checked_in_metres(model):
    image = _geographic(60, 0.5)  # the case: 0.5-degree pixels
    with pytest.warns(XCHMWarning, match=r"degrees.*EPSG:4326.*estimate_utm_crs\(\), resolution=2"):
        xchm.predict(image, model)


@pytest.mark.parametrize(
    ("lat0", "res_deg", "warns"),
    [
        (0.0, 1.8e-5, False),  # about 2.0 x 2.0 m at the equator
        (60.0, 1.8e-5, True),  # 2.0 m tall but 1.0 m wide at 60 degrees north
        (60.0, 3.6e-5, True),  # 2.0 m wide but 4.0 m tall
    ],
)
def test_predict__geographic_pixel_size_depends_on_latitude(model, lat0, res_deg, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xchm.predict(_geographic(lat0, res_deg), model)
    messages = [str(w.message) for w in caught if issubclass(w.category, XCHMWarning)]
    assert bool(messages) == warns, messages


def test_predict__feet_crs_pixels_are_checked_in_metres(model):
    feet = make_image(96, 96, crs="EPSG:2263", res=2.0)  # 2 US survey feet: 0.61 m
    with pytest.warns(XCHMWarning, match=r"0\.61 m .*foot.*estimate_utm_crs"):
        xchm.predict(feet, model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", XCHMWarning)
        xchm.predict(make_image(96, 96, crs="EPSG:2263", res=2 / 0.3048006096), model)


# -- nodata ---------------------------------------------------------------------------
def test_predict__nan_pixels_stay_nan(model, image):
    data = image.astype("float32")
    data[1, 40:50, 30:45] = np.nan
    chm = xchm.predict(data, model)
    assert np.isnan(chm.values[40:50, 30:45]).all()
    assert np.isfinite(chm.values).sum() == chm.size - 150


def test_predict__invalid_pixels_never_reach_the_model(model, image):
    """Whatever sits under masked pixels (NaN or a nodata value), the result is the same."""
    as_nan = image.astype("float32")
    as_nan[:, 60:90, 20:70] = np.nan
    as_fill = image.astype("float32")
    as_fill[:, 60:90, 20:70] = -9999.0
    a = xchm.predict(as_nan, model)
    b = xchm.predict(as_fill, model, nodata=-9999)
    np.testing.assert_array_equal(a.values, b.values)


def test_predict__nodata_from_rio(model, image):
    data = image.copy()
    data[:, :10, :] = 0
    chm = xchm.predict(data.rio.write_nodata(0), model)
    assert np.isnan(chm.values[:10]).all() and np.isfinite(chm.values[10:]).all()


def test_predict__nodata_auto_is_the_default_a_number_and_nan(model, image):
    data = image.copy()
    data[:, :10, :] = 0
    declared = data.rio.write_nodata(0)
    auto = xchm.predict(declared, model)  # "auto": the input's own value
    assert np.isnan(auto.values[:10]).all() and np.isfinite(auto.values[10:]).all()
    np.testing.assert_array_equal(xchm.predict(declared, model, nodata="auto").values, auto.values)
    np.testing.assert_array_equal(xchm.predict(data, model, nodata=0).values, auto.values)
    assert np.isfinite(xchm.predict(declared, model, nodata=np.nan).values).all()  # NaN only


def test_predict__nodata_none_keeps_a_declared_value_for_now_with_a_warning(model, image):
    data = image.copy()
    data[:, :10, :] = 0
    with pytest.warns(FutureWarning, match=r"nodata=None uses the input's own nodata value \(0\)"):
        chm = xchm.predict(data.rio.write_nodata(0), model, nodata=None)
    assert np.isnan(chm.values[:10]).all()  # as before; nodata=float("nan") for none
    with warnings.catch_warnings():  # nothing declared: None and "auto" agree, no warning
        warnings.simplefilter("error", FutureWarning)
        none = xchm.predict(data, model, nodata=None).values
    np.testing.assert_array_equal(none, xchm.predict(data, model).values)


@pytest.mark.parametrize("bad", ["none", "file", True, [0]])
def test_predict__bad_nodata_is_refused(model, image, bad):
    with pytest.raises(InputError, match="nodata must be a number, None or 'auto'"):
        xchm.predict(image, model, nodata=bad)


def test_predict__all_nodata_never_loads_the_model(tmp_path, image):
    xchm.load_model("test-tiny").save(tmp_path / "ckpt")
    empty = xr.full_like(image.astype("float32"), np.nan).chunk({"y": 64, "x": 64})
    result = xchm.predict(empty, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()  # loading it now would fail
    assert np.isnan(result.values).all()


# -- uncertainty ----------------------------------------------------------------------
def test_predict__uncertainty_dataset(model, image):
    ds = xchm.predict(image, model, uncertainty=True, overlap=32)
    assert set(ds.data_vars) == {"chm", "chm_std"}
    np.testing.assert_array_equal(ds["chm"].values, xchm.predict(image, model, overlap=32).values)
    assert (ds["chm_std"].values >= 0).all() and ds["chm_std"].values.mean() > 0


def test_predict__uncertainty_zero_without_overlap(model, image):
    ds = xchm.predict(image, model, uncertainty=True, overlap=0)
    # Every pixel lies in exactly one lattice window when the stride equals the window.
    assert np.nanmax(ds["chm_std"].values) < 1e-3


# -- bands ----------------------------------------------------------------------------
def test_predict__dataset_of_band_variables(model, image):
    ds = xr.Dataset({name: image.sel(band=name, drop=True) for name in ("green", "red", "nir")})
    np.testing.assert_array_equal(ds.chm.predict(model).values, xchm.predict(image, model).values)


def test_predict__dataset_with_band_mapping(model, image):
    ds = xr.Dataset(
        {
            code: image.sel(band=name, drop=True)
            for code, name in (("B08", "nir"), ("B04", "red"), ("B03", "green"))
        }
    )
    chm = ds.chm.predict(model, bands={"nir": "B08", "red": "B04", "green": "B03"})
    np.testing.assert_array_equal(chm.values, xchm.predict(image, model).values)


def test_predict__band_names_from_long_name(model, image):
    unnamed = image.assign_coords(band=[1, 2, 3])
    unnamed.attrs["long_name"] = ("NIR", "Red", "Green")
    np.testing.assert_array_equal(
        xchm.predict(unnamed, model).values, xchm.predict(image, model).values
    )


def test_predict__band_mapping_by_label_or_sequence(model, image):
    unnamed = image.assign_coords(band=[4, 3, 2])
    by_map = xchm.predict(unnamed, model, bands={"nir": 4, "red": 3, "green": 2})
    by_seq = xchm.predict(unnamed, model, bands=["nir", "red", "green"])
    expected = xchm.predict(image, model).values
    np.testing.assert_array_equal(by_map.values, expected)
    np.testing.assert_array_equal(by_seq.values, expected)


def test_predict__band_error_lists_every_problem(model, image):
    rgb = image.assign_coords(band=["red", "green", "blue"])
    with pytest.raises(BandError) as info:
        xchm.predict(rgb, model)
    message = str(info.value)
    assert "'nir' is missing" in message and "bands=" in message


def test_predict__unnamed_bands_need_a_mapping(model, image):
    with pytest.raises(BandError, match="missing"):
        xchm.predict(image.assign_coords(band=[1, 2, 3]), model)


def test_predict__ambiguous_bands(model, image):
    with pytest.raises(BandError, match="ambiguous"):
        xchm.predict(image.assign_coords(band=["nir", "red", "Red"]), model)


# -- bad input ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda im: im.isel(band=0), "3-D"),
        (lambda im: im.expand_dims(time=[0]), "3-D"),
        (lambda im: im.astype(bool), "integer or floating"),
        (lambda im: im.isel(y=slice(0, 50)), "smaller than one 64x64 window"),
        (lambda im: im.rename(y="row"), "spatial dimensions"),
    ],
)
def test_predict__bad_inputs(model, image, make, match):
    with pytest.raises(InputError, match=match):
        xchm.predict(make(image), model)


@pytest.mark.parametrize("overlap", [-1, 64, 2.5])
def test_predict__bad_overlap(model, image, overlap):
    with pytest.raises(InputError, match="overlap"):
        xchm.predict(image, model, overlap=overlap)


def test_predict__missing_model_path(image, tmp_path):
    with pytest.raises(ModelNotFoundError):
        xchm.predict(image, tmp_path / "nope")


@pytest.mark.parametrize("model_arg", [42, None, object()])
def test_predict__model_of_another_type(image, model_arg):
    with pytest.raises(InputTypeError, match="model must be a CanopyHeightModel") as info:
        xchm.predict(image, model_arg)
    assert isinstance(info.value, TypeError) and isinstance(info.value, XCHMError)


def test_predict__chunks_smaller_than_halo_are_rechunked(model, image):
    with pytest.warns(XCHMWarning, match="halo"):
        result = xchm.predict(_chunked(image, 32, 32), model)
    np.testing.assert_allclose(
        result.values, xchm.predict(image, model).values, rtol=1e-5, atol=1e-4
    )


# -- writing --------------------------------------------------------------------------
def test_predict__lazy_result_writes_cog_and_zarr(tmp_path, model, image):
    import rasterio

    chm = xchm.predict(_chunked(image, 64, 100), model)
    chm.rio.to_raster(tmp_path / "chm.tif", driver="COG")
    with rasterio.open(tmp_path / "chm.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.crs == image.rio.crs and src.transform == image.rio.transform()
        np.testing.assert_allclose(src.read(1), chm.values, rtol=1e-6)
    chm.to_zarr(tmp_path / "chm.zarr", consolidated=False)
    back = xr.open_zarr(tmp_path / "chm.zarr", decode_coords="all", consolidated=False)["chm"]
    assert back.rio.crs == image.rio.crs
    np.testing.assert_allclose(back.values, chm.values, rtol=1e-6)


# -- seams ----------------------------------------------------------------------------
def _seam_ratio(chm, stride, window=64):
    """Mean |step| across columns where a window edge lies / mean |step| elsewhere."""
    steps = np.abs(np.diff(chm, axis=1))  # steps[:, j] is between columns j and j+1
    cols = np.arange(steps.shape[1]) + 1  # the column right of each step
    edge = (cols % stride == 0) | ((cols - window) % stride == 0)
    return steps[:, edge].mean() / steps[:, ~edge].mean()


@pytest.fixture(scope="module")
def fitted():
    from xchm.testing import fitted_model

    return fitted_model()


def test_predict__default_overlap_has_no_seams(fitted):
    image = make_image(128, 320, seed=5)
    hard = _seam_ratio(xchm.predict(image, fitted, overlap=0).values, 64)
    overlap = xchm.inference.DEFAULT_OVERLAP
    soft = _seam_ratio(xchm.predict(image, fitted).values, 64 - overlap)
    assert hard > 2.0  # without overlap the metric sees the window grid
    assert soft < 1.5


def test_predict__sees_changes_to_a_model_object_between_calls(image):
    import torch

    model = xchm.load_model("test-tiny")
    before = xchm.predict(image, model).values
    with torch.no_grad():
        model.decoder.output.bias.fill_(20.0)
    after = xchm.predict(image, model).values
    assert np.nanmean(after) > np.nanmean(before) + 10


def test_predict__preset_card_digest_matches_the_loaded_model(image):
    chm = xchm.predict(image, "test-tiny")
    assert chm.attrs["xchm_card_digest"] == xchm.load_model("test-tiny").card.digest()
