"""Smoke run of benchmarks/train_recipes.py (the numbers live in benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_recipes__scores_each_recipe_against_the_train_mean(tmp_path, neon_dir):
    out = tmp_path / "recipes.json"
    args = [sys.executable, str(ROOT / "benchmarks" / "train_recipes.py"), "--out"]
    args += [str(tmp_path / "runs"), "--data", str(neon_dir), "--datasets", "neon"]
    args += ["--recipes", "from-scratch", "reference", "--epochs", "1", "--threads", "1"]
    subprocess.run([*args, "--json", str(out)], check=True, capture_output=True, text=True)
    res = json.loads(out.read_text())
    rows = {r["recipe"]: r for r in res["datasets"]["neon"]["rows"]}
    assert set(rows) == {"from-scratch", "reference"}
    for row in rows.values():
        assert row["epochs_run"] == 1 and row["baseline_mae"] > 0
        assert row["warned"] == (row["beats_baseline"] is False)
    assert rows["from-scratch"]["baseline_mae"] == rows["reference"]["baseline_mae"]
