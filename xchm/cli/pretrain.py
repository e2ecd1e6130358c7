"""The ``xchm pretrain`` command: DINO self-supervised pretraining on unlabeled chips.

Registered on :func:`xchm.cli.build_parser` by :func:`add_pretrain_parser`. As in
:mod:`xchm.cli`, the command imports what it needs when it runs, so ``xchm --help``
stays fast; errors exit with status 1 after one line on stderr, bad option values with
status 2 (the parser's, before any work).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from xchm.cli.common import (
    add_run_arguments,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    run_config,
)

__all__ = ["add_pretrain_parser"]

#: PretrainConfig fields settable from the command line, with their types; the
#: rest go in a --config JSON file.
_OPTIONS: dict[str, Any] = {
    "epochs": positive_int,
    "batch_size": positive_int,
    "lr": positive_float,
    "backbone_lr_scale": nonnegative_float,
    "layer_decay": positive_float,
    "local_crops": nonnegative_int,
    "out_dim": positive_int,
    "ibot_weight": nonnegative_float,
    "koleo_weight": nonnegative_float,
    "split": str,
    "max_steps_per_epoch": positive_int,
    "checkpoint_every": positive_int,
    "seed": nonnegative_int,
}


def _pretrain(args: argparse.Namespace) -> int:
    from xchm.pretraining import PretrainConfig, pretrain

    config = run_config(args, PretrainConfig, _OPTIONS)
    result = pretrain(
        args.cube,
        model=args.model,
        weights=args.weights,
        config=config,
        output=args.output,
        resume=args.resume,
        device=args.device,
        progress=not args.quiet,
    )
    if result.history and os.environ.get("RANK", "0") == "0":  # once under torchrun
        last = result.history[-1]
        print(
            f"epoch {last['epoch']}: loss {last['loss']:.4f}; pretrained backbone "
            f"{result.backbone} (fine-tune: xchm train CUBE --model {args.model} "
            f"--weights {result.backbone} -o RUN)"
        )
    return 0


def add_pretrain_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``pretrain`` command on the ``xchm`` sub-parsers ``sub``.

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> _ = add_pretrain_parser(parser.add_subparsers())
    >>> args = parser.parse_args(["pretrain", "u.zarr", "-o", "ssl", "--local-crops", "2"])
    >>> args.local_crops, args.model
    (2, 'dinov3-vitl16-sat')
    """
    p = sub.add_parser(
        "pretrain",
        help="adapt the backbone to your imagery by DINO self-distillation on unlabeled chips",
        description="Continue DINO/iBOT self-supervised training of a DINOv3 backbone on the "
        "images of a chip cube (labels are never read; see docs/pretraining.md). Writes "
        "OUTPUT/backbone, an xchm checkpoint to pass to `xchm train --weights`. Options "
        "override --config. DDP: torchrun --nproc_per_node=N -m xchm pretrain ...",
    )
    p.add_argument("cube", help="chip cube (.zarr), labeled or not")
    from xchm.pretraining import pretrain

    add_run_arguments(
        p,
        pretrain,
        "PretrainConfig",
        _OPTIONS,
        weights_help="pretrained backbone weights for a preset (the start)",
    )
    p.set_defaults(func=_pretrain)
    return p
