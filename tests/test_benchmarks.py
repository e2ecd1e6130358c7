"""Smoke runs of the benchmark scripts (numbers live in benchmarks/RESULTS.md, not here)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_model_forward__runs_and_reports(tmp_path):
    out = tmp_path / "forward.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "model_forward.py"),
            "--presets",
            "test-tiny",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--batch-size",
            "2",
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    results = json.loads(out.read_text())
    text = json.dumps(results)
    assert "test-tiny" in text and "chips" in text
