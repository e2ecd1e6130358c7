"""The epoch plan of a :class:`~xchm.training.data.ChipStream`: which chips go where.

Pure NumPy on chip *positions* (indices into the cube's stored arrays); no pixel is
read here. Every rank and every DataLoader worker computes the same plan on its own
from ``(seed, epoch, rank, world_size, num_workers)``, so that

* batch counts are known up front (:func:`batches_per_rank`): every DDP rank yields
  exactly as many batches, and the workers of a rank exactly add up to it;
* a resumed epoch can replay the shuffle buffer on positions alone and decode only
  the chunks whose chips are still to come.

The pipeline, per epoch:

1. :func:`epoch_order`: the selected chips grouped by Zarr chunk, the chunks in a
   seeded random order (chips inside a chunk keep their stored order, which the
   cube's writer already shuffled uniformly);
2. :func:`rank_batch_sizes`: a contiguous share of that order per rank, cut into
   ``batches_per_rank`` batch sizes;
3. :func:`worker_share`: batch ``i`` of a rank belongs to plan worker
   ``i % num_workers``, which gets a contiguous share of the rank's chips;
4. :func:`shuffle_within_runs` and :func:`interleave`: each plan worker puts the
   chips of each chunk run (its chips from one chunk) in a random order and makes
   every batch from equal shares of ``buffer_chunks`` open runs, so that no chip is
   copied before it goes into its batch and a resumed epoch decodes only the runs
   still open.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "apply_dihedral",
    "batches_per_rank",
    "chunk_runs",
    "dihedral_codes",
    "epoch_order",
    "interleave",
    "rank_batch_sizes",
    "shuffle_within_runs",
    "worker_share",
]


def chunk_runs(positions: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(starts, ends)`` of the runs of consecutive positions in the same chunk.

    Examples
    --------
    >>> chunk_runs(np.array([0, 3, 9, 10, 4]), 4)
    (array([0, 2, 4]), array([2, 4, 5]))
    """
    ids = np.asarray(positions) // chunk
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, int)
    return starts, np.r_[starts[1:], len(ids)].astype(starts.dtype)


def epoch_order(
    positions: np.ndarray, chunk: int, *, shuffle: bool, seed: int, epoch: int
) -> np.ndarray:
    """Return all selected positions in epoch order: chunk by chunk, chunks shuffled.

    Parameters
    ----------
    positions
        Sorted positions of the selected chips.
    chunk
        Chips per Zarr chunk.
    shuffle
        Shuffle the chunk order with a generator seeded by ``(seed, epoch)``;
        otherwise keep the stored order.
    seed, epoch
        Seed of the chunk order.

    Examples
    --------
    >>> epoch_order(np.arange(6), 2, shuffle=False, seed=0, epoch=0)
    array([0, 1, 2, 3, 4, 5])
    >>> sorted(epoch_order(np.arange(6), 2, shuffle=True, seed=0, epoch=1).tolist())
    [0, 1, 2, 3, 4, 5]
    """
    positions = np.asarray(positions, dtype=np.int64)
    if not shuffle or len(positions) == 0:
        return positions
    starts, ends = chunk_runs(positions, chunk)
    order = np.random.default_rng([seed, epoch, 0xC4]).permutation(len(starts))
    lengths = (ends - starts)[order]
    shift = starts[order] - np.cumsum(np.r_[0, lengths[:-1]])
    return positions[np.repeat(shift, lengths) + np.arange(len(positions))]


def batches_per_rank(chips: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Return the number of batches every rank yields per epoch.

    ``drop_last``: only full batches, ``chips // (batch_size * world_size)``; the
    remainder (fewer than ``batch_size * world_size`` chips, the end of the epoch
    order, so different chips each epoch when shuffling) is left out. Otherwise
    ``ceil(chips / (batch_size * world_size))``, every chip exactly once.

    Examples
    --------
    >>> batches_per_rank(1000, 64, 2, drop_last=True), batches_per_rank(1000, 64, 2, False)
    (7, 8)
    """
    per_step = batch_size * world_size
    return chips // per_step if drop_last else -(-chips // per_step)


def rank_batch_sizes(
    chips: int, batch_size: int, world_size: int, rank: int, drop_last: bool
) -> tuple[int, np.ndarray]:
    """Return where a rank's chips start in the epoch order and its batch sizes.

    With ``drop_last`` all sizes are ``batch_size``. Otherwise the ranks share the
    chips as evenly as possible (their counts differ by at most one) and each rank
    has ``batches_per_rank`` batches: full ones, then the rest; where that gives one
    batch too few, the last full batch is split in two halves. Only a selection of
    fewer chips than about twice the ranks leaves a rank an empty (0-chip) batch.

    Examples
    --------
    >>> rank_batch_sizes(10, 4, 2, 1, drop_last=False)
    (5, array([4, 1]))
    """
    n = batches_per_rank(chips, batch_size, world_size, drop_last)
    if drop_last:
        return rank * n * batch_size, np.full(n, batch_size, dtype=np.int64)
    base, extra = divmod(chips, world_size)
    start = rank * base + min(rank, extra)
    mine = base + (rank < extra)
    sizes = [batch_size] * (mine // batch_size) + ([mine % batch_size] if mine % batch_size else [])
    while len(sizes) < n:
        big = max(sizes, default=0)
        if big <= 1:
            sizes.append(0)
            continue
        i = len(sizes) - 1 - sizes[::-1].index(big)
        sizes[i : i + 1] = [big - big // 2, big // 2]
    return start, np.asarray(sizes, dtype=np.int64)


def worker_share(sizes: np.ndarray, workers: int, worker: int) -> tuple[int, np.ndarray]:
    """Return where plan worker ``worker``'s chips start in its rank's share, and its sizes.

    Batch ``i`` of the rank belongs to worker ``i % workers``; the workers take
    consecutive pieces of the rank's chips, worker 0 first.

    Examples
    --------
    >>> worker_share(np.array([4, 4, 4, 3, 2]), 2, 1)
    (10, array([4, 3]))
    """
    offset = int(sum(int(sizes[w::workers].sum()) for w in range(worker)))
    return offset, sizes[worker::workers]


def shuffle_within_runs(
    positions: np.ndarray, starts: np.ndarray, ends: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Return ``positions`` with each run's chips in a random order (runs stay in place).

    Examples
    --------
    >>> out = shuffle_within_runs(np.arange(6), np.array([0, 2]), np.array([2, 6]),
    ...                           np.random.default_rng(0))
    >>> sorted(out[:2].tolist()), sorted(out[2:].tolist())
    ([0, 1], [2, 3, 4, 5])
    """
    run = np.repeat(np.arange(len(starts)), ends - starts)
    return positions[np.lexsort((rng.random(len(positions)), run))]


def interleave(
    run_sizes: np.ndarray, batch_sizes: np.ndarray, width: int
) -> list[list[tuple[int, int, int]]]:
    """Return the pieces ``(run, first, count)`` that make each batch, from runs of chips.

    Runs open in order, ``width`` at a time (more while the open ones hold fewer
    chips than the next batch needs), and close when used up. Each batch takes an
    equal share of its chips from every open run (the oldest runs take the
    remainder; a run short of its share gives what it has). With the chips of each
    run in random order, a batch is a random sample of ``width`` runs, and at most
    about ``width`` runs are decoded at a time. The counts must add up:
    ``sum(run_sizes) == sum(batch_sizes)``.

    Examples
    --------
    >>> interleave(np.array([4, 4, 2]), np.array([4, 4, 2]), width=2)
    [[(0, 0, 2), (1, 0, 2)], [(0, 2, 2), (1, 2, 2)], [(2, 0, 2)]]
    >>> interleave(np.array([3, 3]), np.array([2, 2, 2]), width=1)
    [[(0, 0, 2)], [(0, 2, 1), (1, 0, 1)], [(1, 1, 2)]]
    """
    left = [int(n) for n in run_sizes]
    used = [0] * len(left)
    active: list[int] = []
    opened = held = 0
    out = []
    for size in (int(b) for b in batch_sizes):
        while opened < len(left) and (len(active) < width or held < size):
            active.append(opened)
            held += left[opened]
            opened += 1
        take = dict.fromkeys(active, 0)
        need = size
        while need > 0:
            avail = [r for r in active if left[r] > take[r]]
            share, extra = divmod(need, len(avail))
            for i, r in enumerate(avail):
                give = min(share + (i < extra), left[r] - take[r])
                take[r] += give
                need -= give
        pieces = [(r, used[r], take[r]) for r in active if take[r]]
        for r, _, q in pieces:
            used[r] += q
            left[r] -= q
            held -= q
        active = [r for r in active if left[r]]
        out.append(pieces)
    return out


_GOLDEN, _MUL1, _MUL2 = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """Return splitmix64 of a uint64 array (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MUL1
    x = (x ^ (x >> np.uint64(27))) * _MUL2
    return x ^ (x >> np.uint64(31))


def dihedral_codes(positions: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Return each chip's transform (0-7) for an epoch: a hash of seed, epoch and position.

    A chip gets the same transform whatever the ranks, workers and batch it lands in.

    Examples
    --------
    >>> codes = dihedral_codes(np.arange(1000), seed=0, epoch=0)
    >>> sorted(set(codes.tolist()))
    [0, 1, 2, 3, 4, 5, 6, 7]
    """
    key = np.random.SeedSequence([seed, epoch, 0xD8]).generate_state(1, dtype=np.uint64)
    x = _splitmix(np.asarray(positions).astype(np.uint64) ^ key)
    return (x >> np.uint64(61)).astype(np.uint8)


def apply_dihedral(arrays: tuple[np.ndarray, ...], codes: np.ndarray) -> None:
    """Transform chips in place: code ``t`` flips x if ``t >= 4``, then rotates ``t % 4`` x 90°.

    ``arrays`` share their first (chip) axis; the last two axes are y and x (square).

    Examples
    --------
    >>> a = np.arange(8).reshape(2, 2, 2)
    >>> apply_dihedral((a,), np.array([0, 5]))
    >>> a[1].tolist()  # flip x, then rotate 90° counter-clockwise
    [[4, 6], [5, 7]]
    """
    for t in range(1, 8):
        sel = np.flatnonzero(codes == t)
        if len(sel) == 0:
            continue
        for a in arrays:
            x = a[sel]
            if t >= 4:
                x = x[..., ::-1]
            a[sel] = np.rot90(x, t % 4, axes=(-2, -1))
