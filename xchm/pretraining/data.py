"""Image-only batches of a chip cube for pretraining: chunk-shuffled, exactly resumable.

Pretraining reads only the ``image`` array of a chip cube (heights are never
touched). Random single-chip reads decode a whole Zarr chunk each, so an epoch's
order is planned on chunks: the chunks holding selected chips are shuffled
(seeded by ``seed`` and the epoch), taken ``buffer_chunks`` at a time, and the
chips of each group are shuffled together. Batch ``b`` of an epoch is
``order[b * batch_size:(b + 1) * batch_size]`` (full batches only), so a resumed
run continues at any batch with the very same chips. Under DDP, process ``rank``
of ``world_size`` takes batches ``rank, rank + world_size, ...``. Each chunk is
decoded once per epoch and dropped after its last batch; reading is in the
training process (no DataLoader workers): decoding a chunk costs far less than a
DINO step, which runs 2 + ``local_crops`` backbone passes per chip.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from xchm.chips.cube import ChipCube
from xchm.errors import InputError

__all__ = ["ImageBatches"]


class ImageBatches:
    """Shuffled raw image batches ``(B, band, W, W)`` of a cube or a selection of one.

    Parameters
    ----------
    cube
        The cube (or selection); only its ``image`` array is read.
    batch_size
        Chips per batch (only full batches are yielded).
    buffer_chunks
        Chunks whose chips are shuffled together.
    seed
        Seed of the order.
    rank, world_size
        This process and the number of processes (DDP).

    Examples
    --------
    >>> batches = ImageBatches(xchm.chips.open("chips.zarr"), batch_size=32)  # doctest: +SKIP
    >>> raw = next(batches.epoch(0))  # numpy (32, bands, 64, 64)  # doctest: +SKIP
    """

    def __init__(
        self,
        cube: ChipCube,
        *,
        batch_size: int,
        buffer_chunks: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.cube, self.batch_size, self.buffer_chunks, self.seed = (
            cube,
            batch_size,
            buffer_chunks,
            seed,
        )
        self.rank, self.world_size = rank, world_size
        self.positions = np.asarray(cube.index, dtype=np.int64)
        self.chunk = int(cube.image.chunks[0])
        if len(self.positions) < batch_size * world_size:
            raise InputError(
                f"the cube has {len(self.positions)} chips to pretrain on, fewer than "
                f"batch_size {batch_size} x {world_size} process(es); use a smaller batch_size"
            )

    def __len__(self) -> int:
        """Full batches per epoch of this process."""
        return len(self.positions) // self.batch_size // self.world_size

    def order(self, epoch: int) -> np.ndarray:
        """Chip positions of ``epoch`` in the order they are yielded."""
        rng = np.random.default_rng([self.seed, epoch])
        chunks = self.positions // self.chunk
        ids = rng.permutation(np.unique(chunks))
        parts = []
        for g in range(0, len(ids), self.buffer_chunks):
            chips = self.positions[np.isin(chunks, ids[g : g + self.buffer_chunks])]
            parts.append(rng.permutation(chips))
        return np.concatenate(parts)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """Yield the batches of ``epoch`` from batch ``start`` (each a new numpy array)."""
        per_rank = len(self)
        order = self.order(epoch)[: per_rank * self.world_size * self.batch_size]
        batches = order.reshape(per_rank, self.world_size, self.batch_size)[:, self.rank]
        last: dict[int, int] = {}
        for b, row in enumerate(batches):
            for k in np.unique(row // self.chunk).tolist():
                last[k] = b
        image = self.cube.image
        total = int(image.shape[0])
        cache: dict[int, Any] = {}
        for b in range(start, len(batches)):
            row = batches[b]
            ks = row // self.chunk
            for k in np.unique(ks).tolist():
                if k not in cache:
                    lo = k * self.chunk
                    cache[k] = np.asarray(image[lo : min(lo + self.chunk, total)])
            out = np.stack(
                [cache[int(k)][int(p - k * self.chunk)] for p, k in zip(row, ks, strict=True)]
            )
            for k in [k for k in cache if last[k] <= b]:
                del cache[k]
            yield out
