"""Batch tensors of a :class:`~xchm.training.data.ChipStream`: dtype, memory, transport.

A DataLoader worker hands a tensor to the main process through shared memory. A
fresh shared-memory tensor per batch (what ``default_collate`` does) costs about as
much as decoding the chips on a small VM: the kernel allocates, zeroes and faults in
new pages for every batch (measured ~40-100 µs per 64 x 64 chip, against ~7 µs for
reused ordinary memory; benchmarks/RESULTS.md). So :func:`~xchm.training.data.make_loader`
lets each worker write its batches into a ring of shared tensors allocated once
(:class:`BatchRing`), and the main process copies every batch out of the ring into
ordinary memory (or the pinned copy ``pin_memory`` makes anyway) before asking for
the next one (:class:`OwningLoader`).

Why a slot is never overwritten while the main process still reads it: a
``DataLoader`` keeps at most ``prefetch_factor x num_workers`` tasks outstanding and
gives a worker its next task only after the main process took a batch, and the
main process finishes copying each batch before it takes the next. So when a
worker writes its batch ``n``, at most ``prefetch_factor x num_workers`` of its
earlier batches are not yet copied, all newer than ``n - slots`` with ``slots =
prefetch_factor x num_workers + 1``. A stream used with a plain ``DataLoader``
gets a fresh shared tensor per batch (safe, slower).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from xchm.errors import InputError

__all__ = ["BatchRing", "OwningLoader", "RingStream", "batch_dtype", "new_batch"]

Batch = tuple[torch.Tensor, torch.Tensor]
#: Tensors to write a batch into: ``(image, height)``, the height None for images only.
Slot = tuple[torch.Tensor, torch.Tensor | None]

_COMPACT = {"u1": "u1", "i1": "i1", "i2": "i2", "u2": "i4", "i4": "i4", "u4": "i8", "i8": "i8"}


def batch_dtype(dtype: Any, image_dtype: Any = None) -> np.dtype:
    """Return the dtype images of a stored dtype are yielded in.

    Default: the smallest dtype torch supports fully (uint8, int8, int16 kept; uint16
    -> int32; uint32 -> int64; floats -> float32). ``image_dtype`` overrides it:
    ``"native"`` keeps the stored dtype (uint16 images as ``torch.uint16``, half the
    bytes of int32; torch has basic ops only for it: copies, conversions,
    comparisons), or name a dtype the stored one casts to safely.

    Examples
    --------
    >>> batch_dtype("uint16"), batch_dtype("uint8"), batch_dtype("float64")
    (dtype('int32'), dtype('uint8'), dtype('float32'))
    >>> batch_dtype("uint16", "native"), batch_dtype("uint16", "float32")
    (dtype('uint16'), dtype('float32'))
    """
    dtype = np.dtype(dtype)
    if image_dtype is not None:
        out = dtype if image_dtype == "native" else np.dtype(image_dtype)
        if not np.can_cast(dtype, out, "safe") and not dtype.kind == out.kind == "f":
            raise InputError(
                f"image_dtype {out} cannot hold the cube's {dtype} images; use None, "
                "'native' or a wider dtype"
            )
        try:
            torch.from_numpy(np.empty(0, dtype=out))
        except TypeError as e:
            raise InputError(f"torch has no tensors of image_dtype {out}") from e
        return out
    if dtype.kind == "f":
        return np.dtype(np.float32)
    code = f"{dtype.kind}{dtype.itemsize}"
    if code not in _COMPACT:
        raise InputError(f"image dtype {dtype} is not supported; expected integers or floats")
    return np.dtype(_COMPACT[code])


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _empty(shape: tuple[int, ...], dtype: np.dtype, shared: bool) -> torch.Tensor:
    """Return an uninitialised tensor, in (new) shared memory if ``shared``."""
    if not shared:
        return torch.empty(shape, dtype=_torch_dtype(dtype))
    nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
    storage = torch.UntypedStorage._new_shared(nbytes)
    strides = [int(np.prod(shape[i + 1 :])) for i in range(len(shape))]  # C order
    return torch.empty(0, dtype=_torch_dtype(dtype)).set_(storage, 0, shape, strides)


def new_batch(
    n: int, chip_shape: tuple[int, ...], dtype: np.dtype, shared: bool, heights: bool = True
) -> Slot:
    """Return new ``(image, height)`` tensors for ``n`` chips (float32 heights; None without).

    Examples
    --------
    >>> image, height = new_batch(2, (3, 4, 4), np.dtype("int32"), shared=False)
    >>> tuple(image.shape), height.dtype
    ((2, 3, 4, 4), torch.float32)
    """
    image = _empty((n, *chip_shape), dtype, shared)
    if not heights:
        return image, None
    return image, _empty((n, *chip_shape[1:]), np.dtype(np.float32), shared)


class BatchRing:
    """A worker's ring of shared batch tensors, allocated on first use and then reused.

    Examples
    --------
    >>> ring = BatchRing(2, 4, (3, 8, 8), np.dtype("uint8"))
    >>> a, _ = ring(4)
    >>> b, _ = ring(3)
    >>> c, _ = ring(4)
    >>> c.data_ptr() == a.data_ptr(), tuple(b.shape)
    (True, (3, 3, 8, 8))
    """

    def __init__(
        self,
        slots: int,
        batch_size: int,
        chip_shape: tuple[int, ...],
        dtype: np.dtype,
        heights: bool = True,
    ):
        self.slots, self.batch_size, self.chip_shape, self.dtype = (
            slots,
            batch_size,
            chip_shape,
            dtype,
        )
        self.heights = heights
        self._ring: list[Slot] = []
        self._count = 0

    def __call__(self, n: int) -> Slot:
        """Return the next slot's tensors, cut to ``n`` chips."""
        i = self._count % self.slots
        self._count += 1
        if i == len(self._ring):
            self._ring.append(
                new_batch(self.batch_size, self.chip_shape, self.dtype, True, self.heights)
            )
        image, height = self._ring[i]
        return image[:n], None if height is None else height[:n]


class RingStream(IterableDataset[Any]):
    """What :func:`~xchm.training.data.make_loader` gives its workers: the stream, ring mode.

    Workers write images in ``wire`` dtype (the stored one where it is narrower, e.g.
    uint16 rather than int32: half the bytes to write and send) and the main process
    widens them to the stream's ``batch_dtype`` in the copy it makes anyway.
    """

    def __init__(self, stream: Any, slots: int, wire: np.dtype):
        self.stream, self.slots, self.wire = stream, slots, wire
        self.dtype = _torch_dtype(stream.batch_dtype)

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self) -> Iterator[Any]:
        return self.stream._iterate(ring_slots=self.slots, wire=self.wire)


class OwningLoader(DataLoader[Any]):
    """A ``DataLoader`` that copies each batch out of the workers' rings as it arrives.

    A batch is ``(image, height)``, or the image tensor alone (a stream without labels).
    """

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        if self.num_workers > 0:  # no open store session may be copied into the workers
            stream = getattr(self.dataset, "stream", self.dataset)
            release = getattr(stream, "_release_sessions", None)
            if release is not None:
                release()
        batches = super().__iter__()
        if not isinstance(self.dataset, RingStream):
            return batches
        keep = self.dataset.slots * max(self.num_workers, 1)
        return self._owned(batches, keep, self.pin_memory, self.dataset.dtype)

    @staticmethod
    def _owned(batches: Iterator[Any], keep: int, pin: bool, dtype: torch.dtype) -> Iterator[Any]:
        recent: deque[Any] = deque(maxlen=keep)  # keeps ring storages mapped: torch reuses
        for batch in batches:  # the mapping of a storage it still holds
            recent.append(batch)
            image, height = (batch, None) if isinstance(batch, torch.Tensor) else batch
            if not (pin and image.is_pinned() and image.dtype == dtype):  # else pin copied it
                image = _copy(image, dtype)
                height = None if height is None else _copy(height, height.dtype)
            yield image if height is None else (image, height)


def _copy(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Copy a CPU tensor into a new one of ``dtype`` with NumPy.

    One thread: ``clone`` wakes torch's OpenMP threads, which spin next to the
    DataLoader workers (~40 µs per chip on 2 cores).
    """
    out = torch.empty(tensor.shape, dtype=dtype)
    np.copyto(out.numpy(), tensor.numpy())
    return out
