import subprocess
import sys

import pytest

import xchm
from xchm import errors


def test_import__does_not_import_heavy_dependencies():
    code = (
        "import sys, xchm; heavy = [m for m in ('torch', 'timm', 'dask_cuda', 'pystac_client') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (errors.InputError, ValueError),
        (errors.BandError, ValueError),
        (errors.ModelNotFoundError, LookupError),
        (errors.WeightsError, OSError),
        (errors.MissingDependencyError, ImportError),
        (errors.DeviceError, RuntimeError),
    ],
)
def test_errors__inherit_xchm_error_and_builtin(error, builtin):
    assert issubclass(error, errors.XCHMError)
    assert issubclass(error, builtin)


def test_band_error__is_an_input_error():
    assert issubclass(errors.BandError, errors.InputError)


def test_require__names_the_extra_when_missing(monkeypatch):
    from xchm._optional import require

    monkeypatch.setitem(sys.modules, "pystac_client", None)  # makes the import fail
    with pytest.raises(errors.MissingDependencyError, match=r"xchm\[stac\]"):
        require("pystac_client")


def test_public_api__all_names_exist():
    for name in xchm.__all__:
        assert hasattr(xchm, name), name


def test_cli_default_overlap__is_predicts():
    import inspect

    from xchm import cli
    from xchm.inference import predict

    args = cli.build_parser().parse_args(["predict", "a.tif", "-o", "b.tif", "--model", "m"])
    # None: predict's own default (a quarter of the model's window), decided by predict
    assert args.overlap is inspect.signature(predict).parameters["overlap"].default is None
    assert args.chunks is None  # the library's: DEFAULT_CHUNK, or xchm.stac.load's
