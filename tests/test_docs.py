"""The documentation builds without warnings and its CLI reference is current."""

import subprocess
import sys
from pathlib import Path

import pytest

from xchm.cli.reference import render

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference__docs_page_matches_the_parser():
    page = (ROOT / "docs" / "cli.md").read_text()
    assert page == render(), "regenerate: python -m xchm.cli.reference > docs/cli.md"


@pytest.mark.slow
def test_docs__build_strict_without_warnings(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING" not in done.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "predict_to_zarr" in api and "synthetic_landscape" in api


def _documented_names() -> list[str]:
    page = (ROOT / "docs" / "api.md").read_text()
    return [line.split()[1] for line in page.splitlines() if line.startswith("::: ")]


@pytest.mark.parametrize("name", _documented_names())
def test_api_docs__every_documented_name_imports(name):
    """No public name in the API reference may disappear in a reshaping."""
    import importlib

    module, _, attr = name.rpartition(".")
    try:  # a documented module (``::: xchm.errors``) or a name inside one
        importlib.import_module(name)
    except ModuleNotFoundError:
        assert hasattr(importlib.import_module(module), attr), f"{name} is gone"
