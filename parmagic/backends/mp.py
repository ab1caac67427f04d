"""The ``multiprocessing`` backend: a standard-library process pool kept per kernel.

A ``concurrent.futures.ProcessPoolExecutor`` on the ``spawn`` context. Plain
``fork`` is not an option: the kernel is multithreaded (ipykernel runs its own
threads, and so does the engine), and forking a multithreaded process can copy
a lock that another thread holds, deadlocking the child. ``forkserver`` would
start workers faster, but its server process is a standard-library singleton
that stays until the kernel exits, after ``%parmagic shutdown`` too; with
``spawn`` the workers are the kernel's own children and shutdown leaves nothing.
The pool is persistent, so the slower start is paid once per kernel.

The pool is created on first use, reused by every run, rebuilt when it breaks
(a worker died) or is aborted (interrupt), and shut down by :meth:`close`. The
standard pickler only ever sees :func:`parmagic.worker.batch.run_batch` and a
:class:`~parmagic.worker.protocol.FileRef`: the notebook's functions and captured values
travel cloudpickled inside the payload file, written once per run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..worker import batch, budget
from ..worker.protocol import Payload, PayloadRef
from .base import Backend, WorkersLost
from .publish import publish_to_file, unpublish_file

#: How long shutdown waits for a worker to exit before killing it (seconds).
JOIN_TIMEOUT_S = 2.0


#: The start method of the pool's workers (see the module docstring: never fork).
START_METHOD = "spawn"


# -- worker side ----------------------------------------------------------------------------


def _init_worker(threads: budget.ThreadBudget | None = None) -> None:
    """Pool initializer: leave SIGINT to the kernel, and exit when the kernel is gone.

    The stop button sends SIGINT to the kernel's whole process group, workers
    included: an idle worker must not die of it (the kernel stops running
    batches itself, see :meth:`MultiprocessingBackend.abort`). The parent's
    sentinel is a pipe end that only the kernel holds open: it turns readable
    when the kernel dies, even by SIGKILL, and the worker then exits.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    budget.apply(threads)  # the thread budget, before anything imports numpy
    parent = multiprocessing.parent_process()
    if parent is None:  # not started by multiprocessing: nothing to watch
        return

    def watch() -> None:
        parent.join()
        os._exit(0)

    threading.Thread(target=watch, name="parmagic-parent-watch", daemon=True).start()


# -- kernel side ----------------------------------------------------------------------------


class MultiprocessingBackend(Backend):
    """Tasks on a persistent standard-library process pool of spawned workers."""

    name = "multiprocessing"
    shared_board = True
    preimports = True

    def __init__(self, n_workers: int):
        super().__init__(n_workers)
        self._lock = threading.RLock()
        self._executor: ProcessPoolExecutor | None = None

    # The pool ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers now, in the background (the first run then finds them warm)."""
        self._pool()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context(START_METHOD)
                executor = ProcessPoolExecutor(
                    self.n_workers,
                    mp_context=context,
                    initializer=_init_worker,
                    initargs=(budget.for_workers(self.n_workers),),
                )
                # The executor starts workers on demand, one per submit that finds
                # none idle: n no-op tasks start all n now, without waiting for them.
                for _ in range(self.n_workers):
                    _submit(executor, batch.warm_up)
                self._executor = executor
            return self._executor

    def pool_id(self) -> int | None:
        """The running executor's identity (None before the first run or after a stop)."""
        executor = self._executor
        return None if executor is None else id(executor)

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

    def publish(self, payload: Payload) -> PayloadRef:
        """Write the payload to a private file once; every task carries only its path."""
        payload.threads = budget.for_workers(self.n_workers)
        return publish_to_file(payload)

    def unpublish(self, ref: PayloadRef) -> None:
        """Delete the run's payload file."""
        unpublish_file(ref)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` in a worker; a pool broken by a dead worker is rebuilt first."""
        executor = self._pool()
        try:
            task = _submit(executor, fn, *args)
        except BrokenProcessPool:
            # A worker died (or was killed by the watchdog): the futures it broke
            # already failed; what is submitted from now on gets a fresh pool.
            self._stop(kill=True)
            executor = self._pool()
            task = _submit(executor, fn, *args)
        return _Relay(task, executor)

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
        return {**super().describe(), "start_method": START_METHOD}

    def serves(self, n_workers: int) -> bool:
        """The pool is rebuilt for another worker count."""
        return n_workers == self.n_workers

    def close(self) -> None:
        """Stop the workers (kernel exit, ``%parmagic shutdown``)."""
        self._stop(kill=False)


class _Relay(Future):
    """The engine's side of a pool future; a broken pool's error also says who died.

    When a worker dies, the executor fails every pending future with one
    ``BrokenProcessPool`` and then terminates the other workers. The first
    relay to see that error notes, before the others are terminated, which
    workers have an exit code: those died on their own (or by the watchdog).
    Every future the break lost then fails with the same :class:`WorkersLost`
    (pid -> exit code), so the engine fails only the iteration a dead worker
    held and runs the rest of the lost batches again.
    """

    #: id of a BrokenProcessPool -> (it, the WorkersLost made for it); the original is kept
    #: so that its id is not reused while the entry lives (breaks are few)
    _lost: dict[int, tuple[BaseException, WorkersLost]] = {}
    _lost_lock = threading.Lock()

    def __init__(self, task: Future, executor: ProcessPoolExecutor):
        super().__init__()
        self._task = task
        self._executor = executor
        task.add_done_callback(self._copy)

    def cancel(self) -> bool:
        """Cancel the pool's future (possible while it waits in the queue)."""
        return self._task.cancel() and super().cancel()

    def _copy(self, task: Future) -> None:
        if task.cancelled():
            super().cancel()
            return
        exc = task.exception()
        if exc is None:
            self.set_result(task.result())
            return
        if isinstance(exc, BrokenProcessPool):
            exc = self._workers_lost(exc)
        self.set_exception(exc)

    def _workers_lost(self, exc: BrokenProcessPool) -> WorkersLost:
        with self._lost_lock:
            seen = self._lost.get(id(exc))
            if seen is None or seen[0] is not exc:
                lost = WorkersLost(str(exc), _exit_codes(_processes(self._executor)))
                lost.__cause__ = exc
                seen = self._lost[id(exc)] = (exc, lost)
                if len(self._lost) > 64:  # old breaks: their futures are long settled
                    self._lost.pop(next(iter(self._lost)))
            return seen[1]


def _submit(executor: ProcessPoolExecutor, fn: Callable[..., Any], *args: Any) -> Future:
    """``executor.submit``, which starts a worker when none is idle (see :func:`_main_spec`)."""
    with _main_spec():
        return executor.submit(fn, *args)


@contextlib.contextmanager
def _main_spec() -> Iterator[None]:
    """Give the kernel's ``__main__`` a ``__spec__`` while workers start, if it lost it.

    Starting a spawn or forkserver process reads ``sys.modules["__main__"].__spec__``.
    In IPython ``__main__`` is the user's namespace, and ``%reset`` empties it,
    ``__spec__`` included: the start would fail with AttributeError. The
    attribute is put back as ``None`` (what a fresh module has) for the start only.
    """
    main = sys.modules.get("__main__")
    if main is None or hasattr(main, "__spec__"):
        yield
        return
    main.__spec__ = None
    try:
        yield
    finally:
        vars(main).pop("__spec__", None)


def _exit_codes(processes: list[multiprocessing.process.BaseProcess]) -> dict[int, int]:
    """pid -> exit code of the workers that are gone.

    A dead worker's sentinel is ready a moment before the system lets its exit
    code be read (seen under load), so a gone worker is waited for briefly.
    """
    from multiprocessing.connection import wait as wait_for

    try:
        gone = set(wait_for([p.sentinel for p in processes], timeout=0))
    except (ValueError, OSError):  # a process object already closed: read what is there
        gone = set()
    codes = {}
    for p in processes:
        if p.sentinel in gone and p.exitcode is None:
            p.join(timeout=1.0)
        if p.exitcode is not None:
            codes[p.pid] = p.exitcode
    return codes


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
