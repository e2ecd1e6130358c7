"""Exceptions and warnings raised by xchm.

Every error derives from :class:`XCHMError` and also from the builtin exception a
user would naturally catch (``ValueError``, ``LookupError``, ``OSError``...), so
``except ValueError`` keeps working for code that does not know about xchm.
Messages say what was wrong, what was expected and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "XCHMError",
    "InputError",
    "BandError",
    "InputTypeError",
    "ModelNotFoundError",
    "WeightsError",
    "MissingDependencyError",
    "DeviceError",
    "StacSearchError",
    "ResumeError",
    "OutputError",
    "OutputExistsError",
    "PathNotFoundError",
    "StorageError",
    "NonFiniteLossError",
    "XCHMWarning",
    "RandomWeightsWarning",
]


class XCHMError(Exception):
    """Base class of every error raised by xchm."""


class InputError(XCHMError, ValueError):
    """An argument or an input array is not what xchm expects."""


class BandError(InputError):
    """Input bands are missing, ambiguous or cannot be mapped to the model's bands."""


class InputTypeError(InputError, TypeError):
    """An argument has the wrong type (``except TypeError`` and ``except InputError`` both work)."""


class ModelNotFoundError(XCHMError, LookupError):
    """A model preset name or checkpoint path does not exist."""


class WeightsError(XCHMError, OSError):
    """A weights file or checkpoint is missing, corrupt or does not fit the model."""


class MissingDependencyError(XCHMError, ImportError):
    """An optional dependency is needed; the message names the pip extra to install."""


class DeviceError(XCHMError, RuntimeError):
    """A requested compute device is unavailable or failed."""


class StacSearchError(XCHMError, RuntimeError):
    """A STAC API request failed (the message carries the URL and status)."""


class ResumeError(InputError):
    """A resume was refused: the store or run belongs to another job.

    The message names what differs (input, model, grid, settings, cube, split...).
    """


class OutputError(XCHMError, OSError):
    """An output path cannot be written (read-only, missing parent, not xchm's)."""


class OutputExistsError(OutputError, FileExistsError):
    """An output path exists and xchm may not replace it (see ``xchm.outputs``)."""


class PathNotFoundError(XCHMError, FileNotFoundError):
    """An input path (image, chip cube, checkpoint, run to resume) does not exist."""


class StorageError(XCHMError, OSError):
    """An object store or URL refused access or could not be reached.

    The message names the URL as typed and, for S3, the endpoint in use (never the
    credentials): check them, and the network.
    """


class NonFiniteLossError(XCHMError, FloatingPointError):
    """Training produced a NaN or infinite loss (the message says what to try)."""


class XCHMWarning(UserWarning):
    """Something the user should act on, but that does not stop the work."""


class RandomWeightsWarning(XCHMWarning):
    """A model meant for pretrained weights was built with random weights."""
