"""The ``.chm`` accessor on DataArray and Dataset: thin wrappers of :func:`xchm.predict`.

The method spells out :func:`xchm.predict`'s keyword arguments (so ``help`` and IDEs
show them) with the defaults read from its signature, never copied; a test fails if
the two signatures differ.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import xarray as xr

from xchm.inference.inputs import BandsArg
from xchm.inference.predict import predict

__all__ = ["CHMAccessor"]

#: :func:`xchm.predict`'s defaults, by parameter name (read, never copied).
_DEFAULT: dict[str, Any] = {
    name: p.default for name, p in inspect.signature(predict).parameters.items()
}


class CHMAccessor:
    """Canopy height methods: ``da.chm.predict(model)``, ``ds.chm.predict(model, bands=...)``."""

    def __init__(self, obj: xr.DataArray | xr.Dataset) -> None:
        self._obj = obj  # keep trivial: xarray rewraps errors raised here

    def predict(
        self,
        model: Any,
        *,
        overlap: int | None = _DEFAULT["overlap"],
        batch_size: int | None = _DEFAULT["batch_size"],
        device: str | None = _DEFAULT["device"],
        bands: BandsArg = _DEFAULT["bands"],
        nodata: float | str | None = _DEFAULT["nodata"],
        uncertainty: bool = _DEFAULT["uncertainty"],
        weights: str | os.PathLike[str] | None = _DEFAULT["weights"],
        backbone_weights: str | os.PathLike[str] | None = _DEFAULT["backbone_weights"],
        precision: str = _DEFAULT["precision"],
        compile: bool | str = _DEFAULT["compile"],
    ) -> xr.DataArray | xr.Dataset:
        """Predict canopy height of this object; :func:`xchm.predict` with it as ``obj``.

        Parameters
        ----------
        model
            A loaded model (``xchm.load_model``), a checkpoint directory, or a preset name.
        overlap, batch_size, device, bands, nodata, uncertainty, weights, backbone_weights,
        precision, compile
            As for :func:`xchm.predict` (same defaults).

        Returns
        -------
        xarray.DataArray or xarray.Dataset
            What :func:`xchm.predict` returns: ``chm`` (y, x) in metres, or a Dataset
            with ``chm`` and ``chm_std`` if ``uncertainty``.

        Examples
        --------
        >>> import numpy as np, rioxarray, xarray as xr, xchm
        >>> image = xr.DataArray(
        ...     np.full((3, 96, 96), 2000, dtype="uint16"), dims=("band", "y", "x"),
        ...     coords={"band": ["nir", "red", "green"]}).rio.write_crs("EPSG:3338")
        >>> image.chm.predict("test-tiny", overlap=8).shape
        (96, 96)
        """
        return predict(
            self._obj,
            model,
            overlap=overlap,
            batch_size=batch_size,
            device=device,
            bands=bands,
            nodata=nodata,
            uncertainty=uncertainty,
            weights=weights,
            backbone_weights=backbone_weights,
            precision=precision,
            compile=compile,
        )


xr.register_dataarray_accessor("chm")(CHMAccessor)
xr.register_dataset_accessor("chm")(CHMAccessor)
