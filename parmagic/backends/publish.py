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


#: What a magic in a function's code becomes (IPython rewrites ``%pmap ...`` to a call on it).
MAGIC_CALL = "get_ipython"


def unsendable_error(captured: dict[str, Any], exc: Exception) -> UnsendableValueError:
    """The error naming the first captured value that cannot be pickled."""
    import cloudpickle

    for name, value in sorted(captured.items()):
        if callable(value) and runs_a_magic(value):
            return UnsendableValueError(
                f"cannot send {name!r} to worker processes: it runs a magic (%pmap or "
                "%%parallel), which only the kernel can run; a worker cannot start a parallel "
                "run of its own. Inside the loop, call a plain version of it (a list "
                f"comprehension instead of %pmap), or make the outer loop a plain one and keep "
                f"the magic inside {name!r}."
            )
        try:
            cloudpickle.dumps(value)
        except Exception as inner:
            return UnsendableValueError(
                f"cannot send {name!r} ({type(value).__module__}.{type(value).__qualname__}) to "
                f"worker processes: {type(inner).__name__}: {inner}. Use --backend threads, or "
                f"create it inside the loop body."
            )
    return UnsendableValueError(f"cannot send the loop to worker processes: {exc}")


def runs_a_magic(func: Any, seen: set[int] | None = None) -> bool:
    """Whether ``func``, or a notebook function it calls, runs a magic (``%pmap`` in its body)."""
    seen = set() if seen is None else seen
    code = getattr(func, "__code__", None)
    if code is None or id(func) in seen:
        return False
    seen.add(id(func))
    names = set(_names(code))
    if MAGIC_CALL in names:
        return True
    glb = getattr(func, "__globals__", {})
    return any(callable(glb.get(n)) and runs_a_magic(glb[n], seen) for n in names if n in glb)


def _names(code: Any) -> Any:
    yield from code.co_names
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            yield from _names(const)
