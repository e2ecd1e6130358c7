"""precision= everywhere: selection, bad values, chunk invariance, accuracy, resumes (test-tiny).

bf16 and fp16 are emulated on CPUs without AVX512_BF16/AMX (slow: ~16x for test-tiny),
so scenes here are small.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xchm
import xchm.inference.precision as precision_module
from xchm.cli import main
from xchm.errors import InputError, ResumeError, XCHMWarning
from xchm.inference.benchmark import BenchConfig
from xchm.inference.benchmark import run as bench_run
from xchm.inference.job import differences
from xchm.inference.precision import emulation_warning
from xchm.inference.runtime import PRECISIONS, autocast_dtype, native_bf16_cpu
from xchm.inference.to_zarr import PROGRESS_GROUP

from .conftest import make_image

# predict warns that bf16/fp16 are emulated on this kind of CPU (tested below on its own).
pytestmark = pytest.mark.filterwarnings("ignore:precision=.* runs emulated:xchm.errors.XCHMWarning")

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _cpuinfo_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


# -- which dtype each precision runs in ------------------------------------------------------
def test_autocast_dtype__each_precision_on_the_cpu():
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    assert autocast_dtype("fp16", CPU) is torch.float16
    assert autocast_dtype("auto", CPU) is (torch.bfloat16 if native_bf16_cpu() else None)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="no /proc/cpuinfo")
def test_auto__on_this_cpu_agrees_with_proc_cpuinfo():
    native = bool(_cpuinfo_flags() & {"avx512_bf16", "amx_bf16"})
    assert native_bf16_cpu() is native
    assert (autocast_dtype("auto", CPU) is torch.bfloat16) is native


def test_autocast_dtype__auto_is_bf16_on_cuda_devices():
    cuda = torch.device("cuda", 0)  # only its type is read: no GPU needed
    assert autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("fp32", cuda) is None


@CUDA
def test_predict__auto_runs_bf16_on_cuda():
    image = make_image(96, 96)
    model = xchm.testing.responsive_model()
    auto = xchm.predict(image, model, device="cuda").values
    bf16 = xchm.predict(image, model, device="cuda", precision="bf16").values
    fp32 = xchm.predict(image, model, device="cuda", precision="fp32").values
    np.testing.assert_array_equal(auto, bf16)
    assert np.abs(auto - fp32).max() > 0


# -- bad values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["bfloat16", "FP32", "", None, 16])
def test_bad_precision__input_error_naming_the_choices(model, bad):
    image = make_image(64, 64)
    message = "precision must be one of 'auto', 'fp32', 'bf16', 'fp16'"
    with pytest.raises(InputError, match=message):
        xchm.predict(image, model, precision=bad)
    with pytest.raises(InputError, match=message):
        image.chm.predict(model, precision=bad)
    with pytest.raises(InputError, match=message):
        emulation_warning(bad, "cpu")
    with pytest.raises(InputError, match="precision must be one of"):
        BenchConfig(presets=("test-tiny",), precision=bad)


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "in.tif", "-o", "out.tif", "--model", "test-tiny"],
        ["evaluate", "test-tiny", "cube.zarr"],
        ["bench", "--presets", "test-tiny"],
    ],
)
def test_cli_bad_precision__usage_error_with_the_choices(command, capsys):
    assert main([*command, "--precision", "bf61"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bf61'" in err and "'auto', 'fp32', 'bf16', 'fp16'" in err


# -- bf16 results --------------------------------------------------------------------------------
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ychunk=st.integers(64, 96),
    xchunk=st.integers(64, 80),
    overlap=st.sampled_from([0, 16]),
    precision=st.sampled_from(["bf16", "fp16"]),
)
def test_predict_reduced_precision__chunk_invariant(model, ychunk, xchunk, overlap, precision):
    """A chunked lazy run equals the eager one: windows do not depend on their batch."""
    image = make_image(160, 144, seed=ychunk * xchunk)
    eager = xchm.predict(image, model, overlap=overlap, precision=precision).values
    chunks = {"y": ychunk, "x": xchunk}
    lazy = xchm.predict(image.chunk(chunks), model, overlap=overlap, precision=precision)
    assert lazy.attrs["xchm_precision"] == precision
    np.testing.assert_allclose(lazy.values, eager, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def fitted():
    from xchm.testing import fitted_model

    return fitted_model()


def test_predict_bf16_and_fp16__differ_from_fp32_but_by_cm(fitted):
    image = make_image(150, 130)  # the smooth scene fitted_model learned
    fp32 = xchm.predict(image, fitted, precision="fp32").values
    for precision, mean_goal in (("bf16", 0.05), ("fp16", 0.01)):
        dh = np.abs(xchm.predict(image, fitted, precision=precision).values - fp32)
        assert dh.max() > 0, precision  # it really ran in another dtype
        assert dh.mean() < mean_goal and dh.max() < 0.5, (precision, dh.mean(), dh.max())


# -- the warning where bf16/fp16 would be emulated -----------------------------------------------
@pytest.fixture
def plain_cpu(monkeypatch):
    """A CPU without native bf16 or fp16, whatever this one is."""
    monkeypatch.setattr(precision_module, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx2"}))


def _caller(precision, device):
    return emulation_warning(precision, device)  # stacklevel 3 blames _caller's caller


def test_emulation_warning__bf16_and_fp16_on_a_plain_cpu(plain_cpu):
    for precision in ("bf16", "fp16"):
        with pytest.warns(XCHMWarning, match=f"precision='{precision}' runs emulated") as seen:
            line = inspect.currentframe().f_lineno + 1
            assert _caller(precision, "cpu") is True
        (warning,) = seen
        assert "'auto' (fp32 on this CPU) or 'fp32' is faster" in str(warning.message)
        assert (warning.filename, warning.lineno) == (__file__, line)  # the user's line


def test_emulation_warning__silent_where_native_or_not_asked(plain_cpu, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for precision in ("auto", "fp32"):
            assert emulation_warning(precision, "cpu") is False
        for device in ("cuda", "cuda:1", torch.device("cuda", 0)):
            assert emulation_warning("bf16", device) is False
        monkeypatch.setattr(precision_module, "native_bf16_cpu", lambda: True)
        assert emulation_warning("bf16", "cpu") is False
        monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"amx_fp16"}))
        assert emulation_warning("fp16", torch.device("cpu")) is False


def test_emulation_warning__device_none_is_where_the_model_would_run(plain_cpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert emulation_warning("bf16", None) is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(XCHMWarning, match="emulated"):
        assert emulation_warning("bf16", None) is True
    from distributed import Client

    # With a cluster the workers choose their device: nothing to tell here.
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert emulation_warning("bf16", None) is False


# -- predict_to_zarr: one precision per store ----------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model):
    return model.save(tmp_path_factory.mktemp("precision") / "model")


def _store_files(store: Path) -> dict[str, bytes]:
    files = sorted(p for p in store.rglob("*") if p.is_file())
    return {str(p.relative_to(store)): p.read_bytes() for p in files}


def test_predict_to_zarr__resume_at_another_precision_is_refused(tmp_path, checkpoint):
    image = make_image(128, 128).chunk({"y": 64, "x": 64})
    store = tmp_path / "m.zarr"
    xchm.predict_to_zarr(image, checkpoint, store, region_size=64, progress=False, precision="fp32")
    zarr.open_array(store, mode="r+", path=f"{PROGRESS_GROUP}/done")[1, :] = 0  # cut off
    before = _store_files(store)
    for other in ("bf16", "auto"):  # "auto" too: it may be bf16 on another machine
        with pytest.raises(ResumeError, match=rf"different job: precision: fp32 -> {other}\."):
            xchm.predict_to_zarr(image, checkpoint, store, region_size=64, precision=other)
    assert _store_files(store) == before  # refused before any work
    ds = xchm.predict_to_zarr(
        image, checkpoint, store, region_size=64, progress=False, precision="fp32"
    )
    assert "2/4 regions computed" in ds.attrs["xchm_run"]
    assert ds["chm"].attrs["xchm_precision"] == "fp32"


def test_predict_to_zarr__store_laid_out_before_precision_resumes_as_auto(tmp_path, checkpoint):
    image = make_image(128, 128).chunk({"y": 64, "x": 64})
    store = tmp_path / "m.zarr"
    xchm.predict_to_zarr(image, checkpoint, store, region_size=64, progress=False)
    progress = zarr.open_group(store, mode="r+", path=PROGRESS_GROUP)
    old = dict(progress.attrs["fingerprint"])
    assert old.pop("precision") == "auto"
    progress.attrs["fingerprint"] = old  # as an xchm before precision= wrote it
    zarr.open_array(store, mode="r+", path=f"{PROGRESS_GROUP}/done")[1, :] = 0
    with pytest.raises(ResumeError, match=r"precision: auto -> bf16\."):
        xchm.predict_to_zarr(image, checkpoint, store, region_size=64, precision="bf16")
    ds = xchm.predict_to_zarr(image, checkpoint, store, region_size=64, progress=False)
    assert "2/4 regions computed" in ds.attrs["xchm_run"]


def test_differences__names_precision_and_reads_a_missing_one_as_auto():
    base = {"input": {"files": [], "data": "x"}, "window": 64}
    assert differences({**base, "precision": "fp32"}, {**base, "precision": "bf16"}) == [
        "precision: fp32 -> bf16"
    ]
    assert differences(base, {**base, "precision": "auto"}) == []
    assert differences(base, {**base, "precision": "fp32"}) == ["precision: auto -> fp32"]


# -- the CLI and the benchmark -------------------------------------------------------------------
def test_cli_predict__precision_reaches_the_store(tmp_path, checkpoint):
    image = make_image(96, 96).assign_coords(band=[1, 2, 3])
    image.attrs["long_name"] = ("nir", "red", "green")  # written as band descriptions
    image.rio.to_raster(tmp_path / "in.tif")
    out = tmp_path / "chm.zarr"
    args = ["predict", str(tmp_path / "in.tif"), "-o", str(out), "--model", str(checkpoint)]
    assert main([*args, "-q", "--precision", "bf16"]) == 0
    opened = xchm.open_prediction(out)
    assert opened["chm"].attrs["xchm_precision"] == "bf16"
    fingerprint = zarr.open_group(out, mode="r", path=PROGRESS_GROUP).attrs["fingerprint"]
    assert fingerprint["precision"] == "bf16"
    assert main([*args, "-q"]) == 1  # resumed at the default, auto: refused


def test_bench__rows_name_the_precision_and_the_dtype_it_ran_in(monkeypatch):
    import importlib

    # The module (xchm.inference.predict, the attribute, is the function).
    module = importlib.import_module("xchm.inference.predict")
    asked = []
    predict = module.predict

    def spy(*args, **kwargs):
        asked.append(kwargs.get("precision"))
        return predict(*args, **kwargs)

    monkeypatch.setattr(module, "predict", spy)
    config = BenchConfig(
        presets=("test-tiny",),
        size=64,
        overlaps=(0,),
        sources=("memory",),
        repeats=1,
        workers=(),
        device="cpu",
        precision="bf16",
    )
    result = bench_run(config, log=lambda line: None)
    (row,) = result["results"]
    assert (row["precision"], row["dtype"]) == ("bf16", "bfloat16")
    assert asked and set(asked) == {"bf16"}  # every timed predict ran at it
    assert result["config"]["precision"] == "bf16"
    json.dumps(result)  # JSON-able as written by -o


def test_cli_bench__precision_option_reaches_the_config():
    from xchm.cli import build_parser
    from xchm.cli.bench import config_from_args

    args = build_parser().parse_args(["bench", "--presets", "test-tiny", "--precision", "fp16"])
    assert config_from_args(args).precision == "fp16"
    default = build_parser().parse_args(["bench", "--presets", "test-tiny"])
    assert config_from_args(default).precision == "auto"
    assert set(PRECISIONS) == {"auto", "fp32", "bf16", "fp16"}


def test_predict__warns_once_before_work_where_bf16_is_emulated(plain_cpu):
    image = make_image(64, 64)
    with pytest.warns(XCHMWarning, match="precision='bf16' runs emulated") as seen:
        line = inspect.currentframe().f_lineno + 1
        xchm.predict(image, "test-tiny", precision="bf16", device="cpu")
    emulated = [w for w in seen if "emulated" in str(w.message)]
    assert len(emulated) == 1 and (emulated[0].filename, emulated[0].lineno) == (__file__, line)
