"""Runs: what a training and a pretraining run share, below both loops.

A *run* is one resumable job that writes a run directory: its state and
checkpoints (:mod:`.state`: ``checkpoints/last.pt``, RNG capture, the run folder
and its ``resume`` rules), the fingerprint that makes it one job (:mod:`.job`),
the DDP process group under ``torchrun`` (:mod:`.distributed`) and its numeric
precision (:mod:`.precision`: bf16 autocast). :func:`xchm.train` and
:func:`xchm.pretrain` both build on these; keeping them here, rather than in
``training/``, lets pretraining use them without importing the fine-tuning
package, and gives the two loops one place to converge.

Layering: ``runs`` sits above :mod:`xchm.models` and :mod:`xchm.inference` (it
reads checkpoints and chooses the device there) and below :mod:`xchm.training`
and :mod:`xchm.pretraining`, which import it. It may import models, inference and
the leaf utilities (:mod:`xchm.errors`, :mod:`xchm.outputs`); never training,
pretraining, evaluation, chips, stac or the command line. Importing it is light:
torch is imported by the functions that use it.
"""
