"""xchm: canopy height maps from very-high-resolution imagery, native to xarray and Dask.

``import xchm`` is light: torch, timm and other heavy dependencies are imported
only by the functions that need them. It gives GDAL the S3 endpoint of the environment
(``AWS_ENDPOINT_URL`` becomes ``AWS_S3_ENDPOINT``... where those are unset; see
:func:`xchm.storage.gdal_environment`), so ``rioxarray.open_rasterio("s3://...")``
reaches an on-premises store as every other S3 client does.

Examples
--------
>>> import xchm
>>> "test-tiny" in xchm.list_models()
True
"""

from xchm import accessor as _accessor  # noqa: F401  (registers .chm on DataArray, Dataset)
from xchm._version import __version__
from xchm.errors import (
    BandError,
    DeviceError,
    InputError,
    MissingDependencyError,
    ModelNotFoundError,
    RandomWeightsWarning,
    StacSearchError,
    WeightsError,
    XCHMError,
    XCHMWarning,
)
from xchm.evaluation import EvaluationResult, evaluate, evaluate_raster
from xchm.inference import merge_scenes, open_prediction, predict, predict_to_zarr, write_cog
from xchm.inference.rasters import open_image
from xchm.models import BandStats, ModelCard, list_models, load_model, model_info
from xchm.pretraining import PretrainConfig, PretrainResult, pretrain
from xchm.training import TrainConfig, TrainResult, train

__all__ = [
    "BandError",
    "BandStats",
    "DeviceError",
    "EvaluationResult",
    "InputError",
    "MissingDependencyError",
    "ModelCard",
    "ModelNotFoundError",
    "PretrainConfig",
    "PretrainResult",
    "RandomWeightsWarning",
    "StacSearchError",
    "TrainConfig",
    "TrainResult",
    "WeightsError",
    "XCHMError",
    "XCHMWarning",
    "__version__",
    "evaluate",
    "evaluate_raster",
    "list_models",
    "load_model",
    "model_info",
    "merge_scenes",
    "open_image",
    "open_prediction",
    "predict",
    "pretrain",
    "predict_to_zarr",
    "train",
    "write_cog",
]

from xchm.storage import gdal_environment as _gdal_environment  # noqa: E402

_gdal_environment()
