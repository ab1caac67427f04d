"""The default backend: loky's reusable process pool, kept for the life of the kernel.

Failure handling lives partly here: every worker runs ``_worker.init_process`` (it
dies with the kernel, even a SIGKILLed one, and ignores SIGINT between batches);
:func:`record_deaths` notes which workers died on their own when loky declares the
pool broken; ``submit`` rebuilds a broken pool; payloads travel in anonymous memfds,
so no file outlives a killed kernel.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future
from typing import Any

from .. import _worker
from .._worker import FileRef, Payload, PayloadRef
from ..errors import UnsendableValueError
from .base import Backend

#: Workers idle this long are reaped (loky's default is 10 s); ours live as long as the kernel.
#: (poll() takes milliseconds as a C int: much more overflows.)
IDLE_TIMEOUT = 7 * 24 * 3600


def payload_dir() -> str:
    """Where payload files go: RAM-backed /dev/shm when there is one."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()


def dumps_with_buffers(obj: Any) -> tuple[bytes, list]:
    """cloudpickle with protocol 5: large buffers (NumPy arrays) come out of band, uncopied."""
    import cloudpickle

    buffers: list = []
    main = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return main, buffers


#: memfd path -> its descriptor, for payloads published by this kernel
_memfds: dict[str, int] = {}


def publish_to_file(payload: Payload) -> FileRef:
    """Write the payload where only our workers read it; name the culprit if a value can't travel.

    An anonymous memfd that workers open as ``/proc/<kernel pid>/fd/<n>``: nothing in
    /dev/shm to leave behind if the kernel is killed. Elsewhere a private 0600 file.
    """
    proc = f"/proc/{os.getpid()}/fd"
    if not (hasattr(os, "memfd_create") and os.path.isdir(proc)):
        return _publish_to_named_file(payload)
    fd = os.memfd_create("parmagic-payload")
    path = f"{proc}/{fd}"
    try:
        with open(os.dup(fd), "wb") as f:
            _worker.write_payload(f, payload, dumps_with_buffers)
    except Exception as exc:
        os.close(fd)
        raise unsendable_error(payload.captured, exc) from None
    _memfds[path] = fd
    return FileRef(payload.key, path)


def _publish_to_named_file(payload: Payload) -> FileRef:
    path = os.path.join(payload_dir(), f"parmagic-{os.getpid()}-{payload.key}.pkl")
    try:
        _worker.write_payload_file(path, payload, dumps_with_buffers)
    except Exception as exc:
        _remove(path)
        raise unsendable_error(payload.captured, exc) from None
    return FileRef(payload.key, path)


def unsendable_error(captured: dict[str, Any], exc: Exception) -> UnsendableValueError:
    """The error naming the first captured value that cannot be pickled."""
    import cloudpickle

    for name, value in sorted(captured.items()):
        try:
            cloudpickle.dumps(value)
        except Exception as inner:
            return UnsendableValueError(
                f"cannot send {name!r} ({type(value).__module__}.{type(value).__qualname__}) to "
                f"worker processes: {type(inner).__name__}: {inner}. Use --backend threads, or "
                f"create it inside the loop body."
            )
    return UnsendableValueError(f"cannot send the loop to worker processes: {exc}")


def unpublish_file(ref: PayloadRef) -> None:
    """Remove the payload file (workers that mapped it keep their view until the next run)."""
    if isinstance(ref, FileRef):
        fd = _memfds.pop(ref.path, None)
        if fd is not None:
            os.close(fd)
        else:
            _remove(ref.path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class LokyBackend(Backend):
    """loky's reusable executor: started once, resized in place, rebuilt when broken."""

    name = "loky"
    needs_pickling = True
    #: workers report into parmagic.watchdog's status board (timeouts, deaths, interrupts)
    status_board = True

    def __init__(self, n_workers: int):
        super().__init__(n_workers)
        self.executor = get_executor(n_workers)

    def publish(self, payload: Payload) -> PayloadRef:
        """Payload to an anonymous memfd (else a private file); tasks carry only its path."""
        return publish_to_file(payload)

    def unpublish(self, ref: PayloadRef) -> None:
        """Delete the payload file."""
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
        """PIDs of this backend's loky workers (from any thread: loky's storage is per thread)."""
        return sorted(list(self.executor._processes))

    def stop_worker(
        self, pid: int, future: Future, still_stuck: Callable[[], bool], error: BaseException
    ) -> bool:
        """Kill one worker stuck in an iteration without breaking the pool; False if it moved on.

        A dead worker makes loky kill every other worker. So the stuck one is first
        frozen (SIGSTOP) and, if the status board still shows it in the same iteration
        (running user code: it holds none of loky's locks), loky is told that it left
        cleanly (its pid on the result queue, as a worker leaving on idle timeout does),
        its task is taken out of loky's books and failed with ``error``, and only then
        is it killed. loky replaces it like a worker that timed out. Raises if a step
        fails; the caller then kills it plainly (the pool breaks and is rebuilt).
        """
        os.kill(pid, signal.SIGSTOP)
        try:
            _wait_stopped(pid)
            if not still_stuck():
                os.kill(pid, signal.SIGCONT)
                return False
            work_id = _work_id(self.executor, future)
        except BaseException:
            os.kill(pid, signal.SIGCONT)
            raise
        self.executor._pending_work_items.pop(work_id, None)
        self.executor._running_work_items.remove(work_id)
        self.executor._result_queue.put(pid)  # "worker pid exited": loky joins and replaces it
        os.kill(pid, signal.SIGKILL)
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


def _work_id(executor: Any, future: Future) -> int:
    """loky's id of the task behind ``future`` (it must still be running)."""
    for work_id, item in list(executor._pending_work_items.items()):
        if item.future is future:
            return work_id
    raise LookupError("the stuck task is no longer in loky's books")


def get_executor(n_workers: int) -> Any:
    """loky's reusable executor with ``n_workers`` workers.

    loky keeps it per thread: call this from the kernel's main thread only, or a
    second pool appears.
    """
    from loky import get_reusable_executor

    record_deaths()
    # a worker stopped by stop_worker is replaced as one that timed out would be: quietly
    warnings.filterwarnings(
        "ignore", message="A worker stopped while some jobs were given", category=UserWarning
    )
    return get_reusable_executor(
        max_workers=n_workers,
        timeout=IDLE_TIMEOUT,
        initializer=_worker.init_process,
        initargs=(os.getpid(),),
    )


def record_deaths() -> None:
    """Teach loky to note, on the error it gives every lost future, which workers died first.

    When a worker dies, loky's manager thread fails every pending future with one
    ``TerminatedWorkerError`` and then kills the other workers. Just before that
    kill, the workers that have an exit code are the ones that died on their own:
    ``exc.parmagic_deaths`` maps their pids to exit codes (negative: the signal).
    """
    from loky import process_executor

    manager = process_executor._ExecutorManagerThread
    original = manager.terminate_broken
    if getattr(original, "_parmagic", False):
        return

    def terminate_broken(self: Any, bpe: BaseException) -> None:
        try:
            bpe.parmagic_deaths = {  # type: ignore[attr-defined]
                p.pid: p.exitcode for p in list(self.processes.values()) if p.exitcode is not None
            }
        except Exception:  # never let bookkeeping stop loky from cleaning up
            pass
        original(self, bpe)

    terminate_broken._parmagic = True  # type: ignore[attr-defined]
    manager.terminate_broken = terminate_broken


def executor_pids() -> list[int]:
    """PIDs of the current loky executor's workers, if one exists."""
    executor = _current()
    if executor is None:
        return []
    return sorted(p.pid for p in list(executor._processes.values()))


def kill_executor() -> None:
    """Shut the reusable executor down now, killing its workers."""
    executor = _current()
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def _current() -> Any:
    if "loky.reusable_executor" not in sys.modules:
        return None  # never started (and importing loky at exit would fail)
    from loky import reusable_executor

    return reusable_executor._executor_storage.executor
