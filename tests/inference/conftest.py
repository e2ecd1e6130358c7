import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from xchm.testing import responsive_model


@pytest.fixture(scope="module")
def model():
    """test-tiny whose output varies strongly with the input (seams would show)."""
    return responsive_model()


def make_image(height=150, width=130, *, seed=0, crs="EPSG:32617", res=2.0, dtype="uint16"):
    """A georeferenced (band, y, x) image in reference DN units with smooth structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 2500 + 1500 * np.sin(yy / 9.0) * np.cos(xx / 13.0)
    data = np.stack([base + rng.normal(0, 300, base.shape) * k for k in (1.0, 0.5, 0.4)])
    image = xr.DataArray(
        np.clip(data, 0, 9000).astype(dtype),
        dims=("band", "y", "x"),
        coords={
            "band": ["nir", "red", "green"],
            "y": 7_000_000 - res * (np.arange(height) + 0.5),
            "x": 400_000 + res * (np.arange(width) + 0.5),
        },
    )
    if crs is not None:
        image = image.rio.write_crs(crs)
    return image


@pytest.fixture
def image():
    return make_image()
