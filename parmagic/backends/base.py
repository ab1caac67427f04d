"""The contract every backend implements, with every capability the engine asks about.

A backend runs ``parmagic.worker.batch.run_batch(ref, start, items[, slot])``
calls somewhere and hands back ``concurrent.futures.Future`` objects. The run's
payload (compiled loop body and captured values) travels once per run: the
engine asks the backend to ``publish`` it and passes the returned reference in
every task; workers load it once and cache it by key.

The engine and the supervisor never probe a backend: what they may ask is
declared here, with its default (as joblib's ``ParallelBackendBase`` declares
``supports_timeout`` and friends).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future
from typing import Any

from ..worker.protocol import Payload, PayloadRef


class WorkersLost(BrokenExecutor):
    """A batch lost because its pool broke; ``deaths`` names who died on their own.

    ``deaths`` maps the pid of each worker that died by itself (not the ones the
    pool killed afterwards) to its exit code (negative: the signal). The
    supervisor fails only the iteration such a worker held and runs the rest again.
    One instance per break: every batch the break lost carries the same object.
    """

    def __init__(self, message: str, deaths: dict[int, int | None] | None = None):
        super().__init__(message)
        self.deaths: dict[int, int | None] = dict(deaths or {})


class WorkerStopped(WorkersLost):
    """The batch of a worker the supervisor stopped on purpose, sparing the rest of the pool."""

    def __init__(self, pid: int, exit_code: int):
        super().__init__(f"worker {pid} was stopped", {pid: exit_code})


class Backend:
    """Base class: capability flags plus the calls the engine makes."""

    #: option value that selects this backend
    name: str = "base"
    #: tasks run in the kernel process (threads, serial): the payload is handed over as it
    #: is, captured objects are shared, and ``abort`` stops running tasks
    in_kernel: bool = False
    #: the batch's locals come back as cloudpickle bytes (results cross a process boundary)
    pickles_locals: bool = True
    #: several batches share one process, so prints are captured per thread
    #: (threads, serial, dask) instead of by replacing the worker's sys.stdout
    output_per_thread: bool = False
    #: workers report into a status board in shared memory (process pools): timeouts of
    #: workers stuck in C, which iteration a dead worker held, SIGINT to running batches
    shared_board: bool = False
    #: ``--timeout`` is enforced from the kernel by raising in the worker thread (threads)
    kernel_thread_timeouts: bool = False
    #: :meth:`stop_worker` can stop one stuck worker without breaking the pool
    stops_one_worker: bool = False
    #: iterations run one after another in the kernel, in order (serial): the per-iteration
    #: random streams can reseed the kernel's own generators, as a process worker does
    runs_in_order: bool = False
    #: a loop too cheap to gain from these workers may finish in the kernel instead
    #: (``--auto-serial``); not where it already runs there, nor on a cluster the user chose
    may_finish_in_kernel: bool = True
    #: idle workers import what the kernel imported (parmagic.preimport), through
    #: :meth:`submit`, once :meth:`pool_id` says a pool is up
    preimports: bool = False
    #: a worker's death can also fail batches that merely waited on that worker (dask
    #: counts every task assigned to a dying worker, queued or running, towards
    #: ``KilledWorker``): a batch failed by a death is run once more before it is believed
    deaths_hit_bystanders: bool = False
    #: a worker process also runs code that is not ours in other threads (the cluster's own,
    #: which draws from the ``random`` module): each batch thread gets its own generator there
    shares_worker_process: bool = False

    def __init__(self, n_workers: int):
        self.n_workers = n_workers

    def publish(self, payload: Payload) -> PayloadRef:
        """Make ``payload`` reachable by the workers; called once per run."""
        raise NotImplementedError

    def unpublish(self, ref: PayloadRef) -> None:
        """Release what ``publish`` made (scratch memory, scattered data)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on a worker; return a concurrent.futures.Future.

        A batch lost because the pool broke fails with :class:`WorkersLost`.
        """
        raise NotImplementedError

    def abort(self) -> None:
        """Stop running tasks now (interrupt): kill what must die; the next run must work."""

    def stop_worker(
        self, pid: int, future: Future, still_stuck: Callable[[], bool], error: BaseException
    ) -> bool:
        """Stop the worker ``pid`` stuck in ``future``'s batch, failing it with ``error``,
        without breaking the pool; False if it moved on. Only where ``stops_one_worker``."""
        raise NotImplementedError(f"the {self.name} backend cannot stop one worker")

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes (the kernel's own pid for in-kernel backends)."""
        return []

    def pool_id(self) -> int | None:
        """An identity of the running pool (a new one after a rebuild); None before it starts."""
        return None

    def serves(self, n_workers: int) -> bool:
        """Whether this (persistent) backend can run a loop on ``n_workers`` as it is."""
        return True

    def close(self) -> None:
        """End the backend's pool (kernel exit, ``%parmagic shutdown``)."""

    def describe(self) -> dict[str, Any]:
        """Facts for ``%parmagic status``."""
        return {"backend": self.name, "workers": self.n_workers, "pids": self.worker_pids()}
