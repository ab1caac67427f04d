"""The default backend: loky's reusable process pool, kept for the life of the kernel.

Every worker runs :func:`parmagic.worker.batch.init_process` (it dies with the
kernel, even a SIGKILLed one, and ignores SIGINT between batches). A pool that a
dead worker broke fails its futures with :class:`~.base.WorkersLost` naming the
dead (see :mod:`._loky_compat`), and ``submit`` rebuilds it. Payloads travel in
scratch memory (:mod:`.publish`), so nothing outlives a killed kernel.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future
from typing import Any

from ..worker import batch, budget
from ..worker.protocol import Payload, PayloadRef
from . import _loky_compat as compat
from .base import Backend
from .publish import publish_to_file, unpublish_file

#: Workers idle this long are reaped (loky's default is 10 s); ours live as long as the kernel.
#: (poll() takes milliseconds as a C int: much more overflows.)
IDLE_TIMEOUT = 7 * 24 * 3600


class LokyBackend(Backend):
    """loky's reusable executor: started once, resized in place, rebuilt when broken."""

    name = "loky"
    shared_board = True
    stops_one_worker = True

    def __init__(self, n_workers: int):
        super().__init__(n_workers)
        self._executor: Any = None

    @property
    def executor(self) -> Any:
        """The pool, asked for on first use (a loop that runs in the kernel needs none)."""
        if self._executor is None:
            self._executor = get_executor(self.n_workers)
        return self._executor

    @executor.setter
    def executor(self, executor: Any) -> None:
        self._executor = executor

    def publish(self, payload: Payload) -> PayloadRef:
        """Payload to scratch memory; tasks carry only its path."""
        payload.threads = budget.for_workers(self.n_workers)
        return publish_to_file(payload)

    def unpublish(self, ref: PayloadRef) -> None:
        """Release the payload's scratch memory."""
        unpublish_file(ref)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Submit to the loky pool; a pool that a dead worker broke (or that was shut) is rebuilt."""
        try:
            return self.executor.submit(fn, *args)
        except (BrokenExecutor, RuntimeError):
            self.executor = get_executor(self.n_workers)
            return self.executor.submit(fn, *args)

    def abort(self) -> None:
        """Kill the workers (tasks cannot be stopped otherwise); the next run gets a fresh pool."""
        kill_executor()

    def worker_pids(self) -> list[int]:
        """PIDs of this backend's loky workers."""
        return sorted(p.pid for p in compat.worker_processes(self.executor))

    def stop_worker(
        self, pid: int, future: Future, still_stuck: Callable[[], bool], error: BaseException
    ) -> bool:
        """Kill one worker stuck in an iteration without breaking the pool; False if it moved on.

        A dead worker makes loky kill every other worker. So the stuck one is first
        frozen (SIGSTOP) and, if the status board still shows it in the same iteration
        (running user code: it holds none of loky's locks), its task is taken out of
        loky's books (:func:`._loky_compat.take_out_and_kill`) and failed with
        ``error``. Raises if a step fails; the caller then kills it plainly (the pool
        breaks and is rebuilt).
        """
        os.kill(pid, signal.SIGSTOP)
        try:
            _wait_stopped(pid)
            if not still_stuck():
                os.kill(pid, signal.SIGCONT)
                return False
            compat.take_out_and_kill(
                self.executor, pid, future, lambda: os.kill(pid, signal.SIGKILL)
            )
        except BaseException:
            os.kill(pid, signal.SIGCONT)
            raise
        future.set_exception(error)
        return True


def _wait_stopped(pid: int, seconds: float = 1.0) -> None:
    """Wait until ``pid`` is in the stopped state (after SIGSTOP)."""
    deadline = time.monotonic() + seconds
    while True:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        if state in ("T", "t"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker {pid} did not stop (state {state})")
        time.sleep(0.001)


def get_executor(n_workers: int) -> Any:
    """The kernel's loky executor with ``n_workers`` workers (the same one from every thread)."""
    compat.record_deaths()
    return compat.reusable_executor(
        n_workers,
        timeout=IDLE_TIMEOUT,
        initializer=batch.init_process,
        initargs=(os.getpid(), budget.for_workers(n_workers)),
    )


def executor_pids() -> list[int]:
    """PIDs of the current loky executor's workers, if one exists."""
    executor = compat.current_executor()
    if executor is None:
        return []
    return sorted(p.pid for p in compat.worker_processes(executor))


def kill_executor() -> None:
    """Shut the executor down now, killing its workers."""
    executor = compat.current_executor()
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)
        compat.forget_executor()
