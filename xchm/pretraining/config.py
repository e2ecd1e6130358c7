"""PretrainConfig: every setting of a self-supervised (DINO) pretraining run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from xchm.errors import InputError

__all__ = ["PretrainConfig"]


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """Settings of :func:`xchm.pretrain` (DINO self-distillation with iBOT and KoLeo).

    Defaults follow DINO/DINOv2 scaled to 64 x 64 px chips; radiometric jitter
    acts on normalised values (z-scores of the cube's statistics).

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
    mixed_precision: bool = True
    """bf16 autocast on CUDA (ignored on the CPU)."""
    max_steps_per_epoch: int | None = None
    """Cap on optimisation steps per epoch (bounded runs, tests)."""
    checkpoint_every: int | None = None
    """Also save the state every this many steps; it is always saved after each epoch."""
    seed: int = 0
    """Seed of the head, data order and augmentation."""

    def __post_init__(self) -> None:
        problems = []
        positive = ("epochs", "batch_size", "out_dim", "head_hidden", "head_bottleneck")
        for name in (*positive, "head_layers", "local_size", "buffer_chunks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("local_crops", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("lr", "student_temp", "teacher_temp", "teacher_temp_warmup"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)!r}")
        nonneg = (
            *("min_lr", "warmup_epochs", "weight_decay", "grad_clip", "koleo_weight"),
            *("ibot_weight", "backbone_lr_scale", "teacher_temp_warmup_epochs"),
            "freeze_prototypes_epochs",
            *("gain_std", "offset_std", "noise_std"),
        )
        if self.weight_decay_end is not None and not self.weight_decay_end >= 0:
            problems.append(f"weight_decay_end must be >= 0, got {self.weight_decay_end!r}")
        for name in nonneg:
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.layer_decay <= 1:
            problems.append(f"layer_decay must be in (0, 1], got {self.layer_decay!r}")
        for name in ("momentum_start", "momentum_end", "center_momentum", "mask_probability"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in (
            "global_scale_min",
            "local_scale_min",
            "local_scale_max",
            "mask_ratio_min",
            "mask_ratio_max",
        ):
            if not 0 < getattr(self, name) <= 1:
                problems.append(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        if not self.local_scale_min <= self.local_scale_max:
            problems.append(
                f"local_scale_min ({self.local_scale_min!r}) must be <= local_scale_max "
                f"({self.local_scale_max!r})"
            )
        if not self.mask_ratio_min <= self.mask_ratio_max:
            problems.append(
                f"mask_ratio_min ({self.mask_ratio_min!r}) must be <= mask_ratio_max "
                f"({self.mask_ratio_max!r})"
            )
        for name in ("max_steps_per_epoch", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                problems.append(f"{name} must be a positive integer or None, got {value!r}")
        if problems:
            raise InputError("invalid PretrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), for checkpoints and logs."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        """Rebuild a config; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown PretrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)
