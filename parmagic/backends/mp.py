"""The ``multiprocessing`` backend: a standard-library process pool kept per kernel.

A ``concurrent.futures.ProcessPoolExecutor`` on a ``forkserver`` context
(``spawn`` where forkserver does not exist). Plain ``fork`` is not an option:
the kernel is multithreaded (ipykernel runs its own threads, and so does the
engine), and forking a multithreaded process can copy a lock that another
thread holds, deadlocking the child. Forkserver forks each worker from a small,
single-threaded server process instead, and is much cheaper than spawn.

The pool is created on first use, reused by every run, rebuilt when it breaks
(a worker died) or is aborted (interrupt), and shut down by :meth:`close`. The
standard pickler only ever sees :func:`parmagic._worker.run_batch` and a
:class:`~parmagic._worker.FileRef`: the notebook's functions and captured values
travel cloudpickled inside the payload file, written once per run.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from .. import _worker
from ..errors import UnsendableValueError
from .base import Backend

#: How often a worker checks that the kernel is still alive (seconds).
PARENT_POLL_S = 1.0
#: How long shutdown waits for a worker to exit before killing it (seconds).
JOIN_TIMEOUT_S = 2.0


def start_method() -> str:
    """The start method the pool uses: forkserver where it exists, else spawn (never fork)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


# -- the payload file, shared by the process backends ---------------------------------------


def dumps_with_buffers(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """cloudpickle ``obj`` with protocol 5, big buffers (NumPy arrays) kept out of band."""
    import cloudpickle

    buffers: list[pickle.PickleBuffer] = []
    data = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return data, buffers


def unsendable_error(captured: dict[str, Any], exc: BaseException) -> UnsendableValueError:
    """Name the first captured value that cannot be pickled, its type and the way out."""
    import cloudpickle

    for name, value in captured.items():
        try:
            cloudpickle.dumps(value, protocol=5, buffer_callback=lambda b: None)
        except Exception as err:
            return UnsendableValueError(
                f"cannot send {name!r} (a {type(value).__name__}) to the worker processes: "
                f"{type(err).__name__}: {err}. Use --backend threads to run in the kernel."
            )
    return UnsendableValueError(f"cannot send the loop to the worker processes: {exc}")


class PayloadDir:
    """A private (mode 0700) temporary folder holding one file per published run."""

    def __init__(self, prefix: str = "parmagic-"):
        self.path = tempfile.mkdtemp(prefix=prefix)
        # The folder goes with the kernel even if nobody calls close().
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, True)

    def publish(self, payload: _worker.Payload) -> _worker.FileRef:
        """Write ``payload`` to a fresh 0600 file and return the reference tasks carry."""
        path = os.path.join(self.path, f"{uuid.uuid4().hex}.payload")
        try:
            _worker.write_payload_file(path, payload, dumps_with_buffers)
        except Exception as exc:
            _remove(path)
            raise unsendable_error(payload.captured, exc) from exc
        return _worker.FileRef(payload.key, path)

    def unpublish(self, ref: _worker.PayloadRef) -> None:
        """Delete the run's file (workers that mapped it keep their mapping)."""
        path = getattr(ref, "path", None)
        if path and os.path.dirname(path) == self.path:
            _remove(path)

    def close(self) -> None:
        """Remove the folder and everything left in it."""
        self._finalizer()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- worker side ----------------------------------------------------------------------------


def _init_worker() -> None:
    """Pool initializer: exit when the kernel is gone, so no worker outlives it.

    With forkserver the worker's parent is the fork server, which exits when
    the kernel does; with spawn it is the kernel. Either way the parent pid
    changes when the kernel dies (even by SIGKILL), and the worker follows.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="parmagic-parent-watch", daemon=True).start()


# -- kernel side ----------------------------------------------------------------------------


class MultiprocessingBackend(Backend):
    """Tasks on a persistent standard-library process pool (forkserver or spawn)."""

    name = "multiprocessing"
    needs_pickling = True
    in_kernel = False

    def __init__(self, n_workers: int):
        super().__init__(n_workers)
        self._lock = threading.RLock()
        self._executor: ProcessPoolExecutor | None = None
        self._files = PayloadDir()

    # The pool ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers now, in the background (the first run then finds them warm)."""
        self._pool()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context(start_method())
                executor = ProcessPoolExecutor(
                    self.n_workers, mp_context=context, initializer=_init_worker
                )
                # The executor starts workers on demand, one per submit that finds
                # none idle: n no-op tasks start all n now, without waiting for them.
                for _ in range(self.n_workers):
                    executor.submit(_worker.warm_up)
                self._executor = executor
            return self._executor

    def resize(self, n_workers: int) -> None:
        """Use ``n_workers`` workers from the next run on (the pool is rebuilt lazily)."""
        with self._lock:
            if n_workers != self.n_workers:
                self._stop(kill=False)
                self.n_workers = n_workers

    def _stop(self, kill: bool) -> None:
        """Shut the pool down (killing its workers first when ``kill``); the next use rebuilds."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = _processes(executor)
        if kill:
            for process in processes:
                _kill(process)
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(JOIN_TIMEOUT_S)
            if process.is_alive():
                _kill(process)
                process.join(JOIN_TIMEOUT_S)

    # The calls the engine makes ---------------------------------------------------------------

    def publish(self, payload: _worker.Payload) -> _worker.PayloadRef:
        """Write the payload to a private file once; every task carries only its path."""
        return self._files.publish(payload)

    def unpublish(self, ref: _worker.PayloadRef) -> None:
        """Delete the run's payload file."""
        self._files.unpublish(ref)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` in a worker; a pool broken by a dead worker is rebuilt first."""
        try:
            return self._pool().submit(fn, *args)
        except BrokenProcessPool:
            # A worker died in an earlier run: its futures already failed with
            # BrokenProcessPool; this run gets a fresh pool.
            self._stop(kill=True)
            return self._pool().submit(fn, *args)

    def abort(self) -> None:
        """Kill the workers now; pending futures fail with BrokenProcessPool, the next run rebuilds."""
        self._stop(kill=True)

    def worker_pids(self) -> list[int]:
        """PIDs of the live worker processes (none before the pool starts)."""
        with self._lock:
            executor = self._executor
        if executor is None:
            return []
        return sorted(p.pid for p in _processes(executor) if p.pid is not None)

    def describe(self) -> dict[str, Any]:
        """Backend, worker count, pids and start method."""
        return {**super().describe(), "start_method": start_method()}

    def close(self) -> None:
        """Stop the workers and remove the payload folder (kernel exit, ``%parmagic shutdown``)."""
        self._stop(kill=False)
        self._files.close()


def _processes(executor: ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    # CPython keeps its workers in the private ``_processes`` dict (pid -> Process),
    # which the manager thread may clear at any moment: copy it, tolerate its absence.
    for _ in range(3):
        try:
            return list((getattr(executor, "_processes", None) or {}).values())
        except RuntimeError:  # dict changed size during iteration
            continue
    return []


def _kill(process: multiprocessing.process.BaseProcess) -> None:
    try:
        process.kill()
    except (OSError, ValueError, AttributeError):  # already gone or closed
        pass
