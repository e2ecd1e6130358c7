"""Named training recipes: sets of :class:`~xchm.training.TrainConfig` fields that work together.

The defaults of ``TrainConfig`` are the reference's (a pretrained ViT-L fine-tuned on
about 500k chips). On a first, small dataset they learn next to nothing (a decoder
at 5e-5 moves little in a few hundred steps, and the asymmetric loss with the bias at
the 90th percentile overshoots), so the package names what works elsewhere:

``reference``
    The defaults: frozen backbone, lr 5e-5, asymmetric MSE, bias at the 90th
    percentile, plateau schedule. For a pretrained DINOv3 on a large cube.
``small-data``
    A pretrained backbone on a small cube (thousands of chips or fewer): a faster
    decoder (lr 1e-3, cosine), the last two blocks trained at a tenth of it, MSE, the
    bias at the median, batches of 16 (a small train split still gives steps).
``from-scratch``
    A random or barely trained backbone (``test-tiny``, a model without ``weights=``):
    everything trains at lr 1e-2 (``ft_rate`` 1), MSE, bias at the median, cosine
    over the epochs without early stopping, batches of 16.

The recipes are data only (this module imports nothing of the package):
:meth:`TrainConfig.recipe <xchm.training.TrainConfig.recipe>` builds a config from
one, and ``xchm train --recipe NAME`` uses it. ``benchmarks/train_recipes.py``
measures each against the train-mean baseline (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

__all__ = ["RECIPES", "RECIPE_HELP"]

_SMALL = {"batch_size": 16, "loss": "mse", "output_bias_percentile": 50.0, "scheduler": "cosine"}

#: Recipe name -> the TrainConfig fields it sets (the others keep their defaults).
RECIPES: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {
        "reference": MappingProxyType({}),
        "small-data": MappingProxyType(
            {
                **_SMALL,
                "epochs": 50,
                "lr": 1e-3,
                "policy": "last_blocks",
                "unfreeze_blocks": 2,
                "ft_rate": 0.1,
                "patience": 10,
            }
        ),
        "from-scratch": MappingProxyType(
            {**_SMALL, "epochs": 40, "lr": 1e-2, "policy": "full", "ft_rate": 1.0, "patience": 0}
        ),
    }
)

#: One line per recipe: when to use it (CLI help, error messages).
RECIPE_HELP: MappingProxyType[str, str] = MappingProxyType(
    {
        "reference": "the reference's defaults: a pretrained ViT on a large cube (500k chips)",
        "small-data": "a pretrained backbone on a small cube (thousands of chips or fewer)",
        "from-scratch": "a random backbone (test-tiny, a preset without weights)",
    }
)
