"""What every ``xchm`` command shares: the parser, option types and early checks.

Exit statuses (documented in ``docs/cli.md``): 0 success; 1 the command failed
(bad input, output not writable, device missing...); 2 usage error (an unknown or
missing option, a value of the wrong kind, caught by the parser before any work);
3 ``xchm demo``'s model did not beat the training mean; 130 interrupted (Ctrl-C).
Failures print one line ``xchm: error: ...``; the traceback only with
``xchm --debug`` or ``XCHM_DEBUG=1``.

Light on imports, like :mod:`xchm.cli`: torch is imported only when ``--device``
is given, distributed only when a scheduler address is.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "HOST_HELP",
    "SCHEDULER_TIMEOUT_S",
    "Parser",
    "add_bands_argument",
    "add_deprecated_alias",
    "add_run_arguments",
    "run_config",
    "check_device",
    "check_writable",
    "connect",
    "default_of",
    "device",
    "int_at_least",
    "nodata",
    "nonnegative_float",
    "nonnegative_int",
    "positive_float",
    "positive_int",
]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: Seconds ``--scheduler ADDRESS`` waits for the scheduler to answer.
SCHEDULER_TIMEOUT_S = 5
#: Help of ``--host`` (``predict --scheduler auto`` and ``demo`` start clusters).
HOST_HELP = (
    "interface a cluster xchm starts listens on: scheduler, workers, dashboard (default "
    "127.0.0.1: this machine only; 0.0.0.0: every interface, and the dashboard has no login)"
)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, exit status 2.

    argparse prints the whole usage block before its message; xchm prints
    ``xchm: error: MESSAGE (see 'xchm predict --help')``, like every other error.
    Sub-command parsers made by ``add_subparsers`` are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line and exit with status 2."""
        line = " ".join(message.split())
        self.exit(EXIT_USAGE, f"xchm: error: {line} (see '{self.prog} --help')\n")


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: hidden from ``--help``, says what replaced it."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"xchm: warning: {option_string} is deprecated and will be removed in a future "
            f"release; use {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_deprecated_alias(
    parser: argparse.ArgumentParser, old: str, new: str, *, dest: str, **kwargs: Any
) -> None:
    """Keep the option spelling ``old`` working for one release as a hidden alias of ``new``.

    It stores into ``dest`` (the new option's) with the same ``type``/``choices``
    given in ``kwargs``, and prints a one-line deprecation warning when used.

    Examples
    --------
    >>> parser = Parser(prog="xchm demo")
    >>> _ = parser.add_argument("-o", "--output", default="out/demo")
    >>> add_deprecated_alias(parser, "--out", "-o/--output", dest="output")
    >>> parser.parse_args([]).output
    'out/demo'
    >>> "--out " in parser.format_help()  # hidden (only --output is listed)
    False
    """
    parser.add_argument(
        old,
        dest=dest,
        action=_DeprecatedAlias,
        new=new,
        default=argparse.SUPPRESS,  # the new option's default stands
        help=argparse.SUPPRESS,
        **kwargs,
    )


class _Bands(argparse.Action):
    """``--bands``: one string (several words are joined by commas), parsed at once.

    A bad spelling is a usage error (exit 2) naming the item, before any work.
    """

    def __init__(self, option_strings: list[str], dest: str, *, new: str | None = None, **kw: Any):
        self.new = new  # set for an old spelling: the option that replaced it
        super().__init__(option_strings, dest, **kw)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from xchm.errors import BandError
        from xchm.models.bands import parse_bands

        if self.new is not None:
            print(
                f"xchm: warning: {option_string} is deprecated and will be removed in a future "
                f"release; use {self.new}",
                file=sys.stderr,
            )
        text = ",".join(values) if isinstance(values, list) else values
        try:
            setattr(namespace, self.dest, parse_bands(text))
        except BandError as err:
            parser.error(f"argument {option_string}: {err}")


def add_bands_argument(
    parser: argparse.ArgumentParser | Any,
    *,
    words: bool = False,
    what: str = "input",
    old: str | None = None,
) -> None:
    """Add ``--bands`` (the one band syntax of every command that reads imagery).

    ``words=True`` also accepts the names as separate words (``--bands nir red
    green``), the spelling ``xchm chips build`` had; commands with positional inputs
    take one word, so that ``--bands`` cannot swallow a file name. ``old`` is a
    former spelling kept hidden for one release (it warns when used).

    Examples
    --------
    >>> parser = Parser(prog="xchm predict")
    >>> add_bands_argument(parser)
    >>> parser.parse_args(["--bands", "nir=4,red=3,green=2"]).bands
    {'nir': 4, 'red': 3, 'green': 2}
    >>> parser.parse_args(["--bands", "naip-rgbn"]).bands
    ('red', 'green', 'blue', 'nir')
    """
    from xchm.models.bands import SENSOR_LAYOUTS

    parser.add_argument(
        "--bands",
        action=_Bands,
        nargs="+" if words else None,
        metavar="SPEC",
        help=f"which {what} band is which: nir=4,red=3,green=2 (band numbers from 1, as in "
        "gdalinfo and QGIS, or band descriptions), nir,red,green (every band, in order) or a "
        f"sensor layout ({', '.join(SENSOR_LAYOUTS)}); default: the {what}'s band "
        "names (see docs/bands.md)",
    )
    if old is not None:
        parser.add_argument(
            old,
            dest="bands",
            action=_Bands,
            new="--bands",
            nargs="+",
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )


def add_precision_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """Add ``--precision`` (predict, evaluate, bench: one wording, argparse choices)."""
    from xchm.inference.runtime import PRECISIONS

    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=default,
        help=f"model arithmetic (default {default}): auto = bf16 on CUDA and on CPUs with "
        "native bf16, fp32 elsewhere; fp32, bf16 or fp16 (bf16/fp16 on other CPUs are "
        "emulated: slow)",
    )


def nodata(text: str) -> float | str | None:
    """Parse ``--nodata`` (an argparse type): a number, ``auto`` or ``none``.

    ``auto`` is the input's own nodata value and ``none`` no value (NaN is always
    missing), as for ``nodata=`` in the library.

    Examples
    --------
    >>> nodata("0"), nodata("auto"), nodata("None")
    (0.0, 'auto', None)
    """
    word = text.strip().lower()
    if word in ("auto", "none"):
        return None if word == "none" else "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number, 'auto' (the file's own) or 'none', got {text!r}"
        ) from None


def default_of(function: Callable[..., Any], name: str) -> Any:
    """Return the default of ``function``'s parameter ``name``: options take the library's.

    Examples
    --------
    >>> def predict(image, overlap=16): ...
    >>> default_of(predict, "overlap")
    16
    """
    return inspect.signature(function).parameters[name].default


def int_at_least(low: int) -> Callable[[str], int]:
    """Return an argparse type: an integer >= ``low``.

    Examples
    --------
    >>> int_at_least(256)("512")
    512
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            what = {0: "a non-negative integer", 1: "a positive integer"}.get(
                low, f"an integer >= {low}"
            )
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{low}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def _float(low: float, *, inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            what = f"a finite number {'>=' if inclusive else '>'} {low:g}"
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


positive_float = _float(0.0, inclusive=False)
nonnegative_float = _float(0.0, inclusive=True)


def device(text: str) -> str:
    """Check ``--device`` (an argparse type): a torch device string (``cpu``, ``cuda:1``, ``mps``).

    Checks the spelling only (whether the device exists here is :func:`check_device`'s
    job: with a remote scheduler it need not exist on this machine).
    """
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device; use cpu, cuda, cuda:N (N-th GPU) or mps"
        ) from None
    return text


def check_device(name: str | None) -> None:
    """Raise :class:`~xchm.errors.DeviceError` unless the device ``name`` exists here.

    Called before any work, so ``--device cuda`` on a machine without a GPU fails in
    a second, not after the data is read. None (the default device) always passes.
    """
    if name is None:
        return
    import torch

    from xchm.errors import DeviceError

    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {name}: CUDA is not available here (no NVIDIA GPU, driver or "
                "CUDA build of torch); leave --device out or pass --device cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(
                f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: Apple's MPS is not available here; use cpu")


def add_run_arguments(
    p: argparse.ArgumentParser,
    function: Callable[..., Any],
    config_name: str,
    options: dict[str, Any],
    *,
    weights_help: str,
    output_required: bool = True,
) -> None:
    """Add the options ``xchm train`` and ``xchm pretrain`` share.

    Run folder, model, weights, config file, resume, device, one option per
    ``options`` field (help: ``config_name.field``) and ``-q``. Without
    ``output_required`` the command checks ``-o`` itself (``xchm train --find-lr``
    writes nothing).
    """
    p.add_argument("-o", "--output", required=output_required, help="run directory")
    p.add_argument(
        "--model", default=default_of(function, "model"), help="preset or checkpoint directory"
    )
    p.add_argument("--weights", help=weights_help)
    p.add_argument("--config", help=f"JSON file of {config_name} fields")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
    p.add_argument(
        "--device", type=device, help="torch device (default: CUDA if present, else CPU)"
    )
    for name, kind in options.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=f"{config_name}.{name}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run_config(
    args: argparse.Namespace,
    config_type: Any,
    options: dict[str, Any],
    *,
    base: dict[str, Any] | None = None,
    **fixed: Any,
) -> Any:
    """Return the run's config: ``base``, then the ``--config`` file, options given, ``fixed``.

    Each later source overrides the earlier ones field by field (``base``: a recipe's
    fields). A bad config fails before the device is checked; both before any work.
    """
    settings: dict[str, Any] = dict(base or {})
    if args.config:
        settings.update(config_type.read_fields(args.config, name=f"--config {args.config}"))
    settings.update({n: getattr(args, n) for n in options if getattr(args, n) is not None})
    config = config_type.from_dict({**settings, **fixed})
    check_device(args.device)
    return config


def check_writable(folder: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Raise :class:`~xchm.errors.OutputError` unless a file can be made in ``folder``.

    Tries it (a nameless temporary file, gone at once): permission bits do not tell
    for root, read-only mounts or network file systems. ``target`` is the output
    named in the message.
    """
    from xchm.errors import OutputError

    where = Path(folder)
    if not where.is_dir():
        raise OutputError(
            f"cannot write {target}: folder {where} does not exist; create it first or "
            "choose another output path"
        )
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as err:
        raise OutputError(
            f"cannot write {target}: folder {where} is not writable ({err.strerror or err}); "
            "choose another output path"
        ) from None


def connect(address: str, timeout: float = SCHEDULER_TIMEOUT_S) -> Any:
    """Return a ``distributed.Client`` of the scheduler at ``address``, or fail in ``timeout`` s.

    Raises
    ------
    InputError
        Nothing answers at ``address`` within ``timeout`` seconds, or the address is
        malformed.
    """
    from distributed import Client

    from xchm.errors import InputError

    try:
        return Client(address, timeout=timeout)
    except (OSError, ValueError, TypeError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise InputError(
            f"no Dask scheduler answered at {address} within {timeout:g} s ({detail}); check "
            "the address and that the scheduler runs, or use --scheduler auto (a local "
            "cluster) or local (threads)"
        ) from None
