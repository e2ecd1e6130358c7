"""RunConfig: the settings every run has, and how a run's config is checked and stored.

:class:`~xchm.training.TrainConfig` and :class:`~xchm.pretraining.PretrainConfig`
subclass it. The base holds the fields both runs have with one meaning (the
subclasses give their own defaults where the runs differ), the validation that
reports every bad value at once, and the conversions: a plain dict (``to_dict`` /
``from_dict``, what ``config.json`` and the run state hold) and a JSON file
(``save`` / ``load``). The small ``*_problems`` functions are the checks the
subclasses use for their own fields.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Self

from xchm.errors import InputError, PathNotFoundError

__all__ = [
    "RunConfig",
    "in_range_problems",
    "nonnegative_int_problems",
    "nonnegative_problems",
    "optional_positive_int_problems",
    "positive_int_problems",
    "positive_problems",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int_problems(config: Any, *names: str) -> list[str]:
    """One message per field of ``names`` that is not an integer >= 1."""
    return [
        f"{n} must be a positive integer, got {getattr(config, n)!r}"
        for n in names
        if not (_is_int(getattr(config, n)) and getattr(config, n) >= 1)
    ]


def nonnegative_int_problems(config: Any, *names: str) -> list[str]:
    """One message per field of ``names`` that is not an integer >= 0."""
    return [
        f"{n} must be a non-negative integer, got {getattr(config, n)!r}"
        for n in names
        if not (_is_int(getattr(config, n)) and getattr(config, n) >= 0)
    ]


def optional_positive_int_problems(config: Any, *names: str) -> list[str]:
    """One message per field of ``names`` that is neither None nor an integer >= 1."""
    return [
        f"{n} must be a positive integer or None, got {getattr(config, n)!r}"
        for n in names
        if getattr(config, n) is not None
        and not (_is_int(getattr(config, n)) and getattr(config, n) >= 1)
    ]


def positive_problems(config: Any, *names: str) -> list[str]:
    """One message per field of ``names`` that is not > 0 (NaN is not)."""
    return [
        f"{n} must be > 0, got {getattr(config, n)!r}" for n in names if not getattr(config, n) > 0
    ]


def nonnegative_problems(config: Any, *names: str) -> list[str]:
    """One message per field of ``names`` that is not >= 0 (NaN is not)."""
    return [
        f"{n} must be >= 0, got {getattr(config, n)!r}"
        for n in names
        if not getattr(config, n) >= 0
    ]


def in_range_problems(
    config: Any, *names: str, low: float, high: float, open_low: bool
) -> list[str]:
    """One message per field of ``names`` outside ``[low, high]`` (``(low, high]``: open_low)."""
    bounds = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
    return [
        f"{n} must be in {bounds}, got {getattr(config, n)!r}"
        for n in names
        if not ((low < getattr(config, n)) if open_low else (low <= getattr(config, n)))
        or not getattr(config, n) <= high
    ]


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What the settings of :func:`xchm.train` and :func:`xchm.pretrain` share.

    Not used on its own: a subclass gives the defaults of the fields without one
    and adds its own fields and checks (:meth:`problems`).

    Examples
    --------
    >>> from xchm.training import TrainConfig
    >>> cfg = TrainConfig(epochs=5, seed=3)
    >>> isinstance(cfg, RunConfig), TrainConfig.from_dict(cfg.to_dict()) == cfg
    (True, True)
    """

    epochs: int
    """Number of epochs (the most, where the run can stop early)."""
    batch_size: int
    """Chips per optimisation step (per process under DDP)."""
    lr: float
    """Learning rate of AdamW (see the subclass for what it applies to)."""
    weight_decay: float
    """AdamW weight decay."""
    grad_clip: float
    """Gradient norm clip (0 disables)."""
    min_lr: float = 1e-6
    """Lowest learning rate the schedule reaches."""
    buffer_chunks: int = 8
    """Zarr chunks whose chips are mixed in the shuffle buffer (memory: about that many
    decoded chunks per reading process)."""
    mixed_precision: bool = True
    """bf16 autocast on CUDA (ignored on the CPU)."""
    max_steps_per_epoch: int | None = None
    """Cap on optimisation steps per epoch (bounded runs, demos, tests)."""
    checkpoint_every: int | None = None
    """Also save the run state every this many steps (long epochs); the state is always
    saved at the end of each epoch."""
    seed: int = 0
    """Seed of the new weights, the data order, augmentation and dropout."""
    tensorboard: bool = False
    """Also log each epoch's metrics to TensorBoard (``OUTPUT/tensorboard``; needs the
    ``tensorboard`` package)."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise InputError(f"invalid {type(self).__name__}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid value, in words (empty when the config is valid).

        A subclass extends the list (``[*super().problems(), ...]``), so that one
        error names every bad field at once.
        """
        return [
            *positive_int_problems(self, "epochs", "batch_size", "buffer_chunks"),
            *nonnegative_int_problems(self, "seed"),
            *positive_problems(self, "lr"),
            *nonnegative_problems(self, "min_lr", "weight_decay", "grad_clip"),
            *optional_positive_int_problems(self, "max_steps_per_epoch", "checkpoint_every"),
        ]

    # -- conversions -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), for checkpoints and logs."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Rebuild a config; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field that has a default, with it (what a config missing it means)."""
        return {
            f.name: f.default
            for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the config as a JSON object (a run's ``config.json``) to a path or URL.

        Examples
        --------
        >>> from xchm.pretraining import PretrainConfig
        >>> PretrainConfig(epochs=2).save("ssl.json")  # doctest: +SKIP
        >>> PretrainConfig.load("ssl.json").epochs  # doctest: +SKIP
        2
        """
        from xchm.storage import location

        location(path).write_bytes((json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read a config written by :meth:`save` (or any JSON object of its fields).

        Raises
        ------
        PathNotFoundError
            No such file.
        InputError
            Not a JSON object, unknown fields or invalid values.
        """
        return cls.from_dict(cls.read_fields(path))

    @classmethod
    def read_fields(
        cls, path: str | os.PathLike[str], *, name: str | None = None
    ) -> dict[str, Any]:
        """Read a JSON object of this config's fields, unchecked (``xchm train --config``).

        ``path`` is a local file or a URL; ``name`` is how messages call it (default: the
        path or URL as given).

        Raises
        ------
        PathNotFoundError
            No such file.
        InputError
            Not a text file, not valid JSON, or not a JSON object.
        """
        name = name or str(path)
        kind, example = cls.__name__, 'such as {"epochs": 10, "lr": 0.001}'
        from xchm.storage import location

        source = location(path)
        if not (source.path.is_file() if source.is_local else source.exists()):
            raise PathNotFoundError(f"{name}: no such file; give a JSON file of {kind} fields")
        try:
            data = json.loads(source.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(
                f"{name} is not a text file; give a JSON object of {kind} fields {example}"
            ) from None
        except json.JSONDecodeError as err:
            raise InputError(
                f"{name} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                f"give a JSON object of {kind} fields {example}"
            ) from None
        if not isinstance(data, dict):
            raise InputError(
                f"{name} holds a JSON {type(data).__name__}, not an object of {kind} fields "
                f"{example}"
            )
        return data
