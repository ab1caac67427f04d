"""Backends that run in the kernel process: ``serial`` and ``threads``.

No pickling: the payload is handed over as it is, captured objects are shared.
Output of iterations is captured per thread (see ``parmagic.worker.batch.RoutingStream``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..worker.batch import raise_in_thread
from ..worker.protocol import InlineRef, Payload, PayloadRef
from .base import Backend


class SerialBackend(Backend):
    """Runs each batch at once in the kernel's own thread (``-n 1``): ``%debug`` works."""

    name = "serial"
    in_kernel = True
    runs_in_order = True
    may_finish_in_kernel = False
    pickles_locals = False
    output_per_thread = True

    def __init__(self, n_workers: int = 1):
        super().__init__(1)

    def publish(self, payload: Payload) -> PayloadRef:
        """The payload stays in the kernel."""
        return InlineRef(payload)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run now; the returned future is already done."""
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: B036 - handed to the engine like a worker's error
            future.set_exception(exc)
        return future

    def worker_pids(self) -> list[int]:
        """The kernel itself."""
        return [os.getpid()]


class ThreadBackend(Backend):
    """A persistent thread pool in the kernel: no pickling, shared captured objects."""

    name = "threads"
    in_kernel = True
    pickles_locals = False
    output_per_thread = True
    kernel_thread_timeouts = True

    def __init__(self, n_workers: int, executor: ThreadPoolExecutor):
        super().__init__(n_workers)
        self.executor = executor
        self._threads: set[int] = set()
        self._lock = threading.Lock()

    def publish(self, payload: Payload) -> PayloadRef:
        """The payload stays in the kernel."""
        return InlineRef(payload)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Queue ``fn(*args)`` on the pool, remembering which threads run our tasks."""
        return self.executor.submit(self._tracked, fn, *args)

    def _tracked(self, fn: Callable[..., Any], *args: Any) -> Any:
        ident = threading.get_ident()
        with self._lock:
            self._threads.add(ident)
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._threads.discard(ident)

    def abort(self) -> None:
        """Raise KeyboardInterrupt in every thread still running one of our tasks."""
        with self._lock:
            idents = list(self._threads)
        for ident in idents:
            raise_in_thread(ident, KeyboardInterrupt)

    def worker_pids(self) -> list[int]:
        """Threads live in the kernel process."""
        return [os.getpid()]
