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
