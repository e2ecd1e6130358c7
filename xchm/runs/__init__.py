"""Runs: what a training and a pretraining run share, below both loops.

A *run* is one resumable job that writes a run directory. :class:`.run.Run` is the
skeleton :func:`xchm.train` and :func:`xchm.pretrain` both use (run directory,
resume, checkpoints, ``metrics.jsonl`` / ``metrics.csv`` / TensorBoard, the
non-finite loss check, progress bars); :class:`.config.RunConfig` the base of both
configs; :class:`.result.RunResult` the base of both results; and
:func:`.model.model_for_cube` the model a run starts from. Below them: the state
and its files (:mod:`.state`: ``checkpoints/last.pt``, RNG capture, the run folder
and its ``resume`` rules), the fingerprint that makes a run one job (:mod:`.job`),
the DDP process group under ``torchrun`` (:mod:`.distributed`) and numeric
precision (:mod:`.precision`: bf16 autocast). Each trainer keeps only its own
model, loss and step.

Layering: ``runs`` sits above :mod:`xchm.models` and :mod:`xchm.inference` (it
reads checkpoints and chooses the device there) and below :mod:`xchm.training`
and :mod:`xchm.pretraining`, which import it. It may import models, inference and
the leaf utilities (:mod:`xchm.errors`, :mod:`xchm.outputs`); never training,
pretraining, evaluation, chips, stac or the command line. Importing it is light:
torch is imported by the functions that use it.
"""
