"""Imports already paid: idle workers import the libraries the kernel has imported.

A fresh worker pays for ``import sklearn`` (a second or more) the first time a
batch unpickles an estimator; with N workers the first loop over scikit-learn
models waits for that N times in parallel, which can cost more than the loop
itself. So after each cell (IPython's ``post_run_cell`` event, registered by
``%load_ext``) and at ``%load_ext``, :func:`schedule` sends every started pool
one cheap task per worker: "import these", the packages from site-packages the
kernel has imported (``numpy``, ``pandas``, ``sklearn``, ``sklearn.mixture``:
top-level packages and their public first-level modules). It never waits and
never starts a pool. Each worker imports what it lacks, with the thread budget
applied first (:mod:`parmagic.worker.budget`), and reports back; an import that
fails in a worker is noted and never sent again.

Tasks cannot be aimed at one worker, so the kernel keeps, per worker pid, what
that worker has confirmed; a worker that a round missed (it was still starting)
gets the next round.

Runs in workers too (:func:`import_modules`), so it imports nothing heavy.
"""

from __future__ import annotations

import importlib
import io
import os
import site
import sys
import sysconfig
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .worker import budget

#: Kernel machinery, tools and parmagic itself: never imported in workers.
SKIP = frozenset(
    """IPython ipykernel ipywidgets ipython_genutils jupyter_client jupyter_core zmq tornado
    traitlets prompt_toolkit debugpy comm jedi parso pygments pexpect ptyprocess decorator
    stack_data executing asttokens pure_eval wcwidth matplotlib_inline nest_asyncio
    platformdirs pytest _pytest pluggy iniconfig py setuptools pkg_resources pip
    _distutils_hack widgetsnbextension jupyterlab_widgets parmagic loky cloudpickle psutil
    threadpoolctl hypothesis coverage xdist execnet nbformat nbclient nbconvert
    jupyter_server notebook jupyterlab fastjsonschema jsonschema dateutil typing_extensions
    exceptiongroup tblib""".split()
)
#: Modules with side effects on import (pyplot picks a GUI backend): left to the loop.
SKIP_MODULES = frozenset({"matplotlib.pyplot", "pylab"})


def _site_dirs() -> tuple[str, ...]:
    dirs = set()
    try:
        dirs.update(site.getsitepackages())
    except AttributeError:  # some virtualenvs' site module lacks it
        pass
    try:
        dirs.add(site.getusersitepackages())
    except AttributeError:
        pass
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(path)
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs if d)


class _State:
    """Kernel side: what to send, what each worker has, what failed."""

    lock = threading.Lock()
    modules_seen = -1
    names: list[str] = []
    site_dirs: tuple[str, ...] | None = None
    failed: set[str] = set()
    #: pool key -> (pool identity, names sent to it, batches in flight)
    sent: dict[str, tuple[int, set[str], int]] = {}
    have: dict[int, set[str]] = {}  # worker pid -> names it imported (or already had)


def wanted() -> list[str]:
    """Site-packages modules the kernel imported that workers should import, in import order."""
    n = len(sys.modules)
    if n == _State.modules_seen:
        return _State.names
    if _State.site_dirs is None:
        _State.site_dirs = _site_dirs()
    dirs = _State.site_dirs
    names = []
    for name, module in list(sys.modules.items()):
        parts = name.split(".")
        if len(parts) > 2 or any(p.startswith("_") for p in parts) or parts[0] in SKIP:
            continue
        if name in SKIP_MODULES or "backends" in parts or "tests" in parts:
            continue
        path = getattr(module, "__file__", None)
        if not path or not os.path.realpath(path).startswith(dirs):
            continue
        names.append(name)
    _State.names, _State.modules_seen = names, n
    return names


def import_modules(names: list[str], threads: Any = None) -> tuple[int, list[str]]:
    """Worker side: import what this worker lacks; return its pid and the names that failed.

    The thread budget goes first, so that BLAS/OpenMP libraries start with it.
    What an import prints is dropped (the worker's terminal is the server's).
    """
    budget.apply(threads)
    failed = []
    out, err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = io.StringIO()
    try:
        for name in names:
            if name in sys.modules:
                continue
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: B036 - SystemExit from a module is a failed import too
                failed.append(name)
    finally:
        sys.stdout, sys.stderr = out, err
    budget.apply(threads)
    return os.getpid(), failed


Submit = Callable[..., Future]


def schedule() -> None:
    """Send every started pool's workers the imports they lack; never waits, never raises."""
    try:
        names = wanted()
        if not names:
            return
        for key, identity, submit, pids, threads in _targets():
            _send(key, identity, submit, pids, threads, names)
    except Exception:  # a broken pool or a strange module must never disturb the kernel
        return


def post_run_cell(result: Any = None) -> None:
    """IPython ``post_run_cell`` hook (registered by ``%load_ext``)."""
    schedule()


def _send(
    key: str, identity: int, submit: Submit, pids: list[int], threads: Any, names: list[str]
) -> None:
    with _State.lock:
        todo = [n for n in names if n not in _State.failed]
        known, sent, pending = _State.sent.get(key, (identity, set(), 0))
        if known != identity:  # a new pool: nothing sent to it yet
            sent, pending = set(), 0
        new = any(n not in sent for n in todo)
        behind = any(not set(todo) <= _State.have.get(pid, set()) for pid in pids)
        if not todo or not (new or (behind and not pending)):
            return
        _State.sent[key] = (identity, sent | set(todo), pending + len(pids))
    for _ in pids:
        future = submit(import_modules, todo, threads)
        future.add_done_callback(lambda f, todo=todo: _done(key, identity, todo, f))


def _done(key: str, identity: int, todo: list[str], future: Future) -> None:
    with _State.lock:
        known, sent, pending = _State.sent.get(key, (identity, set(), 1))
        if known == identity:
            _State.sent[key] = (identity, sent, max(0, pending - 1))
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            # the worker died importing (a crashing extension): none of these again
            _State.failed.update(n for n in todo if n not in _have_anywhere())
            return
        pid, failed = future.result()
        _State.failed.update(failed)
        _State.have.setdefault(pid, set()).update(n for n in todo if n not in failed)


def _have_anywhere() -> set[str]:
    return set().union(*_State.have.values()) if _State.have else set()


def _targets() -> list[tuple[str, int, Submit, list[int], Any]]:
    """(key, pool identity, submit, worker pids, thread budget) of every started process pool."""
    from . import pool
    from .backends import _loky_compat as compat

    out = []
    executor = compat.current_executor()
    if executor is not None and compat._usable(executor):
        pids = sorted(p.pid for p in compat.worker_processes(executor))
        if pids:
            threads = budget.for_workers(len(pids))
            out.append(("loky", id(executor), executor.submit, pids, threads))
    for key, backend in list(pool._extra.items()):
        if not backend.preimports or backend.pool_id() is None:
            continue
        pids = backend.worker_pids()
        if pids:
            threads = budget.for_workers(backend.n_workers)
            out.append((key, backend.pool_id(), backend.submit, pids, threads))
    return out


def imported_in_workers() -> dict[int, set[str]]:
    """Worker pid -> modules it confirmed (for ``%parmagic status`` and tests)."""
    with _State.lock:
        return {pid: set(names) for pid, names in _State.have.items()}
