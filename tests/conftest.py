"""Shared fixtures: small models, real data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Real object storage for every folder: moto's S3 server and nginx (see the module).
from tests.storage_fixtures import (  # noqa: F401  (fixtures)
    S3,
    aws_env,
    cog,
    moto_server,
    nginx,
    s3,
    served,
)

#: The real NEON plots (``XCHM_NEON_DIR`` overrides the location).
NEON_DIR = Path(
    os.environ.get("XCHM_NEON_DIR")
    or Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "neon"
)


def in_ci() -> bool:
    """Whether this is a CI run (``CI`` set and not false), where data must be present."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


@pytest.fixture(scope="session")
def neon_dir() -> Path:
    """The NEON plots: skip without them, except in CI, which must run these tests."""
    if not NEON_DIR.is_dir() or not any(NEON_DIR.glob("*_rgb.tif")):
        reason = f"real NEON data (*_rgb.tif) not found at {NEON_DIR}"
        if in_ci():
            pytest.fail(f"CI must run the NEON tests, but the {reason} (../shared/data/neon)")
        pytest.skip(f"{reason} (CI provides ../shared/data/neon)")
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


#: What xchm.storage.gdal_environment() writes into os.environ (open_image, import xchm).
_GDAL_S3 = ("AWS_S3_ENDPOINT", "AWS_HTTPS", "AWS_VIRTUAL_HOSTING")


@pytest.fixture(autouse=True)
def _restore_gdal_s3_variables():
    """Put GDAL's S3 variables back after each test: one test's endpoint never leaks on."""
    before = {name: os.environ.get(name) for name in _GDAL_S3}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
