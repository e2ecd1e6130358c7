"""TrainConfig: every setting of a training run, frozen and serialisable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from xchm.errors import InputError

__all__ = ["TrainConfig", "LOSSES", "POLICIES", "SCHEDULERS"]

LOSSES = ("asymmetric_mse", "mse", "l1", "huber")
#: frozen: decoder only (the reference); last_blocks: the last ``unfreeze_blocks``
#: blocks too; full: the whole backbone; progressive: one more block every
#: ``unfreeze_every`` epochs, from the top.
POLICIES = ("frozen", "last_blocks", "full", "progressive")
SCHEDULERS = ("plateau", "cosine")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings of :func:`xchm.train`; defaults are the reference's.

    Examples
    --------
    >>> cfg = TrainConfig(epochs=5, policy="full", ft_rate=0.1)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    epochs: int = 100
    """Maximum number of epochs."""
    patience: int = 10
    """Stop after this many epochs without a better validation loss (0: never stop early)."""
    batch_size: int = 64
    """Chips per optimisation step (per process under DDP)."""
    lr: float = 5e-5
    """Learning rate of the decoder (AdamW)."""
    weight_decay: float = 1e-3
    """AdamW weight decay."""
    ft_rate: float = 0.1
    """Backbone learning rate / decoder learning rate for trainable backbone blocks
    (FT-rate; 0 keeps the backbone frozen whatever the policy)."""
    policy: str = "frozen"
    """Fine-tuning policy, one of ``POLICIES``."""
    unfreeze_blocks: int = 1
    """Blocks trained by ``policy="last_blocks"``."""
    unfreeze_every: int = 3
    """Epochs between two unfrozen blocks with ``policy="progressive"``."""
    scheduler: str = "plateau"
    """``plateau`` (ReduceLROnPlateau on the validation loss) or ``cosine`` (warm-up
    then cosine decay over ``epochs``)."""
    plateau_patience: int = 3
    """ReduceLROnPlateau patience (epochs)."""
    plateau_factor: float = 0.5
    """ReduceLROnPlateau factor."""
    min_lr: float = 1e-6
    """Lowest decoder learning rate of the plateau scheduler."""
    warmup_epochs: int = 1
    """Linear warm-up epochs of the cosine scheduler."""
    grad_clip: float = 1.0
    """Gradient norm clip (0 disables)."""
    loss: str = "asymmetric_mse"
    """One of ``LOSSES``."""
    underestimation_penalty: float = 3.0
    """Weight of squared errors where the prediction is below the label
    (``asymmetric_mse``)."""
    huber_delta: float = 1.0
    """Huber transition in metres (``huber``)."""
    output_bias_percentile: float | None = 90.0
    """Initialise the output bias to this percentile of the training heights
    (None keeps the model's)."""
    augment: bool = True
    """Random flips and 90-degree rotations of training chips."""
    mixed_precision: bool = True
    """bf16 autocast on CUDA (ignored on the CPU)."""
    num_workers: int = 2
    """DataLoader worker processes per training process."""
    buffer_chunks: int = 8
    """Zarr chunks mixed in the shuffle buffer."""
    max_steps_per_epoch: int | None = None
    """Cap on optimisation steps per epoch (bounded runs, demos, tests)."""
    checkpoint_every: int | None = None
    """Also save the training state every this many steps (long epochs); the state
    is always saved at the end of each epoch."""
    seed: int = 0
    """Seed of the model head, data order, augmentation and dropout."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the ``tensorboard`` package)."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("epochs", "batch_size", "unfreeze_blocks", "unfreeze_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("patience", "plateau_patience", "warmup_epochs", "num_workers", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("lr", "plateau_factor", "underestimation_penalty", "huber_delta"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "ft_rate", "grad_clip", "min_lr"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name, choices in (("policy", POLICIES), ("loss", LOSSES), ("scheduler", SCHEDULERS)):
            if getattr(self, name) not in choices:
                problems.append(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        p = self.output_bias_percentile
        if p is not None and not 0 <= p <= 100:
            problems.append(f"output_bias_percentile must be in [0, 100] or None, got {p!r}")
        for name in ("max_steps_per_epoch", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                problems.append(f"{name} must be a positive integer or None, got {value!r}")
        if problems:
            raise InputError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), for checkpoints and logs."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild a config; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)
