"""The default backend: loky's reusable process pool, kept for the life of the kernel."""

from __future__ import annotations

import os
import sys
import tempfile
from concurrent.futures import Future
from typing import Any, Callable

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


def publish_to_file(payload: Payload) -> FileRef:
    """Write the payload to a private file; name the culprit if a captured value can't travel."""
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

    def __init__(self, n_workers: int):
        super().__init__(n_workers)
        self.executor = get_executor(n_workers)

    def publish(self, payload: Payload) -> PayloadRef:
        """Payload to a private file in /dev/shm; tasks carry only its path."""
        return publish_to_file(payload)

    def unpublish(self, ref: PayloadRef) -> None:
        """Delete the payload file."""
        unpublish_file(ref)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Submit to the loky pool."""
        return self.executor.submit(fn, *args)

    def abort(self) -> None:
        """Kill the workers (tasks cannot be stopped otherwise); the next run gets a fresh pool."""
        kill_executor()

    def worker_pids(self) -> list[int]:
        """PIDs of the live loky workers."""
        return executor_pids()


def get_executor(n_workers: int) -> Any:
    """loky's reusable executor with ``n_workers`` workers.

    loky keeps it per thread: call this from the kernel's main thread only, or a
    second pool appears.
    """
    from loky import get_reusable_executor

    return get_reusable_executor(max_workers=n_workers, timeout=IDLE_TIMEOUT)


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
