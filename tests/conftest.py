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
