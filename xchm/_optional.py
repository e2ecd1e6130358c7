"""Import heavy or optional dependencies only where they are needed."""

from __future__ import annotations

import importlib
from types import ModuleType

from xchm.errors import MissingDependencyError

# Which pip extra provides each optional module.
_EXTRAS = {
    "pystac_client": "stac",
    "odc.stac": "stac",
    "dask_cuda": "gpu",
    "transformers": "dev",
    "datasets": "hf",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra.

    Parameters
    ----------
    module
        Dotted module name, e.g. ``"pystac_client"``.

    Returns
    -------
    ModuleType
        The imported module.

    Raises
    ------
    MissingDependencyError
        If the module cannot be imported.

    Examples
    --------
    >>> math = require("math")
    >>> math.sqrt(4.0)
    2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = _EXTRAS.get(module)
        hint = f"pip install 'xchm[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        raise MissingDependencyError(
            f"{module!r} is needed for this feature but could not be imported ({err}); "
            f"install it with: {hint}"
        ) from err
