"""The ``xchm models`` command: the model presets, with parameter counts and bands.

Registered on :func:`xchm.cli.build_parser` by :func:`add_models_parser`.
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


def add_models_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``models`` command on the ``xchm`` sub-parsers ``sub``."""
    models = sub.add_parser("models", help="list model presets with parameter counts and bands")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(func=_models)
    return models
