"""Every bad command ends in one line `xchm: error: ...`, the documented exit status, no traceback.

The commands are issue 15's (case 4). Exit statuses (docs/cli.md): 1 the command
failed, 2 usage error (the parser's, before any work), 130 interrupted.
"""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xchm import cli
from xchm.cli import main
from xchm.errors import InputError

from .inference.conftest import make_image

XCHM = Path(sys.executable).parent / "xchm"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """scene.tif, a checkpoint, and files that are not what the options expect."""
    from xchm.testing import responsive_model

    folder = tmp_path_factory.mktemp("bad")
    image = make_image(96, 96).assign_coords(band=[1, 2, 3])
    image.attrs["long_name"] = ("NIR", "Red", "Green")
    image.rio.to_raster(folder / "scene.tif")
    responsive_model().save(folder / "ckpt")
    (folder / "README.md").write_text("# not an image\n")
    (folder / "notes.pth").write_text("not weights\n")
    (folder / "bad.json").write_text('{"epochs": 2,}\n')
    (folder / "list.json").write_text("[1, 2]\n")
    return folder


def one_line_error(err: str) -> str:
    """The error line, after checking it is the only one and the last, with no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("xchm: error:")]
    assert len(errors) == 1, err
    assert err.rstrip("\n").splitlines()[-1] == errors[0], err
    return errors[0]


def predict(files, *options, output="o.tif", model="ckpt"):
    out = output if output.startswith("/") else str(files / "out" / output)
    (files / "out").mkdir(exist_ok=True)
    model = str(files / model) if model == "ckpt" else model
    return ["predict", str(files / "scene.tif"), "-o", out, "--model", model, "-q", *options]


def run_main(args, capsys):
    code = main(args)
    return code, one_line_error(capsys.readouterr().err)


# -- exit 1: the command failed -----------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("readme", r"cannot read .*README\.md.* as an image.*GeoTIFF"),
        ("missing_folder", r"folder .*no/such/dir does not exist; create it"),
        ("read_only", r"/sys is not writable"),
        ("read_only_zarr", r"/sys is not writable"),
        ("text_weights", r"notes\.pth"),
    ],
)
def test_cli__bad_input_or_output_is_one_line_and_exit_1(files, capsys, case, expected):
    args = {
        "readme": [
            "predict",
            str(files / "README.md"),
            "-o",
            str(files / "o.tif"),
            "--model",
            str(files / "ckpt"),
        ],
        "missing_folder": predict(files, output=str(files / "no/such/dir/o.tif")),
        # root writes anywhere except where the kernel refuses: sysfs (EACCES for everyone)
        "read_only": predict(files, output="/sys/o.tif"),
        "read_only_zarr": predict(files, output="/sys/o.zarr"),
        "text_weights": predict(files, "--weights", str(files / "notes.pth"), model="test-tiny"),
    }[case]
    code, line = run_main(args, capsys)
    assert code == 1
    assert re.search(expected, line), line
    assert "partial" not in line  # no hidden temporary file named


def test_cli__missing_output_folder_is_refused_before_any_work(files, capsys, monkeypatch):
    import xchm.inference

    def no_work(*args, **kwargs):
        raise AssertionError("predicted although the output cannot be written")

    monkeypatch.setattr(xchm.inference, "predict", no_work)
    code, _ = run_main(predict(files, output=str(files / "nope" / "o.tif")), capsys)
    assert code == 1 and not (files / "nope").exists()


def test_cli__bad_config_json_is_one_line(files, capsys):
    for name, expected in (("bad.json", "not valid JSON"), ("list.json", "not an object")):
        args = [
            "train",
            str(files / "chips.zarr"),
            "-o",
            str(files / "r"),
            "--model",
            "test-tiny",
            "--config",
            str(files / name),
        ]
        code, line = run_main(args, capsys)
        assert code == 1 and expected in line and name in line, line
        code, line = run_main(["pretrain", *args[1:]], capsys)
        assert code == 1 and expected in line, line
    assert not (files / "r").exists()


def test_cli__train_on_cuda_without_cuda_is_a_device_error(files, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    args = ["train", str(files / "chips.zarr"), "-o", str(files / "r"), "--model", "test-tiny"]
    code, line = run_main([*args, "--device", "cuda"], capsys)
    assert code == 1 and "CUDA is not available" in line and "--device cpu" in line
    code, line = run_main(predict(files, "--device", "cuda:0"), capsys)
    assert code == 1 and "CUDA is not available" in line


def test_cli__unreachable_scheduler_fails_in_seconds_naming_it(files, capsys):
    start = time.monotonic()
    code, line = run_main(predict(files, "--scheduler", "tcp://127.0.0.1:1"), capsys)
    assert time.monotonic() - start < 20  # distributed's default is 30 s
    assert code == 1 and "tcp://127.0.0.1:1" in line and "scheduler" in line


def test_cli__unexpected_errors_are_one_line_and_debug_shows_them(files, capsys, monkeypatch):
    def bug(args):
        raise KeyError(101)

    monkeypatch.setattr(cli.models, "_models", bug)
    code, line = run_main(["models"], capsys)
    assert code == 1 and "unexpected KeyError: 101" in line and "--debug" in line
    with pytest.raises(KeyError):
        main(["--debug", "models"])
    monkeypatch.setenv("XCHM_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["models"])
    monkeypatch.delenv("XCHM_DEBUG")
    readme = ["predict", str(files / "README.md"), "-o", str(files / "o.tif"), "--model", "m"]
    with pytest.raises(InputError, match="as an image"):
        main(["--debug", *readme])


def test_cli__interrupt_exits_130(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.models, "_models", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "xchm: interrupted\n"


# -- exit 2: usage errors, caught by the parser before any work ----------------------------
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--device", "gpu0"], "argument --device: 'gpu0' is not a torch device"),
        (["--chunks", "0"], "argument --chunks: must be a positive integer, got '0'"),
        (["--chunks", "-5"], "argument --chunks: must be a positive integer, got '-5'"),
        (["--chunks", "many"], "argument --chunks: expected an integer, got 'many'"),
        (["--overlap", "-1"], "argument --overlap: must be a non-negative integer"),
        (["--batch-size", "0"], "argument --batch-size: must be a positive integer"),
        (["--region-size", "0"], "argument --region-size: must be a positive integer"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_cli__bad_option_values_are_usage_errors(files, capsys, options, expected):
    code, line = run_main(predict(files, *options), capsys)
    assert code == 2
    assert expected in line and re.search(r"\(see 'xchm( predict)? --help'\)$", line), line
    assert not (files / "out" / "o.tif").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["train", "c.zarr", "-o", "r", "--epochs", "0"],
        ["train", "c.zarr", "-o", "r", "--lr", "nan"],
        ["train", "c.zarr", "-o", "r", "--num-workers", "-1"],
        ["pretrain", "c.zarr", "-o", "r", "--batch-size", "-2"],
        ["evaluate", "m", "c.zarr", "--batch-size", "0"],
        ["chips", "build", "-o", "c.zarr", "--window", "0"],
        ["chips", "preview", "c.zarr", "-o", "p.png", "--n", "0"],
        ["demo", "--size", "255"],
        ["demo", "--workers", "0"],
        ["bench", "--chunk", "0"],
        ["predict", "s.tif", "--model", "m"],  # -o missing
        ["no-such-command"],
    ],
)
def test_cli__usage_errors_of_every_command_exit_2(capsys, args):
    code, line = run_main(args, capsys)
    assert code == 2 and line.endswith("--help')"), line


# -- the installed command, in a real process ---------------------------------------------
@pytest.mark.parametrize(("case", "status"), [("readme", 1), ("chunks", 2), ("debug", 1)])
def test_cli__installed_command_prints_no_traceback(files, case, status):
    assert XCHM.exists(), f"{XCHM} missing: pip install -e . installs the xchm command"
    args = {
        "readme": [
            "predict",
            str(files / "README.md"),
            "-o",
            str(files / "x.tif"),
            "--model",
            str(files / "ckpt"),
        ],
        "chunks": predict(files, "--chunks", "0"),
        "debug": [
            "--debug",
            "predict",
            str(files / "README.md"),
            "-o",
            str(files / "x.tif"),
            "--model",
            str(files / "ckpt"),
        ],
    }[case]
    done = subprocess.run([str(XCHM), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == status, done.stderr
    if case == "debug":
        assert "Traceback" in done.stderr and "InputError" in done.stderr
    else:
        assert done.stderr.startswith("xchm: error: ") and done.stderr.count("\n") == 1
        assert "Traceback" not in done.stderr and not done.stdout


def test_cli__docs_state_the_exit_statuses():
    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    head = page.split("## xchm", 1)[0]
    for text in ("0 on success", "1 when", "2 on a usage error", "3 when", "130", "--debug"):
        assert text in head, text
