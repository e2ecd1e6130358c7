"""Render the ``xchm`` command's help as Markdown (``docs/cli.md``).

Generated, not written by hand, so the reference cannot drift from the parser: a
test compares ``docs/cli.md`` with :func:`render`. Regenerate it with
``python -m xchm.cli.reference > docs/cli.md``.
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
        "Generated from the parser (`python -m xchm.cli.reference > docs/cli.md`).",
        "",
        "Exit statuses: every command exits 0 on success; 1 when it fails (an input it",
        "cannot read, an output it may not write, a device that is missing, a scheduler",
        "that does not answer...); 2 on a usage error (an unknown or missing option, a",
        "value of the wrong kind such as `--chunks 0`: the parser refuses it before any",
        "work); 3 when `xchm demo`'s model does not beat the training mean; 130 when",
        "interrupted (Ctrl-C). A failure prints one line, `xchm: error: ...`, saying what",
        "is wrong and what to do; `xchm --debug COMMAND ...` (or `XCHM_DEBUG=1`) shows the",
        "Python traceback instead.",
        "",
        "Clusters that xchm starts (`xchm predict --scheduler auto`, `xchm demo`) listen",
        "on 127.0.0.1 only, dashboard included; `--host 0.0.0.0` opens them to the",
        "network (the dashboard has no login).",
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
