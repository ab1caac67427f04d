"""Every use of loky's private internals, in one place, each with why.

Checked against loky 3.5, 3.6 and 3.7 (the versions pyproject.toml allows; the
test suite ran on 3.7.0). A new loky release that moves one of these breaks
only this module: run tests/test_failures.py and tests/test_backend_failures.py
against it before widening the bound.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..interrupts import sigint_blocked
from .base import WorkersLost

_lock = threading.Lock()
#: The pool parmagic uses, whichever thread asks (loky keeps its reusable executor
#: per thread: a second thread calling get_reusable_executor would start a second pool).
_executor: Any = None
#: Set in the environment of parmagic's loky workers: marks the spawns to shield from SIGINT.
WORKER_ENV = "PARMAGIC_LOKY_WORKER"


def reusable_executor(n_workers: int, **kwargs: Any) -> Any:
    """loky's reusable executor with ``n_workers`` workers, one per kernel whatever thread calls."""
    global _executor
    from loky import get_reusable_executor

    _quiet_warnings()
    with _lock:
        executor = _executor
        if executor is not None and _usable(executor):
            if executor._max_workers != n_workers:  # private: the size loky resizes to
                executor._resize(n_workers)  # private: what get_reusable_executor calls
            return executor
        shield_spawns()
        _executor = get_reusable_executor(
            max_workers=n_workers, context=_own_context(), env={WORKER_ENV: "1"}, **kwargs
        )
        return _executor


def _own_context() -> Any:
    """This loky's own start context, never joblib's vendored copy.

    loky finds its context by name in multiprocessing's registry, where joblib's
    vendored loky registers the same name on import: once the kernel imported
    scikit-learn, "loky" meant joblib's older copy, so our pool's workers and locks
    came from another loky version than its executor.
    """
    from loky.backend.context import LokyContext

    return LokyContext()


def current_executor() -> Any:
    """The executor if one was started (never imports loky: at exit that would fail)."""
    if "loky" not in sys.modules:
        return None
    return _executor


def forget_executor() -> None:
    """The pool was shut down: the next ``reusable_executor`` call starts a new one."""
    global _executor
    with _lock:
        _executor = None


def _usable(executor: Any) -> bool:
    # private: _flags is where loky notes a broken or shut executor (3.5-3.7)
    flags = executor._flags
    return flags.broken is None and not flags.shutdown


def _quiet_warnings() -> None:
    # A worker stopped by take_out_and_kill is replaced as one that timed out would be;
    # a resize while the start-up no-op tasks still run waits for them, which is what we
    # want: neither is news to the user.
    for message in ("A worker stopped while some jobs were given", "Trying to resize an executor"):
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


def worker_processes(executor: Any) -> list[Any]:
    """The executor's worker processes (private ``_processes``: pid -> process, 3.5-3.7)."""
    for _ in range(3):
        try:
            return list(executor._processes.values())
        except RuntimeError:  # dict changed size during iteration (the manager thread)
            continue
    return []


def take_out_and_kill(executor: Any, pid: int, future: Future, kill: Callable[[], None]) -> None:
    """Take ``future``'s task out of loky's books and make loky replace worker ``pid`` quietly.

    loky is told that the worker left cleanly (its pid on the result queue, as a
    worker leaving on idle timeout does), so it joins and replaces it instead of
    declaring the pool broken. The worker must be frozen (SIGSTOP) before: it then
    holds none of loky's locks. Raises LookupError when the task is no longer there.
    """
    # private: _pending_work_items (id -> item with .future), _running_work_items (ids),
    # _result_queue (the manager thread reads worker exits from it), all 3.5-3.7
    work_id = next(
        (wid for wid, item in list(executor._pending_work_items.items()) if item.future is future),
        None,
    )
    if work_id is None:
        raise LookupError("the stuck task is no longer in loky's books")
    executor._pending_work_items.pop(work_id, None)
    executor._running_work_items.remove(work_id)
    executor._result_queue.put(pid)
    kill()


def record_deaths() -> None:
    """Make loky fail the futures of a broken pool with :class:`WorkersLost`, naming the dead.

    When a worker dies, loky's manager thread fails every pending future with one
    error and then kills the other workers. Just before that kill, the workers
    that have an exit code are the ones that died on their own. (private:
    ``_ExecutorManagerThread.terminate_broken(self, bpe)`` and its ``processes``
    dict, 3.5-3.7.)
    """
    from loky import process_executor

    manager = process_executor._ExecutorManagerThread
    original = manager.terminate_broken
    if getattr(original, "_parmagic", False):
        return

    def terminate_broken(self: Any, bpe: BaseException) -> None:
        try:
            deaths = {
                p.pid: p.exitcode for p in list(self.processes.values()) if p.exitcode is not None
            }
            lost = WorkersLost(str(bpe), deaths)
            lost.__cause__ = bpe
            bpe = lost
        except Exception:  # never let bookkeeping stop loky from cleaning up
            pass
        original(self, bpe)

    terminate_broken._parmagic = True  # type: ignore[attr-defined]
    manager.terminate_broken = terminate_broken


def shield_spawns() -> None:
    """Start parmagic's loky workers with SIGINT blocked (see :func:`sigint_blocked`).

    loky starts workers from the submitting thread and from its manager thread, through
    ``loky.backend.fork_exec.fork_exec(cmd, keep_fds, env)`` (private, 3.5-3.7): only the
    spawns whose ``env`` carries :data:`WORKER_ENV` (our pool's) are shielded, other loky
    pools in the kernel are left as they are.
    """
    from loky.backend import fork_exec as module

    original = module.fork_exec
    if getattr(original, "_parmagic", False):
        return

    def fork_exec(cmd: Any, keep_fds: Any, env: Any = None) -> Any:
        if not env or WORKER_ENV not in env:
            return original(cmd, keep_fds, env=env)
        with sigint_blocked():
            return original(cmd, keep_fds, env=env)

    fork_exec._parmagic = True  # type: ignore[attr-defined]
    module.fork_exec = fork_exec
