"""One run in one process: the skeleton :func:`xchm.train` and :func:`xchm.pretrain` share.

A trainer keeps only what is its own (the model it builds, the loss and the step,
what an epoch's row holds); the rest is a :class:`Run`:

1. :func:`xchm.runs.distributed.place` (DDP process group, device) and the
   trainer's own input checks, before anything is written;
2. :meth:`Run.start`: the job's fingerprint (:mod:`.job`), the run directory and
   the ``resume`` rules (:func:`.state.open_run`: refused before any work if the
   job differs), ``config.json``, the seeds;
3. the trainer builds its model and optimiser; :meth:`Run.restore` loads the
   resumed state into them (and the RNG streams), :meth:`Run.position` says where
   the data stood;
4. every step: :meth:`Run.check_loss` (a NaN or infinite loss is a
   :class:`~xchm.errors.NonFiniteLossError` before the next checkpoint) and a
   progress bar (:meth:`Run.progress`); when :meth:`Run.checkpoint_due` and after
   every epoch :meth:`Run.checkpoint` (``checkpoints/last.pt``, atomic);
5. after every epoch: :meth:`Run.save_model` (an xchm checkpoint with the run's
   provenance, swapped in whole) and :meth:`Run.log` (``metrics.jsonl``,
   ``metrics.csv``, with ``config.tensorboard`` TensorBoard, and one summary line
   above the progress bar, also logged at INFO).

The saved history is the record: ``metrics.jsonl`` and ``metrics.csv`` are written
from it, so a run killed between its state and its logs, then resumed, logs each
epoch exactly once. Only rank 0 writes; the other ranks compute alongside.

The run directory may be a URL (``s3://runs/ak-1/``): the output rule, the resume
checks and ``config.json`` then act on the store itself, and everything else is
written into a local staging folder first (a temporary folder, in ``$TMPDIR``) and
sent to the store by :class:`~xchm.runs.mirror.Mirror` right after each write, in
the order written: a model's weights before its card, a model before the state that
follows it, the state before the logs. A run killed mid-way leaves in the store what
its last finished step sent, and resumes from there on any machine.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from xchm.errors import NonFiniteLossError, ResumeError
from xchm.runs.config import RunConfig
from xchm.runs.distributed import Place
from xchm.runs.mirror import Mirror
from xchm.runs.state import capture_rng, open_run, restore_rng, save_model_dir, save_state

__all__ = ["Run", "STATE", "FORMATS", "summary_line"]

log = logging.getLogger(__name__)

C = TypeVar("C", bound=RunConfig)

#: The run state, relative to the run directory.
STATE = Path("checkpoints") / "last.pt"
#: The ``format`` entry of each kind of run's state (one never resumes from another's).
FORMATS = {"training": "xchm-train-state", "pretraining": "xchm-pretrain-state"}


#: Seconds between refreshes of the progress bar when it goes to a file, not a terminal.
LOG_REFRESH_S = 10.0
#: The entries of an epoch's row its summary line shows (those it has), in this order.
SUMMARY = ("train_loss", "val_loss", "val_mae", "loss", "teacher_information")


def _isatty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty()) if callable(isatty) else False


def summary_line(kind: str, row: dict[str, Any]) -> str:
    """Return the one line that sums up an epoch's row of the history.

    Examples
    --------
    >>> summary_line("training", {"epoch": 2, "train_loss": 1.5, "val_mae": 0.98765,
    ...                           "lr_decoder": 0.01, "seconds": 4.25})
    'training epoch 2: train_loss 1.5, val_mae 0.9877 (4.2 s)'
    """
    shown = ", ".join(f"{k} {row[k]:.4g}" for k in SUMMARY if isinstance(row.get(k), int | float))
    took = f" ({row['seconds']:.1f} s)" if isinstance(row.get("seconds"), int | float) else ""
    return f"{kind} epoch {row['epoch']}: {shown}{took}"


@dataclass
class Run(Generic[C]):
    """One training or pretraining run in one process (see the module docstring)."""

    kind: str
    """``"training"`` or ``"pretraining"``."""
    config: C
    cube: Any
    """The :class:`~xchm.chips.ChipCube` (or selection) the run reads."""
    output: Path
    """Where this process writes: the run directory, or its staging folder for a URL."""
    place: Place
    job: dict[str, Any]
    """The fingerprint of the run's inputs (:func:`xchm.runs.job.fingerprint`)."""
    source: dict[str, str | None]
    """``model`` and ``weights`` as given (recorded in saved models' provenance)."""
    state: dict[str, Any] | None = field(default=None, repr=False)
    """The state to resume from (None for a new run)."""
    mirror: Mirror | None = field(default=None, repr=False)
    """Sends ``output`` to the run directory when that is a URL (else None)."""
    bar: Any = field(default=None, init=False, repr=False)
    """The run's one progress bar (:meth:`progress`), once an epoch has asked for it."""

    @classmethod
    def start(
        cls,
        kind: str,
        cube: Any,
        config: C,
        output: str | Path,
        *,
        place: Place,
        model: str | Path,
        weights: str | Path | None,
        resume: bool,
        backbone_weights: str | Path | None = None,
        decoder: Any = None,
    ) -> Run[C]:
        """Check and prepare the run directory, read the state to resume, seed the RNGs.

        Raises
        ------
        OutputExistsError, PathNotFoundError, ResumeError
            As :func:`xchm.runs.state.open_run`; before anything is written.
        """
        import torch

        from xchm.runs.job import fingerprint
        from xchm.storage import location

        target = location(output)
        job = fingerprint(
            cube, model, weights, place.world, backbone_weights=backbone_weights, decoder=decoder
        )
        state = open_run(
            target,
            target.join(*STATE.parts),
            config.to_dict(),
            job=job,
            resume=resume,
            rank=place.rank,
            expected_format=FORMATS[kind],
            config_type=type(config),
            kind=kind,
        )
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        source = {"model": str(model), "weights": None if weights is None else str(weights)}
        if backbone_weights is not None:
            source["backbone_weights"] = str(backbone_weights)
        if decoder is not None:
            source["decoder"] = getattr(decoder, "kind", None) or str(decoder)
        mirror = None if target.is_local else Mirror(target)
        out = mirror.staging if mirror is not None else target.path
        run = cls(kind, config, cube, out, place, job, source, state, mirror)
        if state is not None and run.main:  # the logs of a run killed before them
            run._write_metrics(list(state.get("history", [])))
            run.publish()
        return run

    # -- where the run is ----------------------------------------------------------------
    @property
    def rank(self) -> int:
        """The DDP rank of this process."""
        return self.place.rank

    @property
    def world(self) -> int:
        """The number of DDP processes."""
        return self.place.world

    @property
    def device(self) -> Any:
        """The torch device of this process."""
        return self.place.device

    @property
    def main(self) -> bool:
        """Whether this process writes (rank 0)."""
        return self.place.rank == 0

    def result(self, name: str) -> Path | str:
        """Return where ``name`` in the run directory is, for the user: a path or a URL."""
        if self.mirror is None:
            return self.output / name
        return self.mirror.target.join(name).text

    def position(self) -> tuple[int, int, dict[str, Any], list[dict[str, Any]]]:
        """``(epoch, batches done in it, partial sums of the epoch, history)`` to go on from."""
        st = self.state or {}
        return (
            int(st.get("epoch", 0)),
            int(st.get("batch", 0)),
            dict(st.get("partial", {})),
            list(st.get("history", [])),
        )

    # -- state -------------------------------------------------------------------------
    def restore(self, load: Callable[[dict[str, Any]], None]) -> None:
        """Resume: ``load(state)`` into the trainer's objects, then restore the RNG streams.

        Raises
        ------
        ResumeError
            The state does not fit what the trainer built (another model or heads).
        """
        if self.state is None:
            return
        try:
            load(self.state)
        except (RuntimeError, ValueError, KeyError) as err:
            raise ResumeError(
                f"the state in {self.result(str(STATE))} does not fit the model "
                f"{self.source['model']!r}: it was saved by another model. Pass the run's own "
                "model, or start a new run in another output directory "
                f"({str(err).splitlines()[0]})"
            ) from err
        restore_rng(self.state["rng"])

    def checkpoint(
        self,
        epoch: int,
        batch: int,
        partial: dict[str, Any],
        history: list[dict[str, Any]],
        parts: dict[str, Any],
    ) -> None:
        """Save the full state at a data position (epoch, batches done in it); rank 0.

        ``parts`` are the trainer's own entries (state dicts of its model, optimiser,
        ...); the RNG streams, position, history, config and job are added here.
        """
        if not self.main:
            return
        state = {
            "format": FORMATS[self.kind],
            **parts,
            "rng": capture_rng(),
            "epoch": epoch,
            "batch": batch,
            "partial": partial,
            "history": history,
            "config": self.config.to_dict(),
            "job": self.job,
        }
        save_state(state, self.output / STATE)
        self.publish()

    def save_model(self, net: Any, name: str, provenance: dict[str, Any]) -> None:
        """Save ``net`` as the xchm checkpoint ``output/name`` (rank 0), replaced whole.

        Its card's provenance gets ``provenance``, then the cube's content digest,
        the config, the model and the weights the run started from.
        """
        if not self.main:
            return
        card = net.card
        net.card = card.replace(
            provenance={
                **dict(card.provenance),
                **provenance,
                "cube_content_sha256": self.job.get("cube", {}).get("content"),
                "config": self.config.to_dict(),
                **self.source,
            }
        )
        try:
            save_model_dir(net, self.output / name)
        finally:
            net.card = card
        self.publish()

    # -- each step -----------------------------------------------------------------------
    def check_loss(self, value: float, epoch: int, step: int, hint: str) -> None:
        """Raise :class:`~xchm.errors.NonFiniteLossError` if ``value`` is NaN or infinite.

        Called before the step's state can reach a checkpoint, so ``last.pt`` keeps the
        last good state. ``hint`` says what to change (a resume would repeat the step).
        """
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"{self.kind} loss is {value} at epoch {epoch} step {step}: training "
                f"diverged. {hint}, and start a new run in another output directory (a "
                "resume repeats the same steps exactly)"
            )

    def checkpoint_due(self, done: int, total: int) -> bool:
        """Whether to save the state mid-epoch after ``done`` of ``total`` steps.

        Every ``config.checkpoint_every`` steps; never at the epoch's end, which saves
        it anyway.
        """
        every = self.config.checkpoint_every
        return every is not None and done % every == 0 and done < total

    def progress(self, steps: int, epoch: int, start: int, unit: str, show: bool) -> Any:
        """Return the run's progress bar, moved to step ``start`` of ``epoch``.

        One bar for the whole fit, shown by rank 0 if ``show``: its total is every
        step of every epoch (``config.epochs * steps``, ``steps`` per epoch), each
        epoch moves it on and names itself in it, and :meth:`log` writes one summary
        line per epoch above it. :meth:`close` closes it; a resumed run's bar starts
        where the run stopped.
        """
        import sys

        from tqdm.auto import tqdm

        done, desc = epoch * steps + start, f"{self.kind} epoch {epoch}"
        if self.bar is None:
            # Into a log file (not a terminal, not a notebook's widget) every refresh is
            # a line's worth of bytes: one every LOG_REFRESH_S seconds is enough there.
            to_file = "notebook" not in tqdm.__module__ and not _isatty(sys.stderr)
            self.bar = tqdm(
                total=self.config.epochs * steps,
                initial=done,
                desc=desc,
                unit=unit,
                disable=not (show and self.main),
                dynamic_ncols=True,
                mininterval=LOG_REFRESH_S if to_file else 0.1,
            )
        else:
            self.bar.n = done  # where an epoch cut short (a shorter stream) left it
            self.bar.set_description(desc, refresh=False)  # shown at the next refresh
        return self.bar

    # -- logs ----------------------------------------------------------------------------
    def log(self, history: list[dict[str, Any]]) -> None:
        """Record the epoch just ended (the last row of ``history``); rank 0.

        ``metrics.jsonl`` (one JSON object per epoch) and ``metrics.csv`` are rewritten
        from the history; TensorBoard (``config.tensorboard``) gets the new row.
        """
        if not self.main:
            return
        row = history[-1]
        self._write_metrics(history)
        line = summary_line(self.kind, row)
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line)  # above the bar, which stays at the bottom
        log.info("%s", line)
        log.debug("%s epoch %d: %s", self.kind, row["epoch"], row)
        if self.config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(str(self.output / "tensorboard")) as tb:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, int | float):
                        tb.add_scalar(k, v, row["epoch"])
        self.publish()

    def publish(self) -> None:
        """Send what changed in the staging folder to the run directory's URL (rank 0)."""
        if self.mirror is not None and self.main:
            self.mirror.send()

    def close(self) -> None:
        """Close the progress bar; release the staging folder of a run into a URL."""
        if self.bar is not None:
            self.bar.close()
        if self.mirror is not None:
            self.mirror.close()

    def _write_metrics(self, history: list[dict[str, Any]]) -> None:
        from xchm.outputs import write_atomic

        if not history:
            return
        lines = "".join(json.dumps(r) + "\n" for r in history)
        write_atomic(self.output / "metrics.jsonl", lambda tmp: tmp.write_text(lines))
        keys = list(dict.fromkeys(k for r in history for k in r))  # first seen, first column
        rows = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in history]
        table = "\n".join(rows) + "\n"
        write_atomic(self.output / "metrics.csv", lambda tmp: tmp.write_text(table))
