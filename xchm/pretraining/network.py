"""Student/teacher network of DINO pretraining: the ViT, its heads and patch masking.

``SelfDistillationNet`` wraps a timm DINOv3 backbone with a DINO head on the CLS
token and, for the iBOT loss, a second head on patch tokens and a learnable mask
token. Masked patches are replaced after the patch embedding by a forward hook on
``backbone.patch_embed``: timm's ``Eva.forward_features`` has no mask argument,
and the hook keeps the backbone's own forward (and its state-dict keys) unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from xchm.pretraining.config import PretrainConfig
from xchm.pretraining.heads import DINOHead

__all__ = ["SelfDistillationNet", "block_masks"]


class SelfDistillationNet(nn.Module):
    """Backbone + DINO head (CLS) + iBOT head (patches) + mask token.

    Parameters
    ----------
    backbone
        A timm DINOv3 ViT (``forward_features`` gives CLS, registers, patches).
    config
        Head widths and whether the iBOT parts exist (``ibot_weight > 0``).

    Examples
    --------
    >>> import xchm
    >>> net = SelfDistillationNet(xchm.load_model("test-tiny").backbone,
    ...                           PretrainConfig(out_dim=32, head_hidden=16, head_bottleneck=8))
    >>> out = net(torch.zeros(2, 3, 64, 64), torch.zeros(2, 16, dtype=torch.bool))
    >>> out["cls"].shape, out["patch"].shape
    (torch.Size([2, 32]), torch.Size([2, 16, 32]))
    """

    def __init__(self, backbone: Any, config: PretrainConfig) -> None:
        super().__init__()
        dim = int(backbone.embed_dim)
        widths = {
            "hidden": config.head_hidden,
            "bottleneck": config.head_bottleneck,
            "layers": config.head_layers,
        }
        self.backbone: Any = backbone
        self.head = DINOHead(dim, config.out_dim, **widths)
        self.patch_head = DINOHead(dim, config.out_dim, **widths) if config.ibot_weight else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if config.ibot_weight else None
        self.prefix = int(backbone.num_prefix_tokens)
        self._mask: torch.Tensor | None = None
        backbone.patch_embed.register_forward_hook(self._apply_mask)

    def _apply_mask(self, module: Any, inputs: Any, tokens: torch.Tensor) -> torch.Tensor | None:
        mask, token = self._mask, self.mask_token
        if mask is None or token is None:
            return None  # keep the output
        return torch.where(mask[..., None], token.to(tokens.dtype), tokens)

    def features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """All output tokens ``(B, prefix + patches, dim)``, with ``mask`` patches hidden."""
        self._mask = mask
        try:
            return self.backbone.forward_features(x)
        finally:
            self._mask = None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Head outputs of views ``x`` (masked by ``mask``) and unmasked ``extra`` views.

        Returns
        -------
        dict
            ``cls``: prototype logits of ``x`` then ``extra`` views; ``features``: the
            backbone CLS features of ``x``; ``patch`` (with an iBOT head): patch logits
            ``(B, patches, out_dim)`` of ``x``. One call per step, as DDP wants.
        """
        tokens = self.features(x, mask)
        cls = tokens[:, 0]
        logits = [self.head(cls)]
        if extra is not None:
            logits.append(self.head(self.features(extra)[:, 0]))
        out = {"cls": torch.cat(logits), "features": cls}
        if self.patch_head is not None:
            out["patch"] = self.patch_head(tokens[:, self.prefix :])
        return out

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Return the layers of layer-wise lr decay: DINOv2/DINOv3's map, in timm's form.

        timm's ``param_groups_layer_decay`` reads it (a model's ``group_matcher``):
        the embeddings and tokens are layer 0, block ``i`` is layer ``i + 1``, and
        every parameter matched by neither (the final norm, the heads, the mask
        token) is the top layer, at the full rate. It is the map of DINOv2's and
        DINOv3's ``get_vit_lr_decay_rate``. timm's own map for its ViTs puts the final
        norm in the last block's layer instead, one step lower than DINO did for
        every layer: the rates would change for runs with ``layer_decay < 1``.
        ``coarse`` (timm's option to group blocks in stages) does not apply.
        """
        return {
            "embed": r"^backbone\.(?:cls_token|reg_token|pos_embed|patch_embed|norm_pre)",
            "blocks": r"^backbone\.blocks\.(\d+)\.",
        }


def block_masks(
    n: int,
    grid: tuple[int, int],
    config: PretrainConfig,
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """Draw iBOT block masks ``(n, rows * cols)``: random rectangles on a share of the views.

    A view is masked with probability ``mask_probability``; then rectangles (aspect
    0.3..3.3) are added until ``mask_ratio_min..max`` of its patches (drawn per view)
    are hidden. At least one patch is always left visible.

    Examples
    --------
    >>> cfg = PretrainConfig(mask_probability=1.0, mask_ratio_min=0.5, mask_ratio_max=0.5)
    >>> m = block_masks(3, (4, 4), cfg, generator=torch.Generator().manual_seed(0))
    >>> m.shape, bool((m.sum(1) >= 8).all())
    (torch.Size([3, 16]), True)
    """
    rows, cols = grid
    patches = rows * cols
    masks = torch.zeros(n, rows, cols, dtype=torch.bool)
    draws = torch.rand(n, 2, generator=generator, dtype=torch.float64).tolist()
    for i, (p, r) in enumerate(draws):
        if p >= config.mask_probability:
            continue
        ratio = config.mask_ratio_min + (config.mask_ratio_max - config.mask_ratio_min) * r
        target = min(max(1, round(ratio * patches)), patches - 1)
        for _ in range(10 * patches):  # bounded: small grids fill in a few tries
            if int(masks[i].sum()) >= target:
                break
            left = target - int(masks[i].sum())
            area, aspect = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
            area = 1 + area * (left - 1)
            aspect = math.exp(math.log(0.3) + aspect * (math.log(3.3) - math.log(0.3)))
            h = min(rows, max(1, round(math.sqrt(area * aspect))))
            w = min(cols, max(1, round(math.sqrt(area / aspect))))
            top = int(torch.randint(0, rows - h + 1, (1,), generator=generator))
            lft = int(torch.randint(0, cols - w + 1, (1,), generator=generator))
            masks[i, top : top + h, lft : lft + w] = True
        flat = masks[i].view(-1)
        if int(flat.sum()) == patches:  # keep one patch visible
            flat[int(torch.randint(0, patches, (1,), generator=generator))] = False
    return masks.view(n, patches)
