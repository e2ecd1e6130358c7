"""The ``xchm models`` command: the model presets; importing and exporting models.

``xchm models`` lists the presets with parameter counts and bands; ``xchm models
import FILE -o DIR`` converts a reference project's checkpoint into an xchm checkpoint
once; ``xchm models export CHECKPOINT --format reference -o FILE.pth`` writes an xchm
model in the reference's format (:mod:`xchm.models.reference_io`). Registered on
:func:`xchm.cli.build_parser` by :func:`add_models_parser`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_models_parser"]


def _models(args: argparse.Namespace) -> int:
    from xchm.models import list_models, model_info

    infos = [model_info(name) for name in list_models()]
    if args.json:
        print(json.dumps(infos, indent=2, default=list))
        return 0
    header = (
        f"{'preset':<20} {'backbone params':>16} {'decoder params':>15}  bands           backbone"
    )
    print(header)
    print("-" * len(header))
    for info in infos:
        print(
            f"{info['name']:<20} {info['backbone_parameters'] / 1e6:>15.1f}M "
            f"{info['decoder_parameters'] / 1e6:>14.1f}M  {','.join(info['bands']):<15} "
            f"{info['backbone']}"
        )
    print()
    for info in infos:
        print(f"{info['name']}: {info['summary']}. {info['notes']}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from xchm.models.reference_io import import_reference
    from xchm.outputs import shown

    where = import_reference(args.file, args.output, overwrite=args.overwrite)
    print(
        f"wrote the xchm checkpoint {shown(where)}; load it with xchm.load_model({shown(where)!r})"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from xchm.models.reference_io import export_reference
    from xchm.outputs import shown

    where = export_reference(args.checkpoint, args.output, overwrite=args.overwrite)
    print(f"wrote {shown(where)} ({args.format} format)")
    return 0


def add_models_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``models`` command (and ``models import``/``export``) on ``sub``.

    Examples
    --------
    >>> from xchm.cli.common import Parser
    >>> parser = Parser(prog="xchm")
    >>> _ = add_models_parser(parser.add_subparsers())
    >>> parser.parse_args(["models", "import", "best.pth", "-o", "chm"]).output
    'chm'
    """
    models = sub.add_parser(
        "models",
        help="list model presets with parameter counts and bands; import or export models",
        description="List the model presets (no sub-command), or import/export a model.",
    )
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=_models)
    commands = models.add_subparsers(dest="models_command", metavar="COMMAND")
    imp = commands.add_parser(
        "import",
        help="convert a reference project checkpoint (best_dinov3_*.pth) into an xchm checkpoint",
        description="Convert a checkpoint of the reference project (CHM_DINOv3, above-shrubs: "
        "a torch.save dict with model_state_dict) once into an xchm checkpoint folder "
        "(model.safetensors + card.json): later loads are fast and need no transformers. "
        "The file is read without unpickling objects.",
    )
    imp.add_argument("file", help="the reference's .pth file (local path or URL)")
    imp.add_argument(
        "-o", "--output", required=True, help="new checkpoint folder (local path or URL)"
    )
    imp.add_argument(
        "--overwrite", action="store_true", help="replace an xchm checkpoint in --output"
    )
    imp.set_defaults(func=_import)
    exp = commands.add_parser(
        "export",
        help="write an xchm checkpoint in another project's format (the reference's .pth)",
        description="Write an xchm checkpoint as the reference project saves its models (a "
        "torch.save dict whose model_state_dict its DINOv3DepthHead loads). Models the "
        "reference cannot express (several backbone blocks, a window other than 64 px, not 3 "
        "bands) are refused.",
    )
    exp.add_argument("checkpoint", help="an xchm checkpoint folder (local path or URL)")
    exp.add_argument(
        "--format",
        required=True,
        choices=["reference"],
        help="the format to write: reference (CHM_DINOv3 / above-shrubs .pth)",
    )
    exp.add_argument("-o", "--output", required=True, help="the .pth file (local path or URL)")
    exp.add_argument("--overwrite", action="store_true", help="replace an existing file")
    exp.set_defaults(func=_export)
    return models
