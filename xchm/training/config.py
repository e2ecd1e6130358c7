"""TrainConfig: every setting of a training run, frozen and serialisable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xchm.errors import InputError
from xchm.runs.config import (
    RunConfig,
    nonnegative_int_problems,
    nonnegative_problems,
    positive_int_problems,
    positive_problems,
)

__all__ = ["TrainConfig", "LOSSES", "POLICIES", "SCHEDULERS"]

LOSSES = ("asymmetric_mse", "mse", "l1", "huber")
#: frozen: decoder only (the reference); last_blocks: the last ``unfreeze_blocks``
#: blocks too; full: the whole backbone; progressive: one more block every
#: ``unfreeze_every`` epochs, from the top.
POLICIES = ("frozen", "last_blocks", "full", "progressive")
SCHEDULERS = ("plateau", "cosine")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunConfig):
    """Settings of :func:`xchm.train`; defaults are the reference's.

    The fields every run has (``seed``, ``max_steps_per_epoch``, ``checkpoint_every``,
    ``mixed_precision``, ``tensorboard``, ...) are :class:`~xchm.runs.config.RunConfig`'s.

    Examples
    --------
    >>> cfg = TrainConfig(epochs=5, policy="full", ft_rate=0.1)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True

    A named recipe (:mod:`xchm.training.recipes`) with one field changed:

    >>> TrainConfig.recipe("from-scratch", epochs=10).lr
    0.01
    """

    epochs: int = 100
    """Maximum number of epochs."""
    batch_size: int = 64
    """Chips per optimisation step (per process under DDP)."""
    lr: float = 5e-5
    """Learning rate of the decoder (AdamW)."""
    weight_decay: float = 1e-3
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient norm clip (0 disables)."""
    min_lr: float = 1e-6
    """Lowest decoder learning rate of the plateau scheduler."""
    buffer_chunks: int = 8
    """Zarr chunks mixed in the shuffle buffer (per DataLoader worker)."""
    patience: int = 10
    """Stop after this many epochs without a better validation loss (0: never stop early)."""
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
    warmup_epochs: int = 1
    """Linear warm-up epochs of the cosine scheduler."""
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
    num_workers: int = 2
    """DataLoader worker processes per training process."""

    @classmethod
    def recipe(cls, name: str, **overrides: Any) -> TrainConfig:
        """Return the config of the recipe ``name``, with ``overrides`` on top.

        Parameters
        ----------
        name
            ``"reference"`` (the defaults: a pretrained ViT on a large cube),
            ``"small-data"`` (a pretrained backbone on a small cube) or
            ``"from-scratch"`` (a random backbone such as ``test-tiny``); see
            :mod:`xchm.training.recipes` and docs/training.md.
        **overrides
            TrainConfig fields that replace the recipe's (``epochs=10``...).

        Raises
        ------
        InputError
            An unknown recipe (the message lists them), unknown fields or invalid values.

        Examples
        --------
        >>> cfg = TrainConfig.recipe("small-data", epochs=5)
        >>> cfg.policy, cfg.loss, cfg.epochs
        ('last_blocks', 'mse', 5)
        """
        from xchm.training.recipes import RECIPE_HELP, RECIPES

        if name not in RECIPES:
            known = "; ".join(f"{k!r}: {v}" for k, v in RECIPE_HELP.items())
            raise InputError(f"unknown training recipe {name!r}; choose one of {known}")
        return cls.from_dict({**RECIPES[name], **overrides})

    def problems(self) -> list[str]:
        """Every invalid value, in words (the shared fields' first)."""
        problems = [
            *super().problems(),
            *positive_int_problems(self, "unfreeze_blocks", "unfreeze_every"),
            *nonnegative_int_problems(
                self, "patience", "plateau_patience", "warmup_epochs", "num_workers"
            ),
            *positive_problems(self, "plateau_factor", "underestimation_penalty", "huber_delta"),
            *nonnegative_problems(self, "ft_rate"),
        ]
        for name, choices in (("policy", POLICIES), ("loss", LOSSES), ("scheduler", SCHEDULERS)):
            if getattr(self, name) not in choices:
                problems.append(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        p = self.output_bias_percentile
        if p is not None and not 0 <= p <= 100:
            problems.append(f"output_bias_percentile must be in [0, 100] or None, got {p!r}")
        return problems
