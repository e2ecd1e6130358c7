"""The ``.chm`` accessor on DataArray and Dataset: thin wrappers of :func:`xchm.predict`."""

from __future__ import annotations

from typing import Any

import xarray as xr

from xchm.inference.predict import predict

__all__ = ["CHMAccessor"]


class CHMAccessor:
    """Canopy height methods: ``da.chm.predict(model)``, ``ds.chm.predict(model, bands=...)``."""

    def __init__(self, obj: xr.DataArray | xr.Dataset) -> None:
        self._obj = obj  # keep trivial: xarray rewraps errors raised here

    def predict(self, model: Any, **kwargs: Any) -> xr.DataArray | xr.Dataset:
        """Predict canopy height; same arguments and result as :func:`xchm.predict`."""
        return predict(self._obj, model, **kwargs)


xr.register_dataarray_accessor("chm")(CHMAccessor)
xr.register_dataset_accessor("chm")(CHMAccessor)
