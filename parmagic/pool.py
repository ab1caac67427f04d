"""The per-kernel pools: one loky pool and one thread pool, reused by every cell.

``get_backend`` maps options to a backend over these pools; ``start_in_background``
warms the loky pool at ``%load_ext``; ``shutdown`` ends everything (extension
unload, ``%parmagic shutdown``, interpreter exit).
"""

from __future__ import annotations

import atexit
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .backends.base import Backend
from .backends.local import SerialBackend, ThreadBackend
from .backends.loky import LokyBackend, executor_pids, get_executor, kill_executor
from .interrupts import held_interrupts
from .options import Options
from .worker import budget
from .worker.batch import warm_up

_lock = threading.Lock()
_threads: ThreadPoolExecutor | None = None
_extra: dict[str, Any] = {}  # optional backends (multiprocessing, dask) by key


def get_backend(options: Options) -> Backend:
    """The backend ``options`` ask for, over the kernel's persistent pools."""
    n = options.n_workers
    if options.backend == "serial" or (n == 1 and options.backend != "dask"):
        return SerialBackend()
    if options.backend == "threads":
        return ThreadBackend(n, _thread_pool(n))
    if options.backend == "multiprocessing":
        return _keyed("multiprocessing", n, lambda: _mp_backend(n))
    if options.backend == "dask":
        # -1/-2 mean "all the cluster's threads", not this machine's cores
        wanted = options.n_jobs if options.n_jobs > 0 else None
        backend = _keyed(
            f"dask:{options.scheduler}", n, lambda: _dask_backend(wanted, options.scheduler)
        )
        backend.n_workers = wanted
        return backend
    return LokyBackend(n)


def _thread_pool(n: int) -> ThreadPoolExecutor:
    global _threads
    with _lock:
        if _threads is None or _threads._max_workers != n:
            # ThreadPoolExecutor cannot resize: replace it (idle threads exit with it)
            old, _threads = _threads, ThreadPoolExecutor(n, thread_name_prefix="parmagic")
            if old is not None:
                old.shutdown(wait=False)
        return _threads


def _keyed(key: str, n: int, make: Any) -> Backend:
    with _lock:
        backend = _extra.get(key)
        if backend is None or not backend.serves(n):
            if backend is not None:
                backend.close()
            backend = _extra[key] = make()
        return backend


def _mp_backend(n: int) -> Backend:
    from .backends.mp import MultiprocessingBackend

    return MultiprocessingBackend(n)


def _dask_backend(n: int | None, scheduler: str | None) -> Backend:
    from .backends.dask import DaskBackend

    return DaskBackend(n, scheduler)


def start_in_background(n_workers: int) -> None:
    """Start the loky pool and import the worker module in each worker, without blocking.

    Submitting returns at once; the workers start while the user types the next cell.
    """
    with held_interrupts():  # a worker half-started would wait for its set-up forever
        executor = get_executor(n_workers)
        for _ in range(n_workers):
            executor.submit(warm_up)


def status() -> dict[str, Any]:
    """Pool facts for ``%parmagic status``: backend, workers, pids, memory."""
    pids = executor_pids()
    info: dict[str, Any] = {"backend": "loky", "workers": len(pids), "pids": pids}
    info["memory_mb"] = {pid: _rss_mb(pid) for pid in pids}
    info["thread_pool"] = _threads._max_workers if _threads is not None else 0
    info["other"] = {key: _describe(backend) for key, backend in sorted(_extra.items())}
    # the BLAS/OpenMP threads each loky worker may run (worker.budget); None without a pool
    info["thread_budget"] = _budget_line(len(pids))
    return info


def _budget_line(n_workers: int) -> str | None:
    if not n_workers:
        return None
    try:
        return budget.for_workers(n_workers).describe()
    except Exception as exc:  # must not break %parmagic status
        return f"unknown ({exc})"


def _describe(backend: Backend) -> dict[str, Any]:
    try:
        return backend.describe()
    except Exception as exc:  # a cluster that went away must not break %parmagic status
        return {"backend": backend.name, "error": str(exc)}


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def shutdown() -> None:
    """End every pool this kernel started; the next run starts fresh ones."""
    global _threads
    kill_executor()
    with _lock:
        if _threads is not None:
            _threads.shutdown(wait=False, cancel_futures=True)
            _threads = None
        for backend in _extra.values():
            backend.close()
        _extra.clear()


atexit.register(shutdown)
