"""Start a Dask cluster for predictions: one worker per GPU, or CPU worker processes.

xchm works with any ``distributed.Client`` (dask-jobqueue on SLURM, Kubernetes, a
scheduler address): create it and predictions use it, as for any Dask
computation. :func:`start` is the shortcut for one machine. It never replaces a
client that is already active.

Sizing on the CPU (measured in benchmarks/RESULTS.md): a prediction task spends
nearly all its time in the model, which runs under a per-process lock
(:func:`xchm.inference.runtime.device_lock`),
so a worker gets two threads (one reads the next block while the other runs the
model) and torch gets all of the worker's cores. Each worker process holds its
own copy of the model (1.2 GB for ViT-L), hence few processes.

Everything :func:`start` starts (scheduler, workers, nannies, dashboard) listens on
127.0.0.1 only, unless ``host=`` says otherwise: distributed alone would serve a
dashboard given as a bare port (``":8787"``) on every interface.

Dask's own log records follow xchm's logging level (:func:`dask_log_level`): with
Python's default (warnings) a cluster :func:`start` starts says nothing but warnings,
in this process (scheduler, nannies) and in its workers; ``xchm -v`` (or
``logging.getLogger("xchm").setLevel(logging.INFO)``) brings Dask's INFO lines back.

Workers share nothing with the client but the task graph: models travel as specs
(a checkpoint path or URL, fetched by each worker), and every client xchm uses gets a
worker plugin (:func:`prepare_workers`) that gives GDAL the worker's own S3 endpoint
(:func:`xchm.storage.gdal_environment`), so rasters read lazily from object storage
open on the workers as they do here.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import warnings
import weakref
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from xchm._optional import require
from xchm.errors import InputError, XCHMWarning

__all__ = [
    "start",
    "active_client",
    "prepare_workers",
    "gpu_count",
    "dask_log_level",
    "TORCH_THREADS_ENV",
    "LOOPBACK",
]

logger = logging.getLogger(__name__)

#: Environment variable read by workers to size torch's CPU thread pool.
TORCH_THREADS_ENV = "XCHM_TORCH_THREADS"
#: CPU cores per worker process that :func:`start` aims for.
CORES_PER_CPU_WORKER = 8
#: Interface :func:`start` listens on unless told otherwise: this machine only.
LOOPBACK = "127.0.0.1"


def active_client() -> Any:
    """Return the current ``distributed.Client`` (its workers prepared), or None."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    prepare_workers(client)
    return client


#: Clients whose workers have xchm's plugin (registered once per client).
_PREPARED: weakref.WeakSet[Any] = weakref.WeakSet()
#: The plugin's name on the scheduler: a second registration replaces the first.
PLUGIN_NAME = "xchm-storage"


def prepare_workers(client: Any) -> None:
    """Register xchm's worker plugin on ``client``'s cluster (once; workers joining later too).

    The plugin runs :func:`xchm.storage.gdal_environment` in each worker process, so
    GDAL there reads the worker's own ``AWS_ENDPOINT_URL`` (credentials stay the
    worker's own too: nothing is sent from the client).
    """
    if client in _PREPARED or getattr(client, "asynchronous", False):
        return
    client.register_plugin(_StoragePlugin(), name=PLUGIN_NAME)
    _PREPARED.add(client)


class _StoragePlugin(WorkerPlugin):
    """Runs in each worker process as it starts (and in those running already)."""

    name = PLUGIN_NAME
    idempotent = True

    def setup(self, worker: Any) -> None:
        from xchm.storage import gdal_environment

        gdal_environment()

    def teardown(self, worker: Any) -> None:
        """Nothing to undo: the variables live as long as the worker process."""


def gpu_count() -> int:
    """Count the CUDA GPUs visible here without initialising CUDA in this process.

    Uses dask-cuda's NVML count when it is installed, otherwise ``nvidia-smi -L``;
    both honour ``CUDA_VISIBLE_DEVICES`` (an empty value means no GPU).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return 0
    try:
        from dask_cuda.utils import get_n_gpus
    except ImportError:
        pass
    else:
        try:
            return int(get_n_gpus())
        except Exception:  # noqa: BLE001 - no driver: no usable GPU
            return 0
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    found = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    if visible is not None:
        found = min(found, len([d for d in visible.split(",") if d.strip()]))
    return found


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover


def dask_log_level() -> int:
    """Return the level of Dask's log records shown while a cluster :func:`start` started runs.

    The effective level of the ``xchm`` logger: WARNING by Python's default (Dask's
    start-up and shutdown INFO lines are not shown), INFO with ``xchm -v``. Pass
    ``silence_logs=`` to :func:`start` to choose otherwise.

    Examples
    --------
    >>> import logging
    >>> dask_log_level() == logging.getLogger("xchm").getEffectiveLevel()
    True
    """
    return logging.getLogger("xchm").getEffectiveLevel()


def _quiet_dask(level: int) -> Any:
    """Raise the ``distributed`` logger to ``level`` here; return what undoes it.

    ``silence_logs`` quiets only the stream handlers distributed installed itself; a
    handler of the application's (``logging.basicConfig`` before distributed is
    imported, a notebook's) would still get every INFO record.
    """
    dask_logger = logging.getLogger("distributed")
    before = dask_logger.level
    if dask_logger.getEffectiveLevel() < level:
        dask_logger.setLevel(level)
    return lambda: dask_logger.setLevel(before)


def _owning_client(cluster: Any, restore: Any = None) -> Any:
    """Return a Client that also closes ``cluster`` when it is closed (``with start():``).

    ``restore`` (if given) runs after the cluster closed: the log level set for it.
    """
    from distributed import Client

    class OwningClient(Client):
        def close(self, *args: Any, **kwargs: Any) -> Any:
            owned = self.cluster
            try:
                result = super().close(*args, **kwargs)
                if owned is not None:
                    owned.close()
            finally:
                if restore is not None and owned is not None:
                    restore()
            return result

    return OwningClient(cluster, set_as_default=True)


def _on_host(address: str | int, host: str) -> str:
    """Give a port-only address (``":8787"``, ``8787``) the interface ``host``.

    distributed binds a dashboard given as ``":PORT"`` to every interface
    (0.0.0.0), whatever the cluster's ``host``; an address with a host is kept.
    """
    text = str(address).strip()
    if text.isdigit():
        text = ":" + text
    if not text.startswith(":"):
        return text
    if ":" in host and not host.startswith("["):  # an IPv6 address
        host = f"[{host}]"
    return host + text


def start(
    gpus: int | str | None = "auto",
    threads_per_worker: int | None = None,
    *,
    n_workers: int | None = None,
    dashboard_address: str | int | None = ":8787",
    host: str = LOOPBACK,
    quiet: bool = False,
    **kwargs: Any,
) -> Any:
    """Start a local Dask cluster suited to predictions and return its Client.

    Parameters
    ----------
    gpus
        ``"auto"``: a ``dask_cuda.LocalCUDACluster`` with one worker per GPU when
        CUDA GPUs are visible (each worker sees its GPU as ``cuda:0``), otherwise CPU
        workers. An integer > 0: that many GPUs (needs ``xchm[gpu]``). ``None`` or 0:
        CPU workers even when GPUs are present.
    threads_per_worker
        Threads per worker (default 2: one reads the next block while the other
        runs the model; model work is serialised per process anyway).
    n_workers
        CPU workers only: worker processes (default one per 8 cores, at least one).
        Torch uses the worker's share of the cores.
    dashboard_address
        Where the dashboard listens (``None``: no dashboard). A port alone
        (``":8787"``, ``":0"``: any free port) listens on ``host``; give a host to
        listen elsewhere (``"0.0.0.0:8787"``: every interface).
    host
        Interface the scheduler, the workers, their nannies and the dashboard listen
        on. The default, ``127.0.0.1``, keeps them on this machine: the dashboard
        shows the computation to anyone who can reach it and has no login. Pass
        ``"0.0.0.0"`` (every interface) or this machine's address only to watch the
        dashboard from another machine on a network you trust (or forward the port:
        ``ssh -L 8787:127.0.0.1:8787 host``).
    quiet
        Do not print the dashboard link (it is logged either way).
    **kwargs
        Passed on to ``LocalCUDACluster`` / ``distributed.LocalCluster``
        (``memory_limit``, ``local_directory``, ...). ``silence_logs`` defaults to
        :func:`dask_log_level` (warnings only, unless xchm's logging asks for more).

    Returns
    -------
    distributed.Client
        The new client, set as Dask's default; close it (or use ``with``) when done.
        If a client is already active, that client is returned with a warning and no
        cluster is started.

    Raises
    ------
    InputError
        Bad ``gpus``, ``threads_per_worker``, ``n_workers`` or ``host``.
    MissingDependencyError
        GPUs requested but ``dask-cuda`` is missing (``pip install 'xchm[gpu]'``).

    Examples
    --------
    >>> import xchm.cluster
    >>> client = xchm.cluster.start(gpus=None, n_workers=1, dashboard_address=None,
    ...                             quiet=True)  # doctest: +SKIP
    >>> chm = image.chm.predict("my-checkpoint/").compute()  # doctest: +SKIP
    """
    for name, value in (("threads_per_worker", threads_per_worker), ("n_workers", n_workers)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise InputError(f"{name} must be a positive integer or None, got {value!r}")
    if gpus == "auto":
        n_gpus = gpu_count()
    elif gpus is None:
        n_gpus = 0
    elif isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 0:
        n_gpus = gpus
    else:
        raise InputError(f"gpus must be 'auto', None or a non-negative integer, got {gpus!r}")
    if not isinstance(host, str) or not host.strip() or "://" in host:
        raise InputError(
            f"host must be an interface address such as '127.0.0.1' or '0.0.0.0', got {host!r}"
        )

    if n_gpus > 0 and gpus != "auto":
        require("dask_cuda")  # asked for GPUs explicitly: say what is missing first
    client = active_client()
    if client is not None:
        warnings.warn(
            f"a Dask client is already active ({client.scheduler.address}); xchm uses it and "
            "starts no cluster. Close it first to start another.",
            XCHMWarning,
            stacklevel=2,
        )
        return client

    threads = threads_per_worker or 2
    if dashboard_address is None:  # no dashboard; its HTTP server (/health) on a free port
        kwargs["scheduler_kwargs"] = {
            "dashboard_address": _on_host(":0", host),
            **kwargs.get("scheduler_kwargs", {}),
        }
    else:
        dashboard_address = _on_host(dashboard_address, host)
    if n_gpus > 0:
        if n_workers is not None:
            raise InputError("n_workers is for CPU clusters; with GPUs there is one worker per GPU")
        if gpus == "auto":
            try:
                import dask_cuda  # noqa: F401
            except ImportError:
                warnings.warn(
                    f"{n_gpus} GPU(s) found but dask-cuda is not installed; starting CPU "
                    "workers. Install it with: pip install 'xchm[gpu]'",
                    XCHMWarning,
                    stacklevel=2,
                )
                n_gpus = 0
    level = kwargs.setdefault("silence_logs", dask_log_level())
    restore = _quiet_dask(level) if isinstance(level, int) and level > logging.NOTSET else None
    try:
        if n_gpus > 0:
            dask_cuda = require("dask_cuda")
            cluster = dask_cuda.LocalCUDACluster(
                CUDA_VISIBLE_DEVICES=kwargs.pop("CUDA_VISIBLE_DEVICES", list(range(n_gpus))),
                threads_per_worker=threads,
                host=host,
                dashboard_address=dashboard_address,
                **kwargs,
            )
            kind = f"{n_gpus} GPU worker(s)"
        else:
            from distributed import LocalCluster

            cores = _cores()
            workers = n_workers or max(1, cores // CORES_PER_CPU_WORKER)
            torch_threads = max(1, cores // workers)
            env = {**kwargs.pop("env", {}), TORCH_THREADS_ENV: str(torch_threads)}
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=threads,
                processes=True,
                host=host,
                dashboard_address=dashboard_address,
                env=env,
                **kwargs,
            )
            kind = f"{workers} CPU worker process(es), torch {torch_threads} thread(s) each"
    except BaseException:
        if restore is not None:
            restore()
        raise
    client = _owning_client(cluster, restore)
    link = client.dashboard_link if dashboard_address is not None else "(no dashboard)"
    logger.info("started %s; dashboard: %s", kind, link)
    if not quiet:
        print(f"xchm: started {kind}; Dask dashboard: {link}", file=sys.stderr)
    return client
