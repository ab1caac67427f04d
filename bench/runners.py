"""The tools the benchmark compares, and how each runs a map-shaped workload.

parmagic four ways (``%%parallel`` and ``%pmap`` typed into a real IPython shell,
and the engine under them, ``parmagic.run_cell`` and ``parmagic.pmap``) and the
anchors: joblib, a chunked loky map, ``multiprocessing.Pool``, mpire and the plain
serial loop. ``PM`` is set by ``bench.py`` once the fork-based pools have started.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import sys
from collections.abc import Callable
from typing import Any

import workloads as W

# Tool labels, in the order the report lists them.
MAGIC_PAR = "%%parallel (magic)"
MAGIC_PAR_KERNEL = "%%parallel (magic, notebook display)"
MAGIC_PMAP = "%pmap (magic)"
ENGINE_CELL = "run_cell (engine)"
ENGINE_PMAP = "pmap (engine)"
JOBLIB = "joblib"
LOKY_MAP = "loky map (chunked)"
MP_POOL = "mp.Pool"
MPIRE = "mpire"
SERIAL = "serial"
#: the %%parallel cell's own source run without the magic: the plain loop a notebook user has
#: (a module-level loop over globals: slower than SERIAL's comprehension in a function)
PLAIN_CELL = "plain cell"
PARMAGIC_TOOLS = (MAGIC_PAR, MAGIC_PMAP, ENGINE_CELL, ENGINE_PMAP)
ANCHORS = (JOBLIB, LOKY_MAP, MP_POOL, MPIRE, SERIAL)
ALL_TOOLS = PARMAGIC_TOOLS + ANCHORS


def log(msg: str) -> None:
    """Progress note on stderr (stdout carries the report)."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pools


class Pools:
    """The anchors' persistent pools, one per worker count, created and warmed before timing.

    ``multiprocessing.Pool`` and mpire fork, so they are started first, while this
    process has no other threads yet.
    """

    def __init__(self) -> None:
        self.mp: dict[int, Any] = {}
        self.mpire: dict[int, Any] = {}
        self.loky: dict[int, Any] = {}

    def start_forking(self, counts: set[int], tools: set[str]) -> None:
        for n in sorted(counts):
            if MP_POOL in tools:
                self.mp_pool(n)
            if MPIRE in tools:
                self.mpire_pool(n)

    def mp_pool(self, n: int):
        if n not in self.mp:
            pool = multiprocessing.get_context("fork").Pool(n)
            pool.map(W.inc, range(4 * n))
            self.mp[n] = pool
        return self.mp[n]

    def mpire_pool(self, n: int):
        if n not in self.mpire:
            from mpire import WorkerPool

            pool = WorkerPool(n_jobs=n, keep_alive=True)
            pool.map(W.inc, range(4 * n))
            self.mpire[n] = pool
        return self.mpire[n]

    def loky_executor(self, n: int):
        # A dedicated executor, not loky's get_reusable_executor() singleton: parmagic
        # may use that singleton with other arguments, and taking turns with it would
        # restart the workers at every call. The map is the same code either way.
        if n not in self.loky:
            from loky import ProcessPoolExecutor

            ex = ProcessPoolExecutor(max_workers=n)
            list(ex.map(W.inc, range(4 * n)))
            self.loky[n] = ex
        return self.loky[n]

    def close(self) -> None:
        for pool in self.mp.values():
            pool.terminate()
            pool.join()
        for pool in self.mpire.values():
            pool.terminate()
        for ex in self.loky.values():
            ex.shutdown(wait=True)


POOLS = Pools()


# --------------------------------------------------------------------------- parmagic


class Parmagic:
    """parmagic's API and an IPython shell with the extension loaded; ``error`` says why not."""

    def __init__(self) -> None:
        self.error = ""
        self.mod = None
        self.ip = None
        try:
            import parmagic

            for name in ("pmap", "run_cell", "shutdown"):
                if not hasattr(parmagic, name):
                    raise ImportError(f"parmagic has no {name}() yet")
            self.mod = parmagic
        except Exception as e:  # the engine may not have landed yet
            self.error = f"{type(e).__name__}: {e}"
            return
        try:
            self.ip = make_shell()
            with quiet():
                self.ip.run_line_magic("load_ext", "parmagic")
        except Exception as e:
            self.error = f"IPython shell: {type(e).__name__}: {e}"
            self.ip = None

    def version(self) -> str:
        return getattr(self.mod, "__version__", "?") if self.mod else "n/a"

    def cell(self, source: str, ns: dict, **options):
        """``parmagic.run_cell`` with its progress and summary text kept off the terminal."""
        with quiet():
            return self.mod.run_cell(source, ns, **options)

    def pmap(self, func, *iterables, **options):
        """``parmagic.pmap``, kept quiet as ``cell``."""
        with quiet():
            return self.mod.pmap(func, *iterables, **options)

    def shell(self, source: str, ns: dict, result: str | None):
        """Run ``source`` as one cell of the shell; return ``user_ns[result]``."""
        if result:  # first: the result may also be an input (the list a fit loop changes)
            self.ip.user_ns.pop(result, None)
        self.ip.user_ns.update(ns)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            res = self.ip.run_cell(source, store_history=True)
        if not res.success:
            err = res.error_in_exec or res.error_before_exec
            tail = buf.getvalue()[-2000:]
            raise RuntimeError(f"cell failed: {err!r}\n{tail}")
        return self.ip.user_ns.get(result) if result else None


def make_shell():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.enabled = False  # no history database written by the benchmark
    return InteractiveShell.instance(config=cfg)


@contextlib.contextmanager
def quiet():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield buf


PM: Parmagic | None = None


def generic_runner(
    n_jobs: int,
    func: Callable,
    items: Callable[[int], Any],
    cell: Callable[[int], str],
    expr: Callable[[int], str],
    ns: dict | Callable[[int], dict],
    result: str = "results",
    iterable_items: bool = False,
) -> Callable[[str, int], Any]:
    """Runner for a map-shaped workload: ``func`` over ``items(size)`` in each tool's usual form.

    ``cell(size)`` is the ``%%parallel`` body (it leaves its result in ``result``),
    ``expr(size)`` the ``%pmap`` comprehension; both read the names in ``ns`` (or in
    ``ns(size)``, made anew for each call, where the loop changes the objects in it).
    ``iterable_items``: the items are iterable themselves (ensembles, DataFrames), which
    mpire would unpack as argument lists, so they go to it wrapped, as its docs say.
    """

    def run(tool: str, size: int):
        if tool in (ENGINE_CELL, MAGIC_PAR, MAGIC_PAR_KERNEL, MAGIC_PMAP, PLAIN_CELL):
            # the cell forms read the namespace only (the others, only ``items``)
            scope = ns(size) if callable(ns) else dict(ns)
            if tool == ENGINE_CELL:
                PM.cell(cell(size), scope, n_jobs=n_jobs)
                return scope.get(result)
            if tool == MAGIC_PMAP:
                return PM.shell(f"bench_out = %pmap -n {n_jobs} {expr(size)}", scope, "bench_out")
            if tool == PLAIN_CELL:
                return PM.shell(cell(size), scope, result)
            with as_kernel(tool == MAGIC_PAR_KERNEL):
                return PM.shell(f"%%parallel -n {n_jobs}\n{cell(size)}", scope, result)
        xs = items(size)
        if tool == SERIAL:
            return [func(x) for x in xs]
        if tool == JOBLIB:
            from joblib import Parallel, delayed

            return Parallel(n_jobs=n_jobs)(delayed(func)(x) for x in xs)
        if tool == LOKY_MAP:
            chunk = max(1, len(xs) // (4 * n_jobs))
            return list(POOLS.loky_executor(n_jobs).map(func, xs, chunksize=chunk))
        if tool == MP_POOL:
            return POOLS.mp_pool(n_jobs).map(func, xs)
        if tool == MPIRE:
            if iterable_items:
                from mpire.utils import make_single_arguments

                xs = make_single_arguments(xs, generator=False)
            return POOLS.mpire_pool(n_jobs).map(func, xs)
        if tool == ENGINE_PMAP:
            return PM.pmap(func, xs, n_jobs=n_jobs)
        raise KeyError(tool)

    return run


def loop_cell(call: str) -> Callable[[int], str]:
    return lambda n: f"results = []\nfor i in range({n}):\n    results.append({call})\n"


@contextlib.contextmanager
def as_kernel(on: bool):
    """Make parmagic choose its Jupyter-kernel view (the live widget) while ``on``."""
    if not on:
        yield
        return
    from parmagic import display

    saved = display.environment
    display.environment = lambda: display.KERNEL
    try:
        yield
    finally:
        display.environment = saved
