"""The ``xchm train`` and ``xchm evaluate`` commands.

Registered on :func:`xchm.cli.build_parser` by :func:`add_train_parser` and
:func:`add_evaluate_parser`. As in
:mod:`xchm.cli`, commands import what they need when they run, so ``xchm --help``
stays fast and ``import xchm.cli`` does not import torch or matplotlib. Errors exit
with status 1 after one line on stderr (:func:`xchm.cli.main` prints it); bad option
values are usage errors of the parser (status 2), caught before any work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from xchm.cli.common import (
    EXIT_USAGE,
    add_deprecated_alias,
    add_precision_argument,
    add_run_arguments,
    check_device,
    default_of,
    device,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    run_config,
)

__all__ = ["add_evaluate_parser", "add_train_parser"]


def _evaluate(args: argparse.Namespace) -> int:
    from xchm.evaluation.cube import evaluate
    from xchm.evaluation.report import format_metrics
    from xchm.models.presets import PRESETS

    if args.model in PRESETS:
        logging.getLogger("xchm").warning(
            "%s is a preset: its decoder is untrained, so its scores are not meaningful; pass "
            "a trained checkpoint directory",
            args.model,
        )
    check_device(args.device)
    result = evaluate(
        args.model,
        args.cube,
        split=None if args.split == "all" else args.split,
        batch_size=args.batch_size,
        device=args.device,
        per_scene=args.per_scene,
        output=args.output,
        overwrite=args.overwrite,
        progress=not args.quiet,
        precision=args.precision,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, allow_nan=False))
    else:
        print(format_metrics(result))
        if result.report is not None:
            print(f"wrote report to {result.report}")
    return 0


def add_evaluate_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``evaluate`` command on the ``xchm`` sub-parsers ``sub``.

    Parameters
    ----------
    sub
        What ``ArgumentParser.add_subparsers`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``evaluate`` parser.

    Examples
    --------
    >>> parser = argparse.ArgumentParser(prog="xchm")
    >>> _ = add_evaluate_parser(parser.add_subparsers())
    >>> args = parser.parse_args(["evaluate", "runs/a/best", "chips.zarr", "--split", "test"])
    >>> args.model, args.cube, args.split, args.batch_size
    ('runs/a/best', 'chips.zarr', 'test', 64)
    """
    ev = sub.add_parser(
        "evaluate",
        help="score a model on a chip cube split (MAE, RMSE, R2, height classes, baseline)",
        description="Run a model over one split of a chip cube and report MAE, RMSE, bias, "
        "R2 (1 - SSres/SStot), Pearson r squared, errors by reference height class, and the "
        "same for a constant baseline (the train split's mean height). Streams the cube "
        "chunk by chunk.",
    )
    ev.add_argument("model", help="trained checkpoint directory (or a preset name, for testing)")
    ev.add_argument("cube", help="chip cube (.zarr)")
    from xchm.evaluation.cube import evaluate

    split = default_of(evaluate, "split")
    ev.add_argument(
        "--split", default=split, help=f"split to score: {split} (default), test, train or all"
    )
    ev.add_argument("--per-scene", action="store_true", help="also score each scene")
    ev.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="report folder to write: metrics.json and PNG plots (default: none)",
    )
    add_deprecated_alias(ev, "--report", "-o/--output", dest="output", metavar="DIR")
    ev.add_argument("--overwrite", action="store_true", help="replace an earlier report in DIR")
    ev.add_argument(
        "--batch-size",
        type=positive_int,
        default=default_of(evaluate, "batch_size"),
        help="chips per model call",
    )
    ev.add_argument("--device", type=device, help="torch device (default: CUDA if available)")
    add_precision_argument(ev, default_of(evaluate, "precision"))
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(func=_evaluate)
    return ev


def _train_config(args: argparse.Namespace) -> Any:
    """Return the run's TrainConfig: ``--recipe``, then ``--config``, then the options."""
    from xchm.training import RECIPES, TrainConfig

    fixed = {"augment": False} if args.no_augment else {}
    base = dict(RECIPES[args.recipe]) if args.recipe else None
    return run_config(args, TrainConfig, _TRAIN_OPTIONS, base=base, **fixed)


def _train(args: argparse.Namespace) -> int:
    from xchm.training import train

    config = _train_config(args)
    if args.find_lr:
        return _find_lr(args, config)
    if args.output is None:  # a usage error, as argparse's (-o is optional for --find-lr)
        args.parser.print_usage(sys.stderr)
        print(
            "xchm train: error: the following arguments are required: -o/--output", file=sys.stderr
        )
        return EXIT_USAGE
    result = train(
        args.cube,
        model=args.model,
        weights=args.weights,
        backbone_weights=args.backbone_weights,
        config=config,
        output=args.output,
        resume=args.resume,
        device=args.device,
        progress=not args.quiet,
        decoder=args.decoder,
    )
    if result.history and os.environ.get("RANK", "0") == "0":  # once under torchrun
        best = result.history[result.best_epoch] if result.best_epoch >= 0 else {}
        print(
            f"best epoch {result.best_epoch}: val loss {best.get('val_loss', float('nan')):.4f}, "
            f"MAE {best.get('val_mae', float('nan')):.3f} m; checkpoint {result.best_checkpoint}"
        )
        print(
            f"baseline (the train mean {result.baseline_height:.2f} m everywhere): val MAE "
            f"{result.baseline_mae:.3f} m; "
            + {
                True: "the model beats it",
                False: "the model does NOT beat it: it learned nothing from the imagery. Try "
                "--recipe small-data (pretrained backbone) or --recipe from-scratch (random "
                "backbone), and --find-lr for the learning rate",
                None: "no comparison (no valid val pixel)",
            }[result.beats_baseline]
        )
    return 0


def _find_lr(args: argparse.Namespace, config: Any) -> int:
    """``xchm train CUBE --find-lr``: sweep, print the suggestion and how to use it."""
    from xchm.training import find_lr

    found = find_lr(
        args.cube,
        args.model,
        weights=args.weights,
        backbone_weights=args.backbone_weights,
        config=config,
        steps=args.find_lr_steps,
        device=args.device,
        progress=not args.quiet,
        decoder=args.decoder,
    )
    if args.json:
        print(json.dumps(found.to_dict(), indent=2, allow_nan=False))
        return 0
    if found.losses:
        low = int(min(range(len(found.losses)), key=found.losses.__getitem__))
        print(
            f"swept lr {found.lrs[0]:.1e} to {found.lrs[-1]:.1e} in {len(found.lrs)} steps"
            + (" (stopped: the loss diverged)" if found.stopped_early else "")
            + f"; lowest smoothed loss {found.losses[low]:.4g} at lr {found.lrs[low]:.1e}"
        )
    if found.suggestion != found.suggestion:  # NaN: too few steps to read the curve
        print("no suggestion: the curve is too short; use more --find-lr-steps")
        return 1
    print(f"suggested lr: {found.suggestion:.1e} ({found.rule} rule)")
    recipe = f" --recipe {args.recipe}" if args.recipe else ""
    print(f"use it: xchm train {args.cube} -o RUN{recipe} --lr {found.suggestion:.1e} [options]")
    return 0


#: TrainConfig fields settable from the command line, with their types (the parser
#: refuses a value out of the field's range; TrainConfig checks the rest).
_TRAIN_OPTIONS: dict[str, Any] = {
    "epochs": positive_int,
    "patience": nonnegative_int,
    "batch_size": positive_int,
    "lr": positive_float,
    "weight_decay": nonnegative_float,
    "ft_rate": nonnegative_float,
    "policy": str,
    "unfreeze_blocks": positive_int,
    "unfreeze_every": positive_int,
    "scheduler": str,
    "loss": str,
    "underestimation_penalty": positive_float,
    "num_workers": nonnegative_int,
    "max_steps_per_epoch": positive_int,
    "checkpoint_every": positive_int,
    "seed": nonnegative_int,
}


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``train`` command on the ``xchm`` sub-parsers ``sub``.

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> _ = add_train_parser(parser.add_subparsers())
    >>> parser.parse_args(["train", "c.zarr", "-o", "run", "--epochs", "2"]).epochs
    2
    """
    p = sub.add_parser(
        "train",
        help="fine-tune a model on a chip cube (DDP: torchrun --nproc_per_node=N -m xchm train)",
        description="Fine-tune a canopy height model on the train split of a chip cube, "
        "validating on its val split (see docs/training.md). Settings come from --recipe "
        "(default: the reference's TrainConfig defaults), then --config overrides it field "
        "by field, then the options given override both. At the end the best val MAE is "
        "compared with predicting the train mean height everywhere.",
    )
    p.add_argument("cube", help="chip cube (.zarr) with train and val chips")
    from xchm.training import train

    add_run_arguments(
        p,
        train,
        "TrainConfig",
        _TRAIN_OPTIONS,
        weights_help="pretrained backbone weights for a preset",
        output_required=False,  # checked in _train: --find-lr writes nothing
    )
    p.add_argument(
        "--backbone-weights",
        help="the backbone file beside --weights (e.g. CHMv2: --weights the head .pth, "
        "--backbone-weights Meta's ViT-L/16 SAT .pth)",
    )
    from xchm.models.presets import DECODER_KINDS

    p.add_argument(
        "--decoder",
        choices=list(DECODER_KINDS),
        help="the new decoder of a preset: reference (default; the reference project's, "
        "about 7.2 GFLOP per 64x64 window) or light (under 1 GFLOP per window); a checkpoint "
        "MODEL keeps its own",
    )
    p.add_argument("--no-augment", action="store_true", help="no flips/rotations")
    from xchm.training.recipes import RECIPE_HELP

    p.add_argument(
        "--recipe",
        choices=list(RECIPE_HELP),
        help="named settings to start from ("
        + "; ".join(f"{k}: {v}" for k, v in RECIPE_HELP.items())
        + "); --config and the options override it",
    )
    p.add_argument(
        "--find-lr",
        action="store_true",
        help="do not train: sweep the learning rate over a few steps, print the suggested "
        "--lr and exit (writes nothing; -o not needed)",
    )
    from xchm.training import find_lr

    p.add_argument(
        "--find-lr-steps",
        type=positive_int,
        default=default_of(find_lr, "steps"),
        help="steps of the --find-lr sweep",
    )
    p.add_argument("--json", action="store_true", help="with --find-lr: print the curve as JSON")
    p.set_defaults(func=_train, parser=p)
    return p
