"""Keyword arguments renamed in the public API, still accepted for one release.

:func:`renamed_keywords` wraps a function so that a caller passing an old keyword
name gets a :class:`FutureWarning` naming the new one, and the call goes on as if it
had used the new name. Positional callers are not affected. The wrapper keeps the
function's signature (``inspect.signature``, ``help``, IDEs and the docs show the
new names only), its docstring and its defaults.

A leaf module: it imports nothing from xchm, so every layer may use it.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["renamed_keywords"]

F = TypeVar("F", bound=Callable[..., Any])


def renamed_keywords(**old_to_new: str) -> Callable[[F], F]:
    """Accept the old keyword names ``old_to_new`` (old name -> new name), with a warning.

    Raises ``TypeError`` when a call gives both the old and the new name (by keyword
    or by position), as Python does for a repeated argument.

    Examples
    --------
    >>> import warnings
    >>> @renamed_keywords(store="output")
    ... def save(data, output):
    ...     return output
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     save(1, store="a.zarr")
    'a.zarr'
    >>> caught[0].category.__name__, str(caught[0].message).split(";")[1]
    ('FutureWarning', ' use output=...')
    """

    def decorate(function: F) -> F:
        name = function.__qualname__
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs or new in signature.bind_partial(*args).arguments:
                    raise TypeError(
                        f"{name}() got both {new}= and its deprecated name {old}=; pass {new}= only"
                    )
                warnings.warn(
                    f"{name}({old}=...) is deprecated and will be removed in a future release; "
                    f"use {new}=...",
                    FutureWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        wrapper.__xchm_renamed__ = dict(old_to_new)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
