"""Per-process model cache, device choice and the GPU lock.

Tasks never carry a model: they carry a :class:`ModelSpec` (a preset name, or a
checkpoint path or URL, plus a content hash). Each worker process loads the model once
and reuses it. The device is chosen here, on the worker, never on the client.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from xchm.errors import (
    DeviceError,
    InputError,
    InputTypeError,
    ModelNotFoundError,
    WeightsError,
)
from xchm.storage import Location, location

if TYPE_CHECKING:
    from xchm.models.network import CanopyHeightModel

__all__ = [
    "ModelSpec",
    "spec_for",
    "get_model",
    "evaluating",
    "choose_device",
    "device_lock",
    "use_cpu_threads",
    "tune_cpu_allocator",
    "PRECISIONS",
    "check_precision",
    "native_bf16_cpu",
    "autocast_dtype",
    "COMPILE_MODES",
    "compile_mode",
]

# Loaded models, least recently used first; a few at most (each may be GBs).
_CACHE: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_CACHE_SIZE = 4
_CACHE_LOCK = threading.Lock()
_DEVICE_LOCKS: dict[str, threading.Lock] = {}
# Models handed to predict as objects: reachable in this process only.
_LOCAL_MODELS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class ModelSpec:
    """What a task needs to get its model: small, picklable, hashable."""

    kind: str
    """``"preset"``, ``"checkpoint"`` or ``"local"`` (an in-process object)."""
    source: str
    """Preset name, checkpoint directory, or the local object's token."""
    digest: str
    """Content hash (checkpoint weights SHA-256, weights file, or card digest)."""
    options: tuple[tuple[str, Any], ...] = field(default=())
    """Keyword arguments for ``load_model`` (presets only)."""


def _frozen(options: Any) -> str:
    """Storage options as hashable text (a spec is a cache key); see :func:`_thawed`."""
    return json.dumps(dict(options), sort_keys=True, default=str) if options else ""


def _thawed(spec: ModelSpec) -> dict[str, Any]:
    text = dict(spec.options).get("storage_options") or ""
    return dict(json.loads(text)) if text else {}


def _checkpoint_digest(spec: ModelSpec) -> str:
    from xchm.models.checkpoint import read_card

    _, meta = read_card(location(spec.source, _thawed(spec)))
    return str(meta["weights"]["sha256"])


def _weights_option(role: str, weights: Any) -> tuple[tuple[str, Any], str]:
    """Return the spec option for a weights path or URL, and a text of its version."""
    if location(weights).is_url:
        from xchm.storage.cache import remote_version

        source = location(weights)  # each worker fetches it (once per machine)
        version = remote_version(source)  # raises, naming the URL, if nothing is there
        return (role, source.text), f"{source.text}:{version}"
    path = Path(str(weights)).expanduser().resolve()
    if not path.exists():
        raise WeightsError(f"{role} path {str(path)!r} does not exist")
    from xchm.models.weights import check_weights_file

    check_weights_file(path)  # a text file fails now, not on the worker
    stat = path.stat()
    return (role, str(path)), f"{path}:{stat.st_size}:{stat.st_mtime_ns}"


def spec_for(
    model: Any, *, weights: Any = None, backbone_weights: Any = None
) -> tuple[ModelSpec, Any]:
    """Describe ``model`` (object, checkpoint path or preset name); return the spec and card.

    ``weights`` and ``backbone_weights`` go with a preset name to ``load_model`` on the
    worker (paths or URLs; the digest changes with their content).
    """
    from xchm.models.presets import PRESETS, get_preset

    if isinstance(model, str | os.PathLike) and str(model) in PRESETS:
        given_options: list[tuple[str, Any]] = []
        versions = []
        for role, given in (("weights", weights), ("backbone_weights", backbone_weights)):
            if given is not None:
                option, version = _weights_option(role, given)
                given_options.append(option)
                versions.append(f"{role}={version}")
        digest = str(model)
        if versions:
            digest = hashlib.sha256("\n".join(versions).encode()).hexdigest()
        # The preset's default card, without building the model on the client.
        card = get_preset(str(model)).default_card()
        return ModelSpec("preset", str(model), digest, tuple(given_options)), card
    if isinstance(model, Location) or (isinstance(model, str) and location(model).is_url):
        from xchm.models.checkpoint import read_card

        where = location(model)
        card, meta = read_card(where)
        options = (("storage_options", _frozen(where.storage_options)),)
        return ModelSpec("checkpoint", str(where), str(meta["weights"]["sha256"]), options), card
    if isinstance(model, str | os.PathLike):
        path = Path(model).expanduser().resolve()
        if path.is_file():  # e.g. a reference project's .pth: workers load folders only
            raise ModelNotFoundError(
                f"model {str(model)!r} is a file, not a checkpoint directory: convert it once "
                f"with `xchm models import {model} -o DIR` (or xchm.models.reference_io."
                "import_reference) and pass DIR, or pass xchm.load_model(path) itself"
            )
        if not path.is_dir():
            raise ModelNotFoundError(
                f"model {str(model)!r} is neither a preset {sorted(PRESETS)} nor an existing "
                "checkpoint directory"
            )
        from xchm.models.checkpoint import read_card

        card, meta = read_card(path)
        spec = ModelSpec("checkpoint", str(path), str(meta["weights"]["sha256"]))
        return spec, card
    local_card = getattr(model, "card", None)
    if local_card is None or not hasattr(model, "features"):
        raise InputTypeError(
            f"model must be a CanopyHeightModel (xchm.load_model), a checkpoint directory or a "
            f"preset name {sorted(PRESETS)}, got {type(model).__name__}"
        )
    # A fresh token per call: the caller may train the object further between calls.
    token = uuid.uuid4().hex
    _LOCAL_MODELS[token] = model
    return ModelSpec("local", token, local_card.digest()), local_card


def choose_device(device: str | None) -> Any:
    """Pick the torch device on the worker: CUDA when present, else the CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise DeviceError(
            f"device={device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={device!r} was requested but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(
            f"device={device!r} was requested but this machine has "
            f"{torch.cuda.device_count()} GPU(s) (cuda:0 ...)"
        )
    return dev


#: What ``precision=`` accepts: "auto" is bf16 where the hardware computes it natively.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_precision(precision: Any) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`, else raise InputError."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InputError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}"
        )
    return precision


@functools.cache
def cpu_flags() -> frozenset[str]:
    """Return the CPU's feature flags from /proc/cpuinfo (empty where it cannot be read).

    torch has no public query for bf16/fp16 support (``torch.backends.cpu.
    get_cpu_capability()`` says "AVX512" for CPUs with and without those instructions),
    and oneDNN *emulates* them elsewhere: measured ~100x slower than fp32 on an AVX2
    EPYC (docs/predict.md). Other systems than Linux report nothing (fp32), the safe side.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX-BF16; :func:`cpu_flags`)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def autocast_dtype(precision: str, device: Any) -> Any:
    """Return the dtype the model runs in under autocast on ``device`` (None: fp32).

    "auto": bf16 on CUDA and on CPUs with native bf16 (:func:`native_bf16_cpu`), fp32
    elsewhere. "bf16"/"fp16" are honoured wherever asked (slow where emulated).
    """
    import torch

    check_precision(precision)
    if precision == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and native_bf16_cpu())
        return torch.bfloat16 if native else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


#: ``torch.compile`` modes predict accepts (``compile=True`` is "default").
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(compile: Any) -> str | None:
    """Return the ``torch.compile`` mode that ``compile=`` asks for (None: eager).

    False/None: eager; True: "default"; a mode name: that mode ("reduce-overhead"
    records CUDA graphs). Anything else is an InputError listing the modes.
    """
    if compile is None or compile is False:
        return None
    if compile is True:
        return "default"
    if isinstance(compile, str) and compile in COMPILE_MODES:
        return compile
    raise InputError(
        f"compile must be True, False or a torch.compile mode {', '.join(map(repr, COMPILE_MODES))}"
        f", got {compile!r}"
    )


def _wanted_cpu_threads() -> int | None:
    """Torch threads a CPU block should use here, or None to leave torch's default.

    ``XCHM_TORCH_THREADS`` (set by :func:`xchm.cluster.start`) wins; in another Dask
    worker the cores are shared by its threads; outside a worker torch decides.
    """
    from xchm.cluster import TORCH_THREADS_ENV

    wanted = os.environ.get(TORCH_THREADS_ENV, "")
    if wanted.isdigit() and int(wanted) > 0:
        return int(wanted)
    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except (ImportError, ValueError):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(nthreads, 1))


_ALLOCATOR_TUNED = False
# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_cpu_allocator() -> None:
    """Let glibc keep torch's large CPU buffers in a Dask worker (once per process).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also
    freezes glibc's mmap threshold at 128 KiB: every activation buffer of a forward
    pass is then mmap-ed, faulted in, zeroed and unmapped again, and ViT-S ran at
    half speed in a worker (benchmarks/RESULTS.md). Raising both thresholds with
    ``mallopt`` at run time restores heap reuse; Dask's own ``malloc_trim`` calls
    under memory pressure still hand memory back. No-op outside a worker or glibc.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return
    _ALLOCATOR_TUNED = True
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return
    mallopt(_M_MMAP_THRESHOLD, 64 << 20)
    mallopt(_M_TRIM_THRESHOLD, 256 << 20)


def use_cpu_threads() -> None:
    """Size torch's CPU thread pool for this thread, before a block runs the model.

    Per block and per thread, not once per process: under ``OMP_NUM_THREADS=1``
    (what Dask's nanny sets) torch's thread count is a per-thread OpenMP setting, so
    a count set in the thread that loaded the model does not reach the worker's other
    threads (measured: 1 thread there instead of 2, hence a third of the speed).
    """
    wanted = _wanted_cpu_threads()
    if wanted is None:
        return
    import torch

    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def _same_device(model: Any, device: Any) -> bool:
    param = next(model.parameters(), None)
    return param is None or param.device == device


def _where() -> str:
    """Name this process as a user would in an error: worker address or host."""
    import socket

    try:
        from distributed import get_worker

        return f"Dask worker {get_worker().address} on {socket.gethostname()}"
    except (ImportError, ValueError):
        return f"process {os.getpid()} on {socket.gethostname()}"


def _check_visible(spec: ModelSpec) -> None:
    """Fail clearly when the files a spec names cannot be read in this process."""
    if spec.kind == "checkpoint" and location(spec.source).is_url:
        return  # fetched by URL: nothing needs to be shared
    paths = [Path(spec.source) / "card.json"] if spec.kind == "checkpoint" else []
    paths += [
        Path(value)
        for key, value in spec.options
        if key in ("weights", "backbone_weights") and not location(value).is_url
    ]
    for path in paths:
        if not os.access(path, os.R_OK):
            raise ModelNotFoundError(
                f"{path} cannot be read by {_where()}; every worker must see the model at the "
                "same path: put it on a shared file system or copy it to each worker"
            )


def get_model(spec: ModelSpec, device: Any, compile: str | None = None) -> CanopyHeightModel:
    """Return the inference model for ``spec`` on ``device``, built once per process.

    That is :func:`xchm.models.fold.for_inference` of the loaded model: BatchNorm folded
    into the decoder's convolutions, channels-last, the backbone shared. A caller's own
    model object is never changed nor copied whole (no second 1.2 GB ViT-L): its
    backbone is shared when it already sits on ``device``. ``compile`` is a
    ``torch.compile`` mode (see :func:`compile_mode`). Run it inside :func:`evaluating`.
    """
    key = (spec, str(device), compile)
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is not None:
            _CACHE.move_to_end(key)
            return model
        if spec.kind == "local":
            source = _LOCAL_MODELS.get(spec.source)
            if source is None:
                raise ModelNotFoundError(
                    "this model object exists only in the client process; save it with "
                    "model.save(DIR) and pass DIR to predict so that workers can load it"
                )
            if not _same_device(source, device):
                import copy

                source = copy.deepcopy(source).to(device)  # never move the caller's model
            # One caller's object at a time: an older one's view would keep it alive.
            for old in [k for k in _CACHE if k[0].kind == "local"]:
                del _CACHE[old]
        else:
            from xchm.models.api import load_model

            _check_visible(spec)
            if spec.kind == "checkpoint" and _checkpoint_digest(spec) != spec.digest:
                raise WeightsError(
                    f"checkpoint {spec.source!r} changed since the graph was built (SHA-256 "
                    "differs); rebuild the prediction"
                )
            if spec.kind == "checkpoint":
                source = load_model(spec.source, storage_options=_thawed(spec))
            else:
                source = load_model(spec.source, **dict(spec.options))
            source = source.to(device).eval()
        from xchm.models.fold import for_inference

        model = for_inference(source)
        if compile is not None:
            import torch

            model = torch.compile(model, mode=None if compile == "default" else compile)
        _CACHE[key] = model
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return cast("CanopyHeightModel", model)


@contextmanager
def evaluating(model: Any) -> Iterator[Any]:
    """Put every module in eval mode for the block, then restore each one's mode.

    Call it holding :func:`device_lock`: a caller's model may be shared by tasks.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def device_lock(device: Any) -> threading.Lock:
    """One lock per device and process: GPU work is serialised, reading is not."""
    with _CACHE_LOCK:
        return _DEVICE_LOCKS.setdefault(str(device), threading.Lock())
