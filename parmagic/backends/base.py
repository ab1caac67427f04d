"""The small interface every backend implements.

A backend runs ``parmagic._worker.run_batch(ref, start, items)`` calls
somewhere and hands back ``concurrent.futures.Future`` objects. The run's
payload (compiled loop body and captured values) travels once per run: the
engine asks the backend to ``publish`` it and passes the returned reference in
every task; workers load it once and cache it by key.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .._worker import Payload, PayloadRef


class Backend:
    """Base class: capability flags plus the calls the engine makes."""

    #: option value that selects this backend
    name: str = "base"
    #: True when tasks run in other processes, so captured values must be pickled
    needs_pickling: bool = True
    #: True when tasks run in the kernel process (threads, serial)
    in_kernel: bool = False

    def __init__(self, n_workers: int):
        self.n_workers = n_workers

    def publish(self, payload: Payload) -> PayloadRef:
        """Make ``payload`` reachable by the workers; called once per run."""
        raise NotImplementedError

    def unpublish(self, ref: PayloadRef) -> None:
        """Release what ``publish`` made (temp files, scattered data)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on a worker; return a concurrent.futures.Future."""
        raise NotImplementedError

    def abort(self) -> None:
        """Stop running tasks now (interrupt): kill what must die; the next run must work."""

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes (the kernel's own pid for in-kernel backends)."""
        return []

    def describe(self) -> dict[str, Any]:
        """Facts for ``%parmagic status``."""
        return {"backend": self.name, "workers": self.n_workers, "pids": self.worker_pids()}
