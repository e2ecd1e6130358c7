"""Self-supervised (DINO) pretraining of the backbone on unlabeled chips.

:func:`pretrain` continues DINO/iBOT self-distillation of a DINOv3 backbone on a
chip cube's images (:class:`PretrainConfig` holds every setting); its output
``backbone/`` is an xchm checkpoint that ``xchm.train(..., weights=...)`` takes.
Parts: multi-crop views (:mod:`.augment`), heads and losses (:mod:`.heads`), the
student/teacher network and iBOT masks (:mod:`.network`) and the loop
(:mod:`.trainer`). The chips come from :class:`xchm.training.data.ChipStream` (images
only); the run directory, resume, checkpoints and logs from :mod:`xchm.runs`.

Layering: pretraining may import :mod:`xchm.training` (the chip stream),
:mod:`xchm.runs`, :mod:`xchm.models`, :mod:`xchm.inference`, :mod:`xchm.chips` and the
leaf utilities; never evaluation, stac or the command line.
"""

from xchm.pretraining.config import PretrainConfig
from xchm.pretraining.trainer import PretrainResult, pretrain

__all__ = ["PretrainConfig", "PretrainResult", "pretrain"]
