"""Shared fixtures: small models, real data paths."""

from __future__ import annotations

from pathlib import Path

import pytest

NEON_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"


@pytest.fixture(scope="session")
def neon_dir() -> Path:
    if not NEON_DIR.is_dir():
        pytest.skip(f"real NEON data not found at {NEON_DIR} (CI provides ../shared/data/neon)")
    return NEON_DIR.resolve()


@pytest.fixture
def tiny():
    """A fresh test-tiny model (nir, red, green), eval mode."""
    import xchm

    return xchm.load_model("test-tiny")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when CUDA is unavailable (CI has no GPU)."""
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
