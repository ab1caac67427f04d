"""The exceptions parmagic raises.

::

    ParmagicError                     base of everything parmagic raises itself
    ├── RefusedLoopError              the cell cannot run in parallel with the serial result
    ├── UnsendableValueError          a captured value cannot be pickled for the workers
    ├── IterationTimeoutError         an iteration ran longer than --timeout
    ├── WorkerDiedError               the worker holding an iteration died
    ├── CapturedChangeError           an iteration changed a captured object in its worker
    ├── WritebackError                a changed loop item cannot be updated in place
    ├── CollectedErrors               --on-error collect: every failed iteration, at the end
    ├── BackendUnavailableError       a backend's optional dependency is missing
    └── CacheError                    a --cache folder or key that is not safe to use

An exception raised by the user's own code in an iteration is re-raised in the
kernel as itself (so ``except ZeroDivisionError`` still works), with a
:class:`RemoteTraceback` as its ``__cause__`` carrying the worker's traceback.
"""

from __future__ import annotations

from typing import Any


class ParmagicError(Exception):
    """Base class of the errors parmagic raises itself."""


class _OneLineError(ParmagicError):
    """A user-facing error shown by IPython as one line, without parmagic's frames."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class RefusedLoopError(_OneLineError):
    """A loop whose parallel run could differ from the serial one; nothing ran."""

    def __init__(self, message: str, lineno: int | None = None, name: str | None = None):
        super().__init__(message)
        self.lineno = lineno
        self.name = name


class UnsendableValueError(_OneLineError):
    """A captured value cannot be sent to the workers; nothing ran."""


class IterationTimeoutError(ParmagicError, TimeoutError):
    """An iteration ran longer than the ``--timeout`` allowed."""


class CapturedChangeError(ParmagicError):
    """An iteration changed a captured object (or a global of a called function) in its
    worker, in a way the kernel cannot replay: the change would be lost."""


class WritebackError(ParmagicError):
    """An object an iteration changed cannot be brought into the kernel's object in place."""


class WorkerDiedError(ParmagicError):
    """The worker process running an iteration died (crash, ``os._exit``, OOM kill)."""


class BackendUnavailableError(_OneLineError):
    """A backend's optional dependency is not installed, or its cluster is unreachable."""


class CacheError(_OneLineError):
    """A ``--cache`` folder (or the key that signs its entries) that is not safe to use:
    owned by someone else, or writable by others; nothing ran."""


class CollectedErrors(ParmagicError):
    """``--on-error collect``: the iterations that failed, after all others committed.

    ``failures`` is a list of ``(index, item, exception)`` in iteration order.
    """

    def __init__(self, failures: list[tuple[int, Any, BaseException]]):
        self.failures = failures
        lines = [f"{len(failures)} iteration(s) failed:"]
        for index, item, exc in failures:
            lines.append(
                f"  iteration {index} (item={_short_repr(item)}): {type(exc).__name__}: {exc}"
            )
        super().__init__("\n".join(lines))


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in a worker."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text


def _short_repr(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
