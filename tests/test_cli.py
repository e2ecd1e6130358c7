import json
import subprocess
import sys

from xchm.cli import main


def test_models__table_lists_presets_with_parameters(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("dinov3-vitl16-sat", "dinov3-vits16", "dinov3-vit7b16-sat", "test-tiny"):
        assert name in out
    assert "303.1M" in out  # ViT-L/16 backbone
    assert "nir,red,green" in out


def test_models__json(capsys):
    assert main(["models", "--json"]) == 0
    infos = json.loads(capsys.readouterr().out)
    by_name = {i["name"]: i for i in infos}
    assert by_name["dinov3-vitl16-sat"]["backbone_parameters"] == 303_128_576
    assert by_name["test-tiny"]["bands"] == ["nir", "red", "green"]


def test_cli__no_command_prints_help(capsys):
    assert main([]) == 2
    assert "models" in capsys.readouterr().out


def test_cli__entry_point_runs_version():
    out = subprocess.run(
        [sys.executable, "-m", "xchm.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("xchm ")


def test_cli__help_returns_0_instead_of_exiting(capsys):
    assert main(["--help"]) == 0 and main(["predict", "--help"]) == 0
    assert "--debug" in capsys.readouterr().out


def test_cli__clusters_xchm_starts_listen_on_loopback_unless_host_says(monkeypatch):
    import xchm.cluster
    from xchm import cli

    parser = cli.build_parser()
    assert parser.parse_args(["predict", "a.tif", "-o", "o.tif", "--model", "m"]).host == (
        "127.0.0.1"
    )
    assert parser.parse_args(["demo", "--host", "0.0.0.0"]).host == "0.0.0.0"
    calls = []
    monkeypatch.setattr(xchm.cluster, "start", lambda *a, **k: calls.append((a, k)))
    cli.predict._scheduler("auto", "0.0.0.0")
    assert calls == [(("auto",), {"host": "0.0.0.0"})]


# -- one vocabulary: -o/--output writes, old spellings still parse (with a warning) ----------
def _subparser(*names):
    from xchm.cli import build_parser
    from xchm.cli.reference import _subparsers

    parser = build_parser()
    for name in names:
        parser = dict(_subparsers(parser))[name]
    return parser


WRITERS = [
    ("predict",),
    ("demo",),
    ("chips", "build"),
    ("chips", "preview"),
    ("train",),
    ("pretrain",),
    ("evaluate",),
    ("bench",),
]


def test_cli__every_command_that_writes_takes_dash_o_output():
    for names in WRITERS:
        options = {s for a in _subparser(*names)._actions for s in a.option_strings}
        assert {"-o", "--output"} <= options, names


OLD_SPELLINGS = [
    (["demo", "--out", "d"], "output", "d", "--out"),
    (["evaluate", "m", "c.zarr", "--report", "r"], "output", "r", "--report"),
    (["bench", "--json", "b.json"], "output", "b.json", "--json"),
    (["chips", "build", "-o", "c.zarr", "--split", "scene"], "split_by", "scene", "--split"),
]


def test_cli__old_spellings_still_parse_and_say_what_replaced_them(capsys):
    from xchm.cli import build_parser

    for argv, dest, value, old in OLD_SPELLINGS:
        assert getattr(build_parser().parse_args(argv), dest) == value, argv
        err = capsys.readouterr().err
        assert err.startswith(f"xchm: warning: {old} is deprecated") and err.count("\n") == 1
        assert f"{old} " not in _subparser(*argv[: 2 if argv[0] == "chips" else 1]).format_help()


def test_cli__split_by_and_nodata_defaults_are_the_librarys():
    from xchm.cli import build_parser

    parser = build_parser()
    built = parser.parse_args(["chips", "build", "-o", "c.zarr"])
    assert (built.split_by, built.nodata) == ("block", "auto")
    predicted = parser.parse_args(["predict", "a.tif", "-o", "c.tif", "--model", "m"])
    assert predicted.nodata == "auto"
    for text, value in (("none", None), ("auto", "auto"), ("255", 255.0)):
        args = ["predict", "a.tif", "-o", "c.tif", "--model", "m", "--nodata", text]
        assert parser.parse_args(args).nodata == value


def test_cli__bad_nodata_is_a_usage_error(capsys):
    assert main(["chips", "build", "-o", "c.zarr", "--nodata", "white"]) == 2
    assert "expected a number, 'auto'" in capsys.readouterr().err
