"""Render the ``xchm`` command's help as Markdown (``docs/cli.md``).

Generated, not written by hand, so the reference cannot drift from the parser: a
test compares ``docs/cli.md`` with :func:`render`. Regenerate it with
``python -m xchm.cli_reference > docs/cli.md``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["render"]

_WIDTH = "88"


@contextmanager
def _fixed_width() -> Iterator[None]:
    """Make argparse wrap at a fixed width, whatever the terminal."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _WIDTH
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:  # argparse has no public way to list sub-commands
        if isinstance(action, argparse._SubParsersAction):
            found.extend(action.choices.items())
    return found


def render() -> str:
    """Return the Markdown reference of every ``xchm`` sub-command.

    Examples
    --------
    >>> "## xchm predict" in render()
    True
    """
    from xchm.cli import build_parser

    lines = [
        "# Command line",
        "",
        "Generated from the parser (`python -m xchm.cli_reference > docs/cli.md`).",
        "Every command exits 0 on success and 1 on a usage or input error, printing one",
        "line `xchm: error: ...`; `xchm demo` exits 3 when its model does not beat the",
        "training mean.",
        "",
    ]
    with _fixed_width():
        root = build_parser()

        def walk(parser: argparse.ArgumentParser, name: str) -> None:
            lines.extend([f"## {name}", "", "```text", parser.format_help().rstrip(), "```", ""])
            for sub_name, sub in _subparsers(parser):
                walk(sub, f"{name} {sub_name}")

        walk(root, "xchm")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
