"""The tutorial notebook runs from top to bottom (nbclient, this venv's kernel, offline).

Any cell that raises fails the test; the notebook's own last cells check that the model
beats predicting the mean. The committed file has no outputs (a check below).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the dev extra")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need the dev extra")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TUTORIAL = NOTEBOOKS / "tutorial.ipynb"

pytestmark = pytest.mark.slow


def test_notebooks__are_committed_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name


def test_tutorial__runs_without_an_error(tmp_path):
    nb = nbformat.read(TUTORIAL, as_version=4)
    # The kernel spec "python3" is ipykernel's own: jupyter_client starts it with this
    # interpreter (sys.executable), so the notebook sees this venv's xchm. Checked last.
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    client = nbclient.NotebookClient(
        nb,
        timeout=900,  # per cell: a busy CI machine
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's working folder
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    *cells, kernel = [c for c in nb.cells if c.cell_type == "code"]
    assert kernel.outputs[0]["text"].strip() == sys.executable
    outputs = [o for c in cells for o in c.outputs]
    shown = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    for kind in ("ChipCube", "TrainResult", "ModelCard", "EvaluationResult"):
        assert f"xchm.{kind}" in shown, kind  # the rich reprs were displayed
    text = "".join(o.get("text", "") for o in outputs)
    assert "Dask dashboard: http://127.0.0.1:" in text
