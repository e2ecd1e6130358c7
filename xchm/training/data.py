"""Stream batches from a chip cube: whole Zarr chunks, shuffled, exact per DDP rank.

:class:`ChipStream` is an ``IterableDataset`` that yields ready batches; wrap it in
:func:`make_loader` (a ``DataLoader`` with ``batch_size=None``). Random single-chip
reads decode a whole chunk each (FINDINGS.md: ~100 chips/s), so the stream decodes
whole chunks and mixes several, like webdataset/torchdata shuffle buffers, but with
an up-front plan (:mod:`xchm.training.plan`) instead of a sampler:

* **Order.** Per epoch the chunks holding selected chips are shuffled (seeded by
  ``seed`` and the epoch), the rank takes a contiguous share of that chip order,
  and batch ``i`` of the rank belongs to plan worker ``i % num_workers``, which
  takes a contiguous share of the rank's chips. A worker decodes each of its
  chunks once, puts the selected chips of the chunk in a random order and makes
  every batch from equal shares of ``buffer_chunks`` open chunks (the writer
  shuffled the chips uniformly over the chunks, so each chunk is a random sample).
  Chips go straight from the decoded chunk into the batch. No chip is yielded
  twice in an epoch across ranks and workers.
* **Equal batch counts.** Every rank yields exactly ``len(stream)`` batches, known
  from the selection's size alone: with ``drop_last`` ``chips // (batch_size *
  world_size)`` full batches (the end of the epoch order, fewer than ``batch_size *
  world_size`` chips, is left out; different chips each epoch when shuffling);
  without it ``ceil(chips / (batch_size * world_size))`` batches holding every chip
  exactly once (the last ones may be smaller; nothing is padded or repeated, so
  validation metrics count each chip once). The workers' counts add up exactly.
* **Worker interleaving and resume.** ``DataLoader`` asks its workers round-robin,
  so DataLoader worker ``w`` plays plan worker ``(w + start) % num_workers`` and
  batch ``start + t`` of the epoch is the ``t``-th batch the loader yields.
  ``set_position(k)`` makes the next iteration start at batch ``k``: each worker
  plans the epoch on chip positions only and decodes just the chunks whose chips
  are still to come, so a resumed run sees exactly the remaining batches. The plan
  depends on ``(seed, epoch, rank, world_size, num_workers, batch_size,
  buffer_chunks, shuffle, drop_last)``: resume with the same values (``num_workers``
  0 and 1 give the same plan).
* **Batches.** ``image`` ``(B, band, y, x)`` in a compact dtype close to the cube's
  (uint8, int8, int16 kept; uint16 -> int32, or kept with ``image_dtype="native"``;
  uint32 -> int64; floats -> float32; chips grouped by chunk within a batch), not
  normalised (do that on the device with
  :func:`~xchm.models.normalize.normalize_batch`); ``height`` ``(B, y, x)`` float32
  in metres. **No-data convention:** a pixel missing in any image band (equal to the
  cube's ``nodata``, or NaN in a float image) has a NaN height in the batch, so a
  loss only needs the labels' NaN mask. With :func:`make_loader`, workers write
  batches into a ring of shared-memory tensors reused from batch to batch and the
  main process copies each out once (:mod:`xchm.training.transport`).
* **Augmentation** (``augment=True``): one of the 8 dihedral transforms (flips and
  90° rotations) per chip, the same for its image and height, from a hash of
  ``(seed, epoch, chip position)``: independent of ranks and workers.
* **Images only** (``labels=False``): each batch is the ``image`` tensor alone and
  the ``height`` array is never opened, so unlabeled cubes stream too (the chips
  :func:`xchm.pretrain` reads). Order, counts and resume are the same.

* **Prefetch.** Each process reads the chunks it will need next in ``prefetch``
  background threads while the current ones are consumed, in the order the plan
  will ask for them, so that the latency of an object store (two range requests
  per chunk: the shard index, then the chunk) overlaps with the work on earlier
  chunks rather than stalling every batch. It changes when chunks are read, never
  which chips a batch holds. Memory: up to ``prefetch`` decoded chunks more per
  process.

The stream pickles small (the cube's location, a bit mask of the selection,
settings); each process opens the Zarr store itself on its first iteration, from
a local path or a URL (``s3://``...: :func:`xchm.chips.open`), with the storage
options the cube was opened with.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from xchm.chips.cube import ChipCube, open_cube
from xchm.errors import InputError
from xchm.storage import Location
from xchm.training import plan
from xchm.training.transport import (
    BatchRing,
    OwningLoader,
    RingStream,
    Slot,
    batch_dtype,
    new_batch,
)

__all__ = ["ChipStream", "batch_dtype", "make_loader"]

Batch = tuple[torch.Tensor, torch.Tensor]
#: What a stream yields: ``(image, height)``, or ``image`` alone with ``labels=False``.
Item = Batch | torch.Tensor
#: Chunks read ahead per process by default: from an object store (a URL) ...
PREFETCH_REMOTE = 4
#: ... and from the local disk.
PREFETCH_LOCAL = 0


class ChipStream(IterableDataset[Item]):
    """Shuffled batches ``(image, height)`` of a chip cube's split, streamed chunk by chunk.

    See the module docstring for the order, the exact batch counts, resume and the
    no-data convention.

    Parameters
    ----------
    cube
        A :class:`~xchm.chips.ChipCube` (or a selection of one), or its path or URL
        (``s3://``...; see :func:`xchm.chips.open`).
    split
        Split label(s) to stream; None for all chips of ``cube``.
    batch_size
        Chips per batch.
    shuffle
        Shuffle the chunks and the chips in them and mix ``buffer_chunks`` chunks
        per batch; otherwise stream chips in stored order (evaluation).
    buffer_chunks
        Chunks mixed into each batch, per worker (memory: about that many decoded
        chunks per worker, 10.5 MB each for 256 chips of 3 uint16 bands).
    augment
        Apply a random dihedral transform (flips, 90° rotations) per chip.
    seed
        Seed of the chunk and chip order and of the augmentation.
    rank, world_size
        This process's DDP rank and the number of ranks.
    drop_last
        Yield only full batches (training); otherwise every chip exactly once.
    image_dtype
        Dtype of the yielded images, see :func:`batch_dtype`; default int32 for
        uint16 cubes, ``"native"`` for uint16 (~10 % fewer CPU cycles per chip with
        DataLoader workers on 2 cores, benchmarks/RESULTS.md).
    labels
        Yield ``(image, height)``; False yields the images alone and never reads the
        heights (a cube without them too).
    prefetch
        Chunks each process reads ahead in background threads (0: read each chunk
        when the first batch needs it). Default: :data:`PREFETCH_REMOTE` for a cube
        named by URL, :data:`PREFETCH_LOCAL` on the local disk
        (benchmarks/stream_s3.py). Does not change the batches.
    storage_options
        fsspec options of the cube's URL backend when ``cube`` is a URL (as for
        :func:`xchm.chips.open`).

    Raises
    ------
    InputError
        For invalid settings (all reported at once), an unlabeled cube (no heights)
        with ``labels``, an unknown split, or a split too small for one full batch per
        rank with ``drop_last``.

    Examples
    --------
    >>> stream = ChipStream("chips.zarr", split="train", batch_size=64)  # doctest: +SKIP
    >>> stream.set_epoch(3)  # doctest: +SKIP
    >>> for image, height in make_loader(stream, num_workers=2):  # doctest: +SKIP
    ...     x = normalize_batch(image.to("cuda"), cube.statistics)
    >>> images = ChipStream("unlabeled.zarr", split=None, labels=False)  # doctest: +SKIP
    >>> image = next(iter(images))  # (64, band, y, x), no heights  # doctest: +SKIP
    """

    def __init__(
        self,
        cube: ChipCube | str | Path,
        *,
        split: str | Sequence[str] | None = "train",
        batch_size: int = 64,
        shuffle: bool = True,
        buffer_chunks: int = 8,
        augment: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        image_dtype: str | np.dtype | None = None,
        labels: bool = True,
        prefetch: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ):
        problems = []
        if batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {batch_size}")
        if buffer_chunks < 1:
            problems.append(f"buffer_chunks must be >= 1, got {buffer_chunks}")
        if seed < 0:
            problems.append(f"seed must be >= 0, got {seed}")
        if prefetch is not None and (isinstance(prefetch, bool) or prefetch < 0):
            problems.append(f"prefetch must be >= 0 (or None: automatic), got {prefetch}")
        if world_size < 1 or not 0 <= rank < world_size:
            problems.append(
                f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}"
            )
        if problems:
            raise InputError("invalid ChipStream settings: " + "; ".join(problems))
        if not isinstance(cube, ChipCube):
            cube = open_cube(cube, storage_options=storage_options)
        if labels:
            cube.check_labeled(
                "ChipStream (image and height batches; labels=False streams the images)"
            )
        selection = cube if split is None else cube.sel(split=split)
        total = int(cube.attrs["chips"])
        keep = np.zeros(total, dtype=bool)
        keep[selection.index] = True
        self.path = str(cube.path)
        self._location: Location = cube.location
        if prefetch is None:
            prefetch = PREFETCH_LOCAL if self._location.is_local else PREFETCH_REMOTE
        self.prefetch = int(prefetch)
        self.split = split
        self.labels = labels
        self.chips = len(selection)
        self.bands = cube.bands
        self.nodata = cube.nodata
        self.image_dtype = np.dtype(cube.image.dtype)
        self.batch_dtype = batch_dtype(self.image_dtype, image_dtype)
        self.chunk = int(cube.image.chunks[0])
        self._chip_shape = tuple(int(s) for s in cube.image.shape[1:])
        self._total = total
        self._mask = np.packbits(keep)
        self.batch_size, self.shuffle, self.buffer_chunks = batch_size, shuffle, buffer_chunks
        self.augment, self.seed, self.drop_last = augment, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self._len = plan.batches_per_rank(self.chips, batch_size, world_size, drop_last)
        if self._len == 0:
            what = "the selection" if split is None else f"split {split!r}"
            raise InputError(
                f"{what} has {self.chips} chips, fewer than batch_size x world_size = "
                f"{batch_size * world_size}: no full batch per rank; use a smaller batch_size "
                "(or drop_last=False)"
            )
        self.epoch, self.start_batch, self._fresh = 0, 0, True
        self._positions: np.ndarray | None = None
        self._arrays: tuple[Any, Any] | None = None
        self._store: Any = None
        self._pid = -1
        self._scratch: np.ndarray | None = None

    # -- state -------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per rank and epoch (whatever the position set by :meth:`set_position`)."""
        return self._len

    def __repr__(self) -> str:
        return (
            f"<ChipStream {self.path!r} split {self.split!r}: {self.chips} chips, "
            f"{self._len} batches of {self.batch_size} per rank (rank {self.rank} of "
            f"{self.world_size}), epoch {self.epoch}>"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_positions", "_arrays", "_scratch", "_store"):  # rebuilt where used
            state[name] = None
        return state

    def set_epoch(self, epoch: int, *, start_batch: int = 0) -> None:
        """Make the next iteration yield epoch ``epoch`` from batch ``start_batch``.

        Iterating again without calling this (or :meth:`set_position`) moves on to
        the next epoch from batch 0, so that persistent ``DataLoader`` workers, which
        keep the copy of the stream they started with, follow along; changes made
        after their start do not reach them.

        Examples
        --------
        >>> stream.set_epoch(2)  # doctest: +SKIP
        """
        if epoch < 0:
            raise InputError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_batch <= self._len:
            raise InputError(f"start_batch must be in [0, {self._len}], got {start_batch}")
        self.epoch, self.start_batch, self._fresh = epoch, start_batch, True

    def set_position(self, batch_index: int) -> None:
        """Make the next iteration resume the current epoch at batch ``batch_index``.

        The loader then yields batches ``batch_index, ..., len(self) - 1`` of the
        epoch, the same tensors as an uninterrupted run with the same settings and
        ``num_workers``; chunks whose chips all lie in skipped batches are not read.

        Examples
        --------
        >>> stream.set_epoch(4)  # doctest: +SKIP
        >>> stream.set_position(120)  # resume after 120 batches of epoch 4  # doctest: +SKIP
        """
        self.set_epoch(self.epoch, start_batch=batch_index)

    # -- iteration ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[Item]:
        return self._iterate(ring_slots=0, wire=self.batch_dtype)

    def _iterate(self, ring_slots: int, wire: np.dtype) -> Iterator[Item]:
        """Start the next iteration in this process (a DataLoader worker or the main one)."""
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if self._fresh:
            self._fresh = False
        else:
            self.epoch, self.start_batch = self.epoch + 1, 0
        alloc: Callable[[int], Slot] = self._new(shared=info is not None)
        if info is not None and ring_slots:
            alloc = BatchRing(ring_slots, self.batch_size, self._chip_shape, wire, self.labels)
        return self._run(*self._worker_plan(worker, workers, self.epoch, self.start_batch), alloc)

    def iter_worker(
        self,
        worker: int,
        num_workers: int,
        *,
        epoch: int | None = None,
        start_batch: int | None = None,
    ) -> Iterator[Item]:
        """Yield what DataLoader worker ``worker`` of ``num_workers`` yields in an epoch.

        Does not change the stream's epoch or position (defaults: the current ones).
        Interleaving the workers round-robin gives the epoch's batches in order.

        Examples
        --------
        >>> batches = list(stream.iter_worker(1, 2, epoch=0))  # doctest: +SKIP
        """
        epoch = self.epoch if epoch is None else epoch
        start = self.start_batch if start_batch is None else start_batch
        return self._run(*self._worker_plan(worker, num_workers, epoch, start), self._new(False))

    def _new(self, shared: bool) -> Callable[[int], Slot]:
        """Return a function making new batch tensors (in new shared memory if ``shared``)."""
        return partial(
            new_batch,
            chip_shape=self._chip_shape,
            dtype=self.batch_dtype,
            shared=shared,
            heights=self.labels,
        )

    def _worker_plan(
        self, worker: int, num_workers: int, epoch: int, start: int
    ) -> tuple[np.ndarray, np.ndarray, int, int, np.random.Generator]:
        """Chips, batch sizes, batches to skip, epoch and generator of a DataLoader worker."""
        role = (worker + start) % num_workers
        first, sizes = plan.rank_batch_sizes(
            self.chips, self.batch_size, self.world_size, self.rank, self.drop_last
        )
        offset, mine = plan.worker_share(sizes, num_workers, role)
        order = plan.epoch_order(
            self._selected(), self.chunk, shuffle=self.shuffle, seed=self.seed, epoch=epoch
        )
        chips = order[first + offset : first + offset + int(mine.sum())]
        rng = np.random.default_rng(
            [self.seed, epoch, self.rank, self.world_size, num_workers, role]
        )
        return chips, mine, len(range(role, start, num_workers)), epoch, rng

    def _run(
        self,
        chips: np.ndarray,
        sizes: np.ndarray,
        skip: int,
        epoch: int,
        rng: np.random.Generator,
        alloc: Callable[[int], Slot],
    ) -> Iterator[Item]:
        """Yield batches ``skip`` on from ``chips``, decoding each chunk run once, lazily."""
        if len(sizes) <= skip:
            return
        starts, ends = plan.chunk_runs(chips, self.chunk)
        if self.shuffle:
            chips = plan.shuffle_within_runs(chips, starts, ends, rng)
        pieces = plan.interleave(ends - starts, sizes, self.buffer_chunks if self.shuffle else 1)
        last = {r: j for j, batch in enumerate(pieces) for r, _, _ in batch}
        runs: dict[int, tuple[np.ndarray, np.ndarray | None, int]] = {}  # decoded, open runs
        spare: list[tuple[Any, Any]] = []  # chunk arrays to decode into
        # The chunks in the order the loop below first needs them: each is decoded once.
        needed = dict.fromkeys(r for batch in pieces[skip:] for r, _, _ in batch)
        chunks = [int(chips[starts[r]]) // self.chunk for r in needed]
        self._open()  # before any reader thread
        reader = _Prefetch(partial(self._decode, spare=spare), chunks, self.prefetch)
        try:
            for j in range(skip, len(sizes)):
                n = int(sizes[j])
                image, height = alloc(n)
                img, hgt = image.numpy(), None if height is None else height.numpy()
                widen = img.dtype != self.image_dtype  # gather, then widen in one pass
                if widen and self._scratch is None:
                    self._scratch = np.empty((self.batch_size, *self._chip_shape), self.image_dtype)
                out = self._scratch[:n] if widen and self._scratch is not None else img
                ids, a = [], 0
                for r, first, count in pieces[j]:
                    if r not in runs:
                        runs[r] = reader.get(int(chips[starts[r]]) // self.chunk)
                    run_image, run_height, lo = runs[r]
                    ids.append(chips[starts[r] + first : starts[r] + first + count])
                    rows = ids[-1] - lo
                    np.take(run_image, rows, axis=0, out=out[a : a + count], mode="clip")
                    if hgt is not None and run_height is not None:
                        np.take(run_height, rows, axis=0, out=hgt[a : a + count], mode="clip")
                    a += count
                    if last[r] == j:
                        run_image, run_height, _ = runs.pop(r)
                        # the whole chunk arrays, to decode the next chunks into
                        whole = None if run_height is None else run_height.base
                        spare.append((run_image.base, whole))
                if widen:
                    np.copyto(img, out)
                if self.augment and n:
                    codes = plan.dihedral_codes(np.concatenate(ids), self.seed, epoch)
                    plan.apply_dihedral((img,) if hgt is None else (img, hgt), codes)
                yield image if height is None else (image, height)
        finally:
            reader.close()  # an epoch left early: stop reading ahead
            self._release_sessions()

    def _release_sessions(self) -> None:
        """Close this process's HTTP sessions to the cube's object store (if any).

        An async s3fs client left open complains when it is garbage collected: in a
        DataLoader worker when it ends, and in every worker forked while the main
        process has one open (so :func:`make_loader` calls this before starting
        workers). The store reconnects on its next read.
        """
        if self._location.is_local:
            return
        _close_sessions(self._store)
        if self._pid != os.getpid():  # the main process: the cube's own store
            _close_sessions(self._location.zarr_store(read_only=True))

    # -- reading -----------------------------------------------------------------------
    def _selected(self) -> np.ndarray:
        if self._positions is None:
            keep = np.unpackbits(self._mask, count=self._total).view(bool)
            self._positions = np.flatnonzero(keep)
        return self._positions

    def _open(self) -> tuple[Any, Any]:
        """Return the ``image`` and ``height`` (None without labels) arrays, opened once."""
        if self._arrays is None or self._pid != os.getpid():
            import zarr

            from xchm.chips.layout import cube_store

            store = cube_store(self._location, read_only=True)
            group = zarr.open_group(store=store, mode="r")
            height = group["height"] if self.labels else None
            self._arrays, self._pid, self._store = (group["image"], height), os.getpid(), store
        return self._arrays

    def _decode(
        self, k: int, spare: list[tuple[Any, Any]]
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Return chunk ``k``'s image and height chips (no-data heights NaN) and its start.

        Decodes into arrays from ``spare`` where there are any: reused memory, not new
        pages to fault in for every chunk. Runs in reader threads (``prefetch``).
        """
        from zarr.buffer import cpu

        image, height = self._open()
        lo = k * self.chunk
        n = min(lo + self.chunk, self._total) - lo
        try:
            img, hgt = spare.pop()  # atomic: reader threads share the list
        except IndexError:
            img = np.empty((self.chunk, *self._chip_shape), dtype=self.image_dtype)
            hgt = np.empty((self.chunk, *self._chip_shape[1:]), np.float32) if self.labels else None
        img = img[:n]
        image.get_basic_selection(slice(lo, lo + n), out=cpu.NDBuffer.from_numpy_array(img))
        if hgt is None:  # images only: no-data pixels are the model's to mask
            return img, None, lo
        hgt = hgt[:n]
        height.get_basic_selection(slice(lo, lo + n), out=cpu.NDBuffer.from_numpy_array(hgt))
        self._mask_nodata(img, hgt)
        return img, hgt, lo

    def _mask_nodata(self, image: np.ndarray, height: np.ndarray) -> None:
        """Set heights to NaN where any image band is missing (in place)."""
        from xchm.inference.kernel import valid_mask

        if image.size == 0:
            return
        nodata = self.nodata
        lo, hi = image.min(), image.max()  # cheap test first: most chunks have no gaps
        gaps = image.dtype.kind == "f" and not np.isfinite([lo, hi]).all()
        if gaps or (nodata is not None and not np.isnan(nodata) and lo <= nodata <= hi):
            height[~valid_mask(image, nodata, axis=1)] = np.nan


def _close_sessions(store: Any) -> None:
    """Close the HTTP session of a zarr store's async S3 client (s3fs); others: nothing.

    zarr's ``FsspecStore`` makes s3fs clients with ``asynchronous=True``, which s3fs
    never closes itself; the filesystem reconnects on its next request.
    """
    fs: Any = getattr(store, "fs", None)
    creator = getattr(fs, "_s3creator", None)
    if fs is None or creator is None or not getattr(fs, "asynchronous", False):
        return
    from zarr.core.sync import sync

    try:
        if hasattr(creator, "__aexit__"):
            sync(creator.__aexit__(None, None, None))
        elif hasattr(creator, "clear"):  # s3fs's region cache of clients
            sync(creator.clear())
    except Exception:  # a session that cannot be closed is left to the process's end
        return
    fs._s3creator = fs._s3 = None


class _Prefetch:
    """Decode chunks in a known order, up to ``depth`` of them ahead, in threads.

    ``get(k)`` returns what ``decode(k)`` returns; calls must follow ``chunks``.
    With ``depth`` 0 it decodes on the spot.
    """

    def __init__(self, decode: Callable[[int], Any], chunks: Sequence[int], depth: int):
        self._decode, self._depth = decode, min(depth, len(chunks))
        self._todo = iter(chunks)
        self._pool = ThreadPoolExecutor(self._depth, "xchm-chunks") if self._depth else None
        self._ahead: deque[tuple[int, Future[Any]]] = deque()
        self._fill()

    def _fill(self) -> None:
        while self._pool is not None and len(self._ahead) < self._depth:
            k = next(self._todo, None)
            if k is None:
                return
            self._ahead.append((k, self._pool.submit(self._decode, k)))

    def get(self, k: int) -> Any:
        if self._pool is None:
            next(self._todo, None)
            return self._decode(k)
        expected, future = self._ahead.popleft()
        if expected != k:  # a bug in the plan, not the store
            raise RuntimeError(f"chunk {k} asked for, {expected} read ahead")
        self._fill()  # keep ``depth`` reads in flight while this one is awaited
        return future.result()

    def close(self) -> None:
        """Stop reading ahead (an epoch ended early): drop what was not started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._ahead.clear()


def make_loader(
    stream: ChipStream,
    num_workers: int = 2,
    *,
    pin_memory: bool | None = None,
    persistent_workers: bool = False,
    prefetch_factor: int = 2,
    **kwargs: Any,
) -> DataLoader[Item]:
    """Wrap a :class:`ChipStream` in a ``DataLoader`` (the stream makes the batches).

    With workers, each writes its batches into a ring of shared-memory tensors
    allocated once, and the loader copies every batch out of the ring as it arrives
    (widening uint16 images to int32 in that copy unless pinning), so the batches it
    yields are the caller's to keep (:mod:`xchm.training.transport`). A plain
    ``DataLoader(stream, batch_size=None, ...)`` yields the same batches, slower.

    Parameters
    ----------
    stream
        The stream; set its epoch (and position) before iterating.
    num_workers
        Worker processes (0: read in this process). Batch ``i`` of an iteration
        comes from worker ``i % num_workers``; each opens the cube itself.
    pin_memory
        Pin batches for faster host-to-GPU copies; default: if CUDA is available.
    persistent_workers
        Keep the workers between iterations (each new iteration is the next epoch;
        see :meth:`ChipStream.set_epoch`).
    prefetch_factor
        Batches each worker prepares ahead. Shared memory: ``prefetch_factor x
        num_workers + 1`` batches per worker (85 MB per worker for 256 chips of
        3 int32 bands and 2 workers).
    **kwargs
        Passed on to ``torch.utils.data.DataLoader`` (``multiprocessing_context``, ...).

    Returns
    -------
    torch.utils.data.DataLoader
        With ``batch_size=None`` and ``len`` equal to ``len(stream)``.

    Examples
    --------
    >>> loader = make_loader(stream, num_workers=2, pin_memory=True)  # doctest: +SKIP
    >>> image, height = next(iter(loader))  # doctest: +SKIP
    """
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    dataset: IterableDataset[Item] = stream
    if num_workers > 0:
        kwargs.update(persistent_workers=persistent_workers, prefetch_factor=prefetch_factor)
        wire, stored = stream.batch_dtype, stream.image_dtype
        if not pin_memory and stored.itemsize < wire.itemsize and np.can_cast(stored, wire):
            wire = stored  # widened by the main process's copy out of the ring
        dataset = RingStream(stream, prefetch_factor * num_workers + 1, wire)
    return OwningLoader(
        dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs
    )
