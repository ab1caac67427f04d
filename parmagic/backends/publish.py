"""Publishing a run's payload for process workers: once per run, in scratch memory.

Used by every process backend (loky, multiprocessing; dask pickles with the same
:func:`dumps_with_buffers`). Big buffers (NumPy arrays) are written out of band
and aligned, so that workers memory-map them instead of copying them per task.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import UnsendableValueError
from ..worker.protocol import FileRef, Payload, PayloadRef, write_payload
from ..worker.scratch import Scratch, open_scratch


def dumps_with_buffers(obj: Any) -> tuple[bytes, list]:
    """cloudpickle with protocol 5: large buffers (NumPy arrays) come out of band, uncopied."""
    import cloudpickle

    buffers: list = []
    main = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return main, buffers


#: path workers open -> the scratch area behind it, for payloads this kernel published
_published: dict[str, Scratch] = {}


def publish_to_file(payload: Payload) -> FileRef:
    """Write the payload where only our workers read it; name the culprit if a value can't travel."""
    scratch = open_scratch("payload", payload.key)
    try:
        with open(os.dup(scratch.fd), "wb") as f:
            write_payload(f, payload, dumps_with_buffers)
    except Exception as exc:
        scratch.close()
        raise unsendable_error(payload.captured, exc) from None
    except BaseException:  # the stop button while a big value is written: nothing stays open
        scratch.close()
        raise
    _published[scratch.path] = scratch
    return FileRef(payload.key, scratch.path, payload.env)


def unpublish_file(ref: PayloadRef) -> None:
    """Release the payload (workers that mapped it keep their view until the next run)."""
    if isinstance(ref, FileRef):
        scratch = _published.pop(ref.path, None)
        if scratch is not None:
            scratch.close()


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
