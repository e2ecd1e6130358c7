"""PretrainConfig: every setting of a self-supervised (DINO) pretraining run."""

from __future__ import annotations

from dataclasses import dataclass

from xchm.runs.config import (
    RunConfig,
    in_range_problems,
    nonnegative_int_problems,
    nonnegative_problems,
    positive_int_problems,
    positive_problems,
)

__all__ = ["PretrainConfig"]


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(RunConfig):
    """Settings of :func:`xchm.pretrain` (DINO self-distillation with iBOT and KoLeo).

    Defaults follow DINO/DINOv2 scaled to 64 x 64 px chips; radiometric jitter
    acts on normalised values (z-scores of the cube's statistics). The fields every
    run has (``seed``, ``max_steps_per_epoch``, ``checkpoint_every``,
    ``mixed_precision``, ``tensorboard``, ...) are :class:`~xchm.runs.config.RunConfig`'s.

    Examples
    --------
    >>> cfg = PretrainConfig(epochs=5, local_crops=2)
    >>> PretrainConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    epochs: int = 10
    """Number of epochs over the chips."""
    batch_size: int = 32
    """Chips per optimisation step (each gives 2 global + ``local_crops`` local views)."""
    lr: float = 5e-4
    """Peak learning rate of AdamW (after warm-up)."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine decay."""
    warmup_epochs: float = 1.0
    """Linear learning-rate warm-up, in epochs (may be fractional)."""
    weight_decay: float = 0.04
    """AdamW weight decay (not applied to biases, norms and tokens)."""
    weight_decay_end: float | None = None
    """Weight decay at the last step, reached by a cosine from ``weight_decay`` (DINO:
    0.04 -> 0.4); None keeps it constant."""
    freeze_prototypes_epochs: float = 0.0
    """Epochs at the start in which the heads' prototypes do not train (DINO froze
    them for the first epoch to steady the start; 0: they always train)."""
    grad_clip: float = 3.0
    """Gradient norm clip of the student (0 disables)."""
    momentum_start: float = 0.996
    """Teacher EMA momentum at the first step (cosine schedule to ``momentum_end``)."""
    momentum_end: float = 1.0
    """Teacher EMA momentum at the last step."""
    out_dim: int = 4096
    """Number of prototypes (DINO head output width)."""
    head_hidden: int = 1024
    """Hidden width of the projection MLP."""
    head_bottleneck: int = 256
    """Bottleneck width before the weight-normalised prototypes."""
    head_layers: int = 3
    """Linear layers of the projection MLP (>= 1)."""
    student_temp: float = 0.1
    """Softmax temperature of the student."""
    teacher_temp: float = 0.04
    """Teacher softmax temperature after warm-up (sharpening)."""
    teacher_temp_warmup: float = 0.04
    """Teacher temperature at the first step."""
    teacher_temp_warmup_epochs: float = 0.0
    """Epochs of linear teacher-temperature warm-up."""
    center_momentum: float = 0.9
    """EMA momentum of the teacher output centre."""
    koleo_weight: float = 0.0
    """Weight of the KoLeo regulariser on the student's global CLS features (0 off)."""
    ibot_weight: float = 1.0
    """Weight of the iBOT masked-patch loss (0 off: CLS self-distillation only)."""
    mask_probability: float = 0.5
    """Share of global crops whose patches are masked for the student (iBOT)."""
    mask_ratio_min: float = 0.1
    """Smallest share of a masked crop's patches hidden (in blocks)."""
    mask_ratio_max: float = 0.5
    """Largest share of a masked crop's patches hidden."""
    backbone_lr_scale: float = 1.0
    """Backbone learning rate / head learning rate (e.g. 0.1 to move pretrained
    DINOv3 weights gently while the new heads learn)."""
    layer_decay: float = 1.0
    """Layer-wise learning-rate decay in the backbone, in (0, 1]: block ``i`` of ``L``
    trains at ``layer_decay ** (L - i)`` times the backbone rate, the patch embedding
    and tokens at ``layer_decay ** (L + 1)``, the final norm at 1 (1: off; DINOv2 used
    0.9). Keeps the pretrained low-level features while the top adapts."""
    global_scale_min: float = 0.4
    """Smallest area fraction of the chip covered by a global crop (max 1)."""
    local_crops: int = 4
    """Local crops per chip (0: global crops only)."""
    local_size: int = 32
    """Side of a local crop in pixels (resized to the window for the backbone)."""
    local_scale_min: float = 0.1
    """Smallest area fraction of the chip covered by a local crop."""
    local_scale_max: float = 0.4
    """Largest area fraction of the chip covered by a local crop."""
    dihedral: bool = True
    """Random flips and 90-degree rotations of every crop."""
    gain_std: float = 0.1
    """Std of the per-band multiplicative gain ``1 + N(0, gain_std)`` of each crop."""
    offset_std: float = 0.1
    """Std of the per-band additive offset of each crop (normalised units)."""
    noise_std: float = 0.02
    """Std of per-pixel Gaussian noise (normalised units)."""
    split: str | None = None
    """Chips of this split label only; None uses every chip of the cube (no labels
    are read either way)."""
    buffer_chunks: int = 4
    """Zarr chunks whose chips are mixed in the shuffle (memory: that many decoded chunks)."""

    def problems(self) -> list[str]:
        """Every invalid value, in words (the shared fields' first)."""
        widths = ("out_dim", "head_hidden", "head_bottleneck", "head_layers", "local_size")
        problems = [
            *super().problems(),
            *positive_int_problems(self, *widths),
            *nonnegative_int_problems(self, "local_crops"),
            *positive_problems(self, "student_temp", "teacher_temp", "teacher_temp_warmup"),
            *nonnegative_problems(
                self,
                *("warmup_epochs", "koleo_weight", "ibot_weight", "backbone_lr_scale"),
                *("teacher_temp_warmup_epochs", "freeze_prototypes_epochs"),
                *("gain_std", "offset_std", "noise_std"),
            ),
        ]
        if self.weight_decay_end is not None:
            problems += nonnegative_problems(self, "weight_decay_end")
        problems += in_range_problems(self, "layer_decay", low=0, high=1, open_low=True)
        problems += in_range_problems(
            self,
            *("momentum_start", "momentum_end", "center_momentum", "mask_probability"),
            low=0,
            high=1,
            open_low=False,
        )
        problems += in_range_problems(
            self,
            *("global_scale_min", "local_scale_min", "local_scale_max"),
            *("mask_ratio_min", "mask_ratio_max"),
            low=0,
            high=1,
            open_low=True,
        )
        ordered = (("local_scale_min", "local_scale_max"), ("mask_ratio_min", "mask_ratio_max"))
        for low, high in ordered:
            if not getattr(self, low) <= getattr(self, high):
                problems.append(
                    f"{low} ({getattr(self, low)!r}) must be <= {high} ({getattr(self, high)!r})"
                )
        return problems
