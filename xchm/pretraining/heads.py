"""DINO projection head, self-distillation loss (centring, sharpening) and KoLeo."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DINOHead",
    "DINOLoss",
    "IBOTLoss",
    "koleo_loss",
    "teacher_temperature",
    "cosine_schedule",
]


class DINOHead(nn.Module):
    """MLP -> L2-normalised bottleneck -> weight-normalised prototypes (DINO's head).

    The prototype layer is ``weight_norm`` with the norm fixed to 1 (DINO's
    ``weight_g = 1``): its rows are normalised in every forward pass.

    Parameters
    ----------
    in_dim
        Backbone width.
    out_dim
        Number of prototypes.
    hidden, bottleneck, layers
        MLP widths and number of linear layers (>= 1).

    Examples
    --------
    >>> head = DINOHead(64, 128, hidden=32, bottleneck=16)
    >>> head(torch.zeros(5, 64)).shape
    torch.Size([5, 128])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        hidden: int = 1024,
        bottleneck: int = 256,
        layers: int = 3,
    ) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        dims = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        for i in range(layers):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                mods.append(nn.GELU())
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prototype logits ``(B, out_dim)`` of features ``(B, in_dim)``."""
        z = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return F.linear(z, F.normalize(self.prototypes, dim=-1, eps=1e-6))


class _CenteredLoss(nn.Module):
    """A loss with an EMA centre of the teacher logits (subtracted before sharpening)."""

    def __init__(
        self, out_dim: int, *, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """Move the centre towards the mean teacher logits of the batch (all processes)."""
        import torch.distributed as dist

        rows = teacher.float().reshape(-1, teacher.shape[-1])
        center: torch.Tensor = self.center  # type: ignore[assignment]
        total = torch.cat([rows.sum(dim=0), rows.new_tensor([rows.shape[0]])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        batch = (total[:-1] / total[-1]).view_as(center)
        center.mul_(self.center_momentum).add_(batch, alpha=1 - self.center_momentum)


class DINOLoss(_CenteredLoss):
    """Cross-entropy between centred, sharpened teacher and student distributions.

    Every student view is matched with every teacher (global) view of the same
    chip except itself. The centre is an EMA (``center_momentum``) of the teacher
    logits' batch mean, updated by :meth:`update_center` after each step.

    Examples
    --------
    >>> loss = DINOLoss(8)
    >>> s, t = torch.randn(4 * 3, 8), torch.randn(4 * 2, 8)  # 3 student, 2 teacher views
    >>> float(loss(s, t, n_views=3, teacher_temp=0.04)) > 0
    True
    """

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, *, n_views: int, teacher_temp: float
    ) -> torch.Tensor:
        """Mean loss over view pairs; ``student`` holds ``n_views`` views, the first 2 global.

        Both are stacked view by view (``(views * B, out_dim)``).
        """
        center: torch.Tensor = self.center  # type: ignore[assignment]
        t = F.softmax((teacher.float() - center) / teacher_temp, dim=-1).chunk(2)
        s = F.log_softmax(student.float() / self.student_temp, dim=-1).chunk(n_views)
        total, pairs = student.new_zeros((), dtype=torch.float32), 0
        for i, ti in enumerate(t):
            for v, sv in enumerate(s):
                if v == i:
                    continue
                total = total + torch.sum(-ti * sv, dim=-1).mean()
                pairs += 1
        return total / pairs


class IBOTLoss(_CenteredLoss):
    """iBOT masked-patch loss: the student's masked patches predict the teacher's.

    Cross-entropy between the centred, sharpened teacher distribution of each
    patch (the teacher sees the unmasked view) and the student's, averaged over
    the masked patches of each view and then over views with any mask (iBOT /
    DINOv2). The centre is a separate EMA of the teacher patch logits.

    Examples
    --------
    >>> loss = IBOTLoss(8)
    >>> s, t = torch.randn(2, 16, 8), torch.randn(2, 16, 8)
    >>> mask = torch.zeros(2, 16, dtype=torch.bool); mask[0, :4] = True
    >>> float(loss(s, t, mask, teacher_temp=0.04)) > 0
    True
    """

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        mask: torch.Tensor,
        *,
        teacher_temp: float,
    ) -> torch.Tensor:
        """Loss of patch logits ``(B, patches, out_dim)`` at ``mask`` ``(B, patches)``."""
        center: torch.Tensor = self.center  # type: ignore[assignment]
        t = F.softmax((teacher.float() - center) / teacher_temp, dim=-1)
        s = F.log_softmax(student.float() / self.student_temp, dim=-1)
        per_patch = torch.sum(-t * s, dim=-1)  # (B, patches)
        weights = mask.float()
        counts = weights.sum(dim=1)
        per_view = (per_patch * weights).sum(dim=1) / counts.clamp(min=1)
        masked_views = (counts > 0).float()
        # Zero (with a graph) when no view is masked, so every parameter gets a gradient.
        return (per_view * masked_views).sum() / masked_views.sum().clamp(min=1)


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko regulariser: ``-mean(log(nearest-neighbour distance))``.

    Spreads the (L2-normalised) features of a batch uniformly (DINOv2).

    Examples
    --------
    >>> float(koleo_loss(torch.eye(4))) < 0
    True
    """
    z = F.normalize(features.float(), dim=-1, eps=eps)
    dots = z @ z.T
    dots.fill_diagonal_(-2.0)
    nearest = dots.argmax(dim=1)
    dist = torch.linalg.vector_norm(z - z[nearest], dim=-1)
    return -torch.log(dist + eps).mean()


def cosine_schedule(start: float, end: float, step: int, total: int) -> float:
    """Cosine from ``start`` (step 0) to ``end`` (step ``total``).

    Examples
    --------
    >>> cosine_schedule(0.996, 1.0, 0, 10), cosine_schedule(0.996, 1.0, 10, 10)
    (0.996, 1.0)
    """
    t = min(max(step / max(total, 1), 0.0), 1.0)
    return end - (end - start) * (1 + math.cos(math.pi * t)) / 2


def teacher_temperature(start: float, end: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up of the teacher temperature from ``start`` to ``end``, then constant.

    Examples
    --------
    >>> round(teacher_temperature(0.04, 0.07, 5, 10), 6)
    0.055
    """
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
