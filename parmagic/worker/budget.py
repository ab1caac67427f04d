"""The thread budget: workers x BLAS/OpenMP threads never exceed the cores.

N worker processes that each run OpenBLAS, MKL or OpenMP with one thread per core
run N x cores threads: they fight for the cores (OpenMP pools spin while they
wait) and a loop of scikit-learn fits gets slower than the plain loop. As
joblib's loky backend does, each worker limits these pools to
``max(1, cores // workers)``, unless the user chose a limit:

* an environment variable set in the kernel (``OMP_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``, ...): the workers inherit it and
  the libraries it governs are left alone;
* a ``threadpoolctl`` limit in force in the kernel (``threadpool_limits(1)``): a
  kernel library running fewer threads than it would by default is shipped with
  that count.

The kernel computes a :class:`ThreadBudget` per run (:func:`for_workers`); the
worker applies it (:func:`apply`) in its initializer and at each batch start:
the environment variables first, so that libraries imported later start with
the limit, then ``threadpoolctl`` on the libraries already loaded (a library
reads its variable only when it loads). Re-applying is a dict lookup unless new
modules were imported since the last time.

Imports nothing of parmagic (it runs in workers).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

#: Variables the worker sets when the kernel has none of them (joblib's list).
BLAS_VARS = (
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
OMP_VAR = "OMP_NUM_THREADS"
OTHER_VARS = ("NUMEXPR_NUM_THREADS",)
ALL_VARS = (OMP_VAR, *BLAS_VARS, *OTHER_VARS)

#: The variables each library reads at load, first found wins (their own docs).
_CHAIN = {
    "openblas": ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", OMP_VAR),
    "mkl": ("MKL_NUM_THREADS", OMP_VAR),
    "blis": ("BLIS_NUM_THREADS", OMP_VAR),
    "flexiblas": ("FLEXIBLAS_NUM_THREADS", OMP_VAR),
    "openmp": (OMP_VAR,),
}


@dataclass(frozen=True)
class ThreadBudget:
    """What a worker applies: the default limit, its environment, the user's own limits."""

    limit: int  # max(1, cores // workers)
    env: tuple[tuple[str, str], ...] = ()  # variables to set in the worker
    #: internal_api (openblas, mkl, openmp, ...) -> threads, from a threadpoolctl limit in
    #: force in the kernel (it wins over the budget)
    kernel_limits: tuple[tuple[str, int], ...] = ()
    #: variables the user set in the kernel (they win; shown by ``%parmagic status``)
    user_env: tuple[tuple[str, str], ...] = ()
    cores: int = 1
    workers: int = 1

    def describe(self) -> str:
        """One line for ``%parmagic status``."""
        text = f"{self.limit} per worker ({self.cores} cores / {self.workers} workers)"
        user = [f"{k}={v}" for k, v in self.user_env] + [
            f"{api}={n} (threadpoolctl in the kernel)" for api, n in self.kernel_limits
        ]
        if user:
            text += "; set by you: " + ", ".join(user)
        return text


def for_workers(n_workers: int, cores: int | None = None) -> ThreadBudget:
    """The budget for a pool of ``n_workers`` processes on this machine (kernel side)."""
    cores = cores or _cores()
    limit = max(1, cores // max(1, n_workers))
    environ = os.environ
    user_env = tuple((k, environ[k]) for k in ALL_VARS if k in environ)
    if OMP_VAR in environ:
        # OpenBLAS, MKL and BLIS fall back to OMP_NUM_THREADS: a BLAS variable set here
        # would override the user's choice for them
        wanted: tuple[str, ...] = OTHER_VARS
    else:
        wanted = ALL_VARS
    env = tuple((k, str(limit)) for k in wanted if k not in environ)
    return ThreadBudget(limit, env, _kernel_limits(), user_env, cores, n_workers)


def _cores() -> int:
    # loky reads the cgroup's files each time (0.3 ms): a few seconds' answer is as good
    now = time.monotonic()
    if now - _cores_seen[1] > CORES_FRESH_SECONDS:
        _cores_seen[:] = [_count_cores(), now]
    return _cores_seen[0]


#: How long a count of the usable cores is reused.
CORES_FRESH_SECONDS = 5.0
_cores_seen: list = [1, -1e9]


def _count_cores() -> int:
    try:
        from loky import cpu_count

        return max(1, cpu_count())
    except Exception:  # no loky: the affinity mask
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


class _Seen:
    """Per process: the threadpoolctl controller, rebuilt only when modules were imported."""

    modules = -1
    controller: Any = None
    applied: tuple[ThreadBudget | None, int] = (None, -1)


_kernel = _Seen()


def _controller(seen: _Seen) -> Any:
    n = len(sys.modules)
    if seen.controller is None or seen.modules != n:
        from threadpoolctl import ThreadpoolController

        seen.controller, seen.modules = ThreadpoolController(), n
    return seen.controller


def _natural(internal_api: str, environ: Any) -> int:
    """The threads a library runs when nobody limits it: its variable, else the cores."""
    for var in _CHAIN.get(internal_api, (OMP_VAR,)):
        value = environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    if internal_api == "mkl":  # MKL counts physical cores
        try:
            from loky import cpu_count

            return max(1, cpu_count(only_physical_cores=True))
        except Exception:
            pass
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def _kernel_limits() -> tuple[tuple[str, int], ...]:
    """Libraries loaded in the kernel that run fewer threads than their default: the user
    limited them (``threadpool_limits``), and the workers get the same limit."""
    if "threadpoolctl" not in sys.modules and not _loaded_native():
        return ()
    try:
        controller = _controller(_kernel)
        found: dict[str, int] = {}
        for lib in controller.lib_controllers:
            n = lib.get_num_threads()
            if n is not None and n < _natural(lib.internal_api, os.environ):
                found[lib.internal_api] = min(n, found.get(lib.internal_api, n))
        return tuple(sorted(found.items()))
    except Exception:  # threadpoolctl missing or confused: no kernel limits known
        return ()


def _loaded_native() -> bool:
    # numpy, scipy, sklearn, torch...: the libraries that bring BLAS/OpenMP with them
    return any(m in sys.modules for m in ("numpy", "scipy", "sklearn", "torch", "numexpr"))


_worker = _Seen()


def apply(budget: ThreadBudget | None) -> None:
    """In a worker: set the budget's variables and limit the pools already loaded.

    Cheap when nothing changed since the last call (same budget, no new module).
    """
    if budget is None:
        return
    n = len(sys.modules)
    if _worker.applied == (budget, n):
        return
    for key, value in budget.env:
        if os.environ.get(key) != value:
            os.environ[key] = value
    if _loaded_native() or "threadpoolctl" in sys.modules:
        try:
            _limit_loaded(budget)
        except Exception:  # no threadpoolctl, or a library it cannot drive: leave it be
            pass
    _worker.applied = (budget, len(sys.modules))


def _limit_loaded(budget: ThreadBudget) -> None:
    controller = _controller(_worker)
    kernel = dict(budget.kernel_limits)
    user_vars = {k for k, _ in budget.user_env}
    for lib in controller.lib_controllers:
        api = lib.internal_api
        if api in kernel:
            target = kernel[api]
        elif any(var in user_vars for var in _CHAIN.get(api, (OMP_VAR,))):
            continue  # the user's variable governs this library: it read it at load
        else:
            target = budget.limit
        if lib.get_num_threads() != target:
            lib.set_num_threads(target)


def in_force() -> dict[str, Any]:
    """This process's libraries and their thread counts (for tests and status)."""
    try:
        from threadpoolctl import threadpool_info

        return {"libraries": threadpool_info()}
    except Exception as exc:
        return {"error": str(exc)}
