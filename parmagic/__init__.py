"""parmagic: run a notebook cell's loops on every core, with the serial result.

In a notebook::

    %load_ext parmagic

    %%parallel -n 4
    results = []
    for i in range(10):
        results.append(slow_power(i, 5))

From Python::

    import parmagic
    squares = parmagic.pmap(slow_power, range(10), [5] * 10, n_jobs=4)

``import parmagic`` imports neither IPython nor ipywidgets; the magics load
them when the extension is loaded.
"""

from __future__ import annotations

from typing import Any

from .api import cache_info, clear_cache, pmap, run_cell, shutdown, status
from .engine import last_run, recent_runs
from .errors import (
    BackendUnavailableError,
    CacheError,
    CapturedChangeError,
    CollectedErrors,
    IterationTimeoutError,
    ParmagicError,
    RefusedLoopError,
    RemoteTraceback,
    UnsendableValueError,
    WorkerDiedError,
    WritebackError,
)
from .options import OptionError, Options, config, defaults, set_defaults
from .record import IterationRecord, RunRecord

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "CacheError",
    "CapturedChangeError",
    "CollectedErrors",
    "IterationRecord",
    "IterationTimeoutError",
    "OptionError",
    "Options",
    "ParmagicError",
    "RefusedLoopError",
    "RemoteTraceback",
    "RunRecord",
    "UnsendableValueError",
    "WorkerDiedError",
    "WritebackError",
    "cache_info",
    "clear_cache",
    "config",
    "defaults",
    "last_run",
    "load_ipython_extension",
    "pmap",
    "recent_runs",
    "run_cell",
    "set_defaults",
    "shutdown",
    "status",
    "unload_ipython_extension",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext parmagic``: register the magics and start the pool in the background."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext parmagic``: shut the pools down."""
    from .magics import unload

    unload(ipython)
