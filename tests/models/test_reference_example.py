"""``examples/import_reference.py`` runs as a script (a random stand-in, reference format)."""

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_import_reference__loads_imports_predicts_and_exports(tmp_path):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "import_reference.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "same heights as the .pth: True" in out.stdout
    assert "round trip identical: True" in out.stdout
    assert "canopy height: mean" in out.stdout
    assert "Warning" not in out.stderr, out.stderr
    assert (tmp_path / "chm-model" / "model.safetensors").is_file()
