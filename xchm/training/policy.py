"""Fine-tuning policies: which backbone parameters train, and at what learning rate.

The optimizer always holds two groups, the decoder at ``lr`` and the whole backbone
at ``lr * ft_rate``; a policy only switches ``requires_grad``. Frozen parameters get
no gradient, so AdamW leaves them (and their weight decay) alone, and the
optimizer's structure never changes: progressive unfreezing and resuming need no
rebuilt optimizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xchm.models.network import CanopyHeightModel
    from xchm.training.config import TrainConfig

__all__ = ["apply_policy", "param_groups", "trainable_block_count"]


def trainable_block_count(config: TrainConfig, epoch: int, depth: int) -> int:
    """How many of the last backbone blocks train in ``epoch`` (``depth`` = all of them).

    Examples
    --------
    >>> from xchm.training import TrainConfig
    >>> cfg = TrainConfig(policy="progressive", unfreeze_every=2)
    >>> [trainable_block_count(cfg, e, 4) for e in range(0, 12, 2)]
    [0, 1, 2, 3, 4, 4]
    """
    if config.ft_rate == 0 or config.policy == "frozen":
        return 0
    if config.policy == "full":
        return depth
    if config.policy == "last_blocks":
        return min(config.unfreeze_blocks, depth)
    return min(epoch // config.unfreeze_every, depth)


def apply_policy(model: CanopyHeightModel, config: TrainConfig, epoch: int) -> list[str]:
    """Set ``requires_grad`` of the backbone for ``epoch``; return the trainable names.

    ``full`` trains every backbone parameter (patch embedding and tokens included);
    the partial policies train the last blocks and the final norm. A backbone with
    nothing to train stays frozen in eval mode.
    """
    backbone = model.backbone
    depth = len(backbone.blocks)
    k = trainable_block_count(config, epoch, depth)
    model.freeze_backbone(k == 0)
    if 0 < k and (config.policy != "full"):
        first = depth - k
        for name, p in backbone.named_parameters():
            top_block = name.startswith("blocks.") and int(name.split(".")[1]) >= first
            p.requires_grad_(top_block or name.startswith("norm."))
    return [n for n, p in backbone.named_parameters() if p.requires_grad]


def param_groups(model: CanopyHeightModel, config: TrainConfig) -> list[dict[str, Any]]:
    """Return the optimizer's groups: decoder at ``lr``, backbone at ``lr * ft_rate``."""
    return [
        {"params": list(model.decoder.parameters()), "lr": config.lr, "name": "decoder"},
        {
            "params": list(model.backbone.parameters()),
            "lr": config.lr * config.ft_rate,
            "name": "backbone",
        },
    ]
