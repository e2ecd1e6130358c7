"""Caller-side checks of ``precision=``: a warning where bf16/fp16 would be emulated.

``precision="auto"`` picks bf16 only where the hardware computes it
(:func:`xchm.inference.runtime.autocast_dtype`); an explicit ``"bf16"`` or ``"fp16"``
is honoured everywhere, and on a CPU without the instructions oneDNN emulates it,
which is far slower than fp32 (measured ~100x for ViT-S/L on an AVX2 EPYC,
docs/predict.md "Precision"). :func:`emulation_warning` says so once per call, on the
client, before any work: never per chunk on the workers.
"""

from __future__ import annotations

import warnings
from typing import Any

from xchm.errors import XCHMWarning
from xchm.inference.runtime import check_precision, cpu_flags, native_bf16_cpu

__all__ = ["emulation_warning", "native_fp16_cpu", "native_cpu"]

#: CPU flags (Linux /proc/cpuinfo) that compute fp16 matmuls natively.
FP16_FLAGS = frozenset({"avx512_fp16", "amx_fp16"})


def native_fp16_cpu() -> bool:
    """Whether this CPU computes fp16 natively (AVX512_FP16 or AMX-FP16, /proc/cpuinfo)."""
    return bool(cpu_flags() & FP16_FLAGS)


def native_cpu(precision: str) -> bool:
    """Whether this CPU computes ``precision`` natively ("auto" and "fp32" always do)."""
    check_precision(precision)
    if precision == "bf16":
        return native_bf16_cpu()
    if precision == "fp16":
        return native_fp16_cpu()
    return True


def _runs_on_cpu(device: Any) -> bool | None:
    """Whether predict's model runs on this machine's CPU; None when it cannot be told here.

    ``device=None`` means CUDA where the *worker* has it: with a ``distributed``
    client active, the workers may be other machines, so nothing is known here.
    """
    if device is not None:
        kind = getattr(device, "type", None) or str(device).split(":", 1)[0]
        return kind == "cpu"
    try:
        from distributed import default_client

        default_client()
        return None  # a cluster's workers choose their device themselves
    except (ImportError, ValueError):
        pass
    import torch

    return not torch.cuda.is_available()


def emulation_warning(precision: str, device: Any = None, *, stacklevel: int = 3) -> bool:
    """Warn (:class:`~xchm.errors.XCHMWarning`) if ``precision`` would be emulated on the CPU.

    Call it once per ``predict`` call, on the client: with an explicit ``"bf16"`` or
    ``"fp16"`` and a model that runs on a CPU without those instructions (AVX512_BF16
    or AMX for bf16, AVX512_FP16 or AMX-FP16 for fp16), oneDNN emulates the type,
    which is far slower than fp32 and no more accurate. Python's default warning
    filter then shows it once per calling line, not once per tile of a loop.

    Parameters
    ----------
    precision
        As given to :func:`xchm.predict` (checked: InputError if unknown).
    device
        As given to :func:`xchm.predict`: a torch device or its name, or None (CUDA if
        this machine has it, else the CPU; unknown with a ``distributed`` client
        active, whose workers choose, and then no warning).
    stacklevel
        Frames up to the line to blame: 3 is the caller of the function calling this
        one (``predict``'s caller when called from ``predict``).

    Returns
    -------
    bool
        Whether it warned.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as seen:
    ...     warnings.simplefilter("always")
    ...     emulation_warning("fp32", "cpu"), emulation_warning("bf16", "cuda")
    (False, False)
    """
    check_precision(precision)
    if precision in ("auto", "fp32") or native_cpu(precision):
        return False
    if not _runs_on_cpu(device):
        return False  # CUDA (or a cluster's workers): bf16 and fp16 run natively there
    flags = "AVX512_BF16 or AMX" if precision == "bf16" else "AVX512_FP16 or AMX-FP16"
    warnings.warn(
        f"precision={precision!r} runs emulated on this CPU (no {flags} instructions): "
        "measured ~100x slower than fp32 for ViT models, and less accurate; "
        "precision='auto' (fp32 on this CPU) or 'fp32' is faster here",
        XCHMWarning,
        stacklevel=stacklevel,
    )
    return True
