"""parmagic benchmark: each workload through parmagic and through the usual tools.

    python bench/bench.py              # full run (5 repeats), markdown report on stdout
    python bench/bench.py --quick      # smoke run: small sizes, 1 repeat (< ~60 s on 2 cores)
    python bench/bench.py --scale      # 8/16-worker runs; needs a machine with >= 16 cores
    python bench/bench.py --results bench/RESULTS.md   # also write the report there

Every workload runs through parmagic (the engine behind ``%%parallel`` and
``%pmap``, and both magics through a real IPython shell) and through anchors:
joblib (loky backend, default batching), a chunked loky map, a
``multiprocessing.Pool`` and mpire, all in this one process. Pools are created
and warmed before timing; within each repeat the tools run round-robin (the
starting tool rotates), and the report gives the median and min-max of the
repeats, the ratios parmagic / each anchor, each bar of the benchmark issue
with PASS/FAIL, and whether every result equals the serial loop's. On a shared
machine a full run waits for quiet and reruns calls that other processes
disturbed (--quiet-load). Progress notes go to stderr, the report to stdout.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import importlib.metadata
import io
import json
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # workers inherit sys.path, so they can import ``workloads``
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)  # parmagic from the checkout when it is not installed

import workloads as W  # noqa: E402

MB = 1024 * 1024

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
        self.ip.user_ns.update(ns)
        if result:
            self.ip.user_ns.pop(result, None)
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


# --------------------------------------------------------------------------- memory


class MemSampler(threading.Thread):
    """Samples this process's RSS and the summed RSS of its child processes (peak)."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.halt = threading.Event()
        self.parent_before = self.proc.memory_info().rss
        self.children_before = self._children_rss()
        self.parent_peak = self.parent_before
        self.children_peak = self.children_before

    def _children_rss(self) -> int:
        total = 0
        for c in self.proc.children(recursive=True):
            with contextlib.suppress(Exception):
                total += c.memory_info().rss
        return total

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.interval)

    def sample(self) -> None:
        self.parent_peak = max(self.parent_peak, self.proc.memory_info().rss)
        self.children_peak = max(self.children_peak, self._children_rss())

    def stop(self) -> dict[str, float]:
        self.halt.set()
        self.join()
        self.sample()
        gc.collect()
        after = self.proc.memory_info().rss
        return {
            "parent_peak_mb": (self.parent_peak - self.parent_before) / MB,
            "parent_retained_mb": (after - self.parent_before) / MB,
            "workers_peak_mb": (self.children_peak - self.children_before) / MB,
        }


class LoadMeter:
    """CPU that other processes used while a workload ran (the benchmark's own tree excluded).

    On a shared machine this says how far to trust a row: any other load steals
    cores from the parallel tools more than from the serial loop.
    """

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.t0 = time.perf_counter()
        self.sys0 = self._system()
        self.own0 = self._own()

    def _system(self):
        c = self.psutil.cpu_times()
        busy = sum(c) - c.idle - getattr(c, "iowait", 0.0) - getattr(c, "guest", 0.0)
        busy -= getattr(c, "guest_nice", 0.0)
        return busy, getattr(c, "steal", 0.0)

    def _own(self) -> float:
        me = self.psutil.Process()
        t = me.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for c in me.children(recursive=True):
            with contextlib.suppress(Exception):
                ct = c.cpu_times()
                total += ct.user + ct.system
        return total

    def stop(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        busy, steal = self._system()
        own = self._own() - self.own0
        other = busy - self.sys0[0] - own - (steal - self.sys0[1])
        return {"other_cores": max(0.0, other / wall), "steal_cores": (steal - self.sys0[1]) / wall}


#: Retry a timed call when processes outside the benchmark used more than this many
#: cores during it (None: keep every call); set by --quiet-load.
QUIET_LOAD: float | None = None
RETRIES = 3
MIN_JUDGED_S = 0.25


QUIET_BUDGET = [900.0]  # seconds of waiting left for the whole run (--quiet-budget)
QUIET_WAITED = [0.0]
QUIET_AT = [float("-inf")]  # when the machine was last found quiet
QUIET_FRESH_S = 1.0  # a quiet finding this recent still holds (calls of milliseconds)


def wait_quiet(limit: float, window: float = 0.5, patience: float = 60.0) -> None:
    """Wait until other processes use under ``limit`` cores for ``window`` s.

    Gives up after ``patience`` s for this call, or when the run's waiting budget
    is spent; the report says how long the run waited. A quiet finding of the
    last ``QUIET_FRESH_S`` s is reused, so calls of milliseconds do not each wait.
    """
    t0 = time.perf_counter()
    if t0 - QUIET_AT[0] < QUIET_FRESH_S:
        return
    deadline = t0 + min(patience, QUIET_BUDGET[0])
    try:
        while time.perf_counter() < deadline:
            meter = LoadMeter()
            time.sleep(window)
            if meter.stop()["other_cores"] <= limit:
                QUIET_AT[0] = time.perf_counter()
                return
        log("  the machine stayed busy; timing anyway")
    finally:
        waited = time.perf_counter() - t0
        QUIET_BUDGET[0] = max(0.0, QUIET_BUDGET[0] - waited)
        QUIET_WAITED[0] += waited


# --------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    """One workload; ``runner(tool, size)`` runs it through ``tool`` at ``size`` items."""

    name: str
    n_jobs: int
    size: int  # items timed
    warm_size: int  # items of the untimed warm-up call
    tools: list[str]
    runner: Callable[[str, int], Any]
    expected: Callable[[int], Any] | None = None  # expected result at a size (None: not checked)
    memory: bool = False
    once: set[str] = field(default_factory=set)  # tools timed in the first repeat only
    guard: bool = True  # wait for / rerun on a quiet machine (off where CPU is not what's timed)
    serial_from: str = ""  # take the serial time from this workload (same items, timed once)
    note: str = ""
    cleanup: Callable[[], None] | None = None
    # at least this many repeats: calls of ~20 ms vary by 20-40% on a shared VM, so the
    # usual 5 cannot tell a 5% bar apart from noise (0: the run's --repeats)
    min_repeats: int = 0


def generic_runner(
    n_jobs: int,
    func: Callable,
    items: Callable[[int], Any],
    cell: Callable[[int], str],
    expr: Callable[[int], str],
    ns: dict,
) -> Callable[[str, int], Any]:
    """Runner for a map-shaped workload: ``func`` over ``items(size)`` in each tool's usual form.

    ``cell(size)`` is the ``%%parallel`` body (it leaves its list in ``results``),
    ``expr(size)`` the ``%pmap`` comprehension; both read the names in ``ns``.
    """

    def run(tool: str, size: int):
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
            return POOLS.mpire_pool(n_jobs).map(func, xs)
        if tool == ENGINE_PMAP:
            return PM.pmap(func, xs, n_jobs=n_jobs)
        if tool == ENGINE_CELL:
            scope = dict(ns)
            PM.cell(cell(size), scope, n_jobs=n_jobs)
            return scope.get("results")
        if tool == MAGIC_PAR:
            return PM.shell(f"%%parallel -n {n_jobs}\n{cell(size)}", ns, "results")
        if tool == MAGIC_PAR_KERNEL:
            with as_kernel(True):
                return PM.shell(f"%%parallel -n {n_jobs}\n{cell(size)}", ns, "results")
        if tool == MAGIC_PMAP:
            return PM.shell(f"bench_out = %pmap -n {n_jobs} {expr(size)}", ns, "bench_out")
        raise KeyError(tool)

    return run


def loop_cell(call: str) -> Callable[[int], str]:
    return lambda n: f"results = []\nfor i in range({n}):\n    results.append({call})\n"


def w_seed(quick: bool) -> Workload:
    """joblib's tutorial example: 10 x time.sleep(1) on 4 workers (0.2 s with --quick)."""
    n_jobs = 4

    def runner_for(secs: float):
        return generic_runner(
            n_jobs,
            W.sleep,
            lambda n: [secs] * n,
            lambda n: f"for _ in range({n}):\n    time.sleep({secs})\n",
            lambda n: f"time.sleep({secs}) for _ in range({n})",
            {"time": time},
        )

    secs = 0.2 if quick else 1.0
    timed, warm = runner_for(secs), runner_for(0.0)

    def run(tool: str, size: int):
        # the warm-up call (8 items) sleeps 0 s: it starts the pools, not the clock
        return timed(tool, size) if size == 10 else warm(tool, size)

    return Workload(
        name="seed",
        n_jobs=n_jobs,
        size=10,
        warm_size=8,
        tools=[MAGIC_PAR, MAGIC_PMAP, ENGINE_CELL, ENGINE_PMAP, JOBLIB, LOKY_MAP, MP_POOL, MPIRE],
        runner=run,
        guard=False,  # sleeping workers: other load barely matters, and reruns cost 3 s each
        note=f"10 x time.sleep({secs}) at -n 4; ideal {math.ceil(10 / 4) * secs:.1f} s",
    )


def w_tiny(size: int, n_jobs: int) -> Workload:
    run = generic_runner(
        n_jobs,
        W.inc,
        lambda n: range(n),
        loop_cell("inc(i)"),
        lambda n: f"inc(i) for i in range({n})",
        {"inc": W.inc},
    )
    return Workload(
        name=f"tiny-{size // 1000}k",
        n_jobs=n_jobs,
        size=size,
        warm_size=1000,
        tools=[MAGIC_PAR, MAGIC_PAR_KERNEL, *ALL_TOOLS[1:]],
        runner=run,
        expected=lambda n: [i + 1 for i in range(n)],
        note=f"{size:,} x inc(i) (x + 1)",
    )


def w_cpu(size: int, n_jobs: int, ms: float, loops: int, name: str = "cpu", tools=None) -> Workload:
    run = generic_runner(
        n_jobs,
        W.spin,
        lambda n: [loops] * n,
        loop_cell("spin(LOOPS)"),
        lambda n: f"spin(LOOPS) for i in range({n})",
        {"spin": W.spin, "LOOPS": loops},
    )
    one = W.spin(loops)
    return Workload(
        name=name,
        n_jobs=n_jobs,
        size=size,
        warm_size=2 * n_jobs,
        tools=list(tools or ALL_TOOLS),
        runner=run,
        expected=lambda n: [one] * n,
        note=f"{size} x ~{ms:g} ms of pure Python (spin({loops:,})) at -n {n_jobs}",
    )


def w_bigarg(mb: int, n_jobs: int) -> Workload:
    """40 iterations, each summing one slice of a captured ``mb`` MB float64 array."""
    import numpy as np

    state: dict[str, Any] = {"arr": np.random.default_rng(0).random(mb * MB // 8)}
    parts = 40

    def pick(size: int):
        # the timed call uses the whole array; the warm-up call a small slice of it
        return state["arr"] if size == parts else state["arr"][: parts * 1024]

    def expected(size: int):
        arr = pick(size)
        return [W.slice_sum(arr, i) for i in range(parts)]

    cell_src = (
        "results = []\n"
        f"for i in range({parts}):\n"
        "    results.append(float(arr[i * k:(i + 1) * k].sum()))\n"
    )

    def run(tool: str, size: int):
        arr = pick(size)
        f = functools.partial(W.slice_sum, arr)
        ns = {"arr": arr, "k": len(arr) // parts, "slice_sum": W.slice_sum}
        if tool == SERIAL:
            return [W.slice_sum(arr, i) for i in range(parts)]
        if tool == JOBLIB:  # default auto-memmapping of arrays over 1 MB
            from joblib import Parallel, delayed

            return Parallel(n_jobs=n_jobs)(delayed(W.slice_sum)(arr, i) for i in range(parts))
        if tool == LOKY_MAP:  # the array is pickled with each chunk
            chunk = max(1, parts // (4 * n_jobs))
            return list(POOLS.loky_executor(n_jobs).map(f, range(parts), chunksize=chunk))
        if tool == MP_POOL:  # the array is pickled with each chunk
            return POOLS.mp_pool(n_jobs).map(f, range(parts))
        if tool == MPIRE:  # mpire's idiom: shared_objects, inherited by fork (pool made per call)
            from mpire import WorkerPool

            with WorkerPool(n_jobs=n_jobs, shared_objects=arr, start_method="fork") as wp:
                return wp.map(W.slice_sum_shared, range(parts))
        if tool == ENGINE_PMAP:
            return PM.pmap(f, range(parts), n_jobs=n_jobs)
        if tool == ENGINE_CELL:
            scope = dict(ns)
            PM.cell(cell_src, scope, n_jobs=n_jobs)
            return scope.get("results")
        if tool == MAGIC_PAR:
            return PM.shell(f"%%parallel -n {n_jobs}\n{cell_src}", ns, "results")
        if tool == MAGIC_PMAP:
            return PM.shell(
                f"bench_out = %pmap -n {n_jobs} slice_sum(arr, i) for i in range({parts})",
                ns,
                "bench_out",
            )
        raise KeyError(tool)

    def cleanup():
        state.clear()
        if PM and PM.ip:
            for name in ("arr", "results", "bench_out"):
                PM.ip.user_ns.pop(name, None)
        gc.collect()

    return Workload(
        name="bigarg",
        n_jobs=n_jobs,
        size=parts,
        warm_size=1,  # warm-up on a small array: same code paths, no big transfer
        tools=list(ALL_TOOLS),
        runner=run,
        expected=expected,
        memory=True,
        note=f"{parts} x sum of a slice of a captured {mb} MB float64 array",
        cleanup=cleanup,
    )


PROGRESS_OFF_ENGINE = "run_cell --no-progress (notebook)"
PROGRESS_WIDGET_ENGINE = "run_cell widget (notebook)"
PROGRESS_OFF_MAGIC = "%%parallel --no-progress (notebook)"
PROGRESS_WIDGET_MAGIC = "%%parallel widget (notebook)"
PROGRESS_OFF_TERM = "%%parallel --no-progress (terminal)"
PROGRESS_TEXT_TERM = "%%parallel text view (terminal)"
PROGRESS_PAIRS = (
    (PROGRESS_WIDGET_ENGINE, PROGRESS_OFF_ENGINE),
    (PROGRESS_WIDGET_MAGIC, PROGRESS_OFF_MAGIC),
    (PROGRESS_TEXT_TERM, PROGRESS_OFF_TERM),
)


def w_progress(size: int, n_jobs: int, min_repeats: int = 0) -> Workload:
    """The same tiny loop with the progress display on and off.

    The "(notebook)" rows make ``parmagic.display`` see a Jupyter kernel, on and off
    alike, so the on row builds and updates parmagic's real ipywidgets bar (its
    comm goes nowhere) and both show the notebook's end-of-run summary; the
    "(terminal)" rows are what terminal IPython shows.
    """
    cell = loop_cell("inc(i)")
    ns = {"inc": W.inc}
    notebook = {
        PROGRESS_OFF_ENGINE,
        PROGRESS_WIDGET_ENGINE,
        PROGRESS_OFF_MAGIC,
        PROGRESS_WIDGET_MAGIC,
    }
    off = {PROGRESS_OFF_ENGINE, PROGRESS_OFF_MAGIC, PROGRESS_OFF_TERM}

    def run(tool: str, n: int):
        with as_kernel(tool in notebook):
            if tool in (PROGRESS_OFF_ENGINE, PROGRESS_WIDGET_ENGINE):
                scope = dict(ns)
                PM.cell(cell(n), scope, n_jobs=n_jobs, progress=tool not in off)
                return scope.get("results")
            flag = " --no-progress" if tool in off else ""
            return PM.shell(f"%%parallel -n {n_jobs}{flag}\n{cell(n)}", ns, "results")

    return Workload(
        name="progress",
        n_jobs=n_jobs,
        size=size,
        warm_size=1000,
        tools=[t for pair in PROGRESS_PAIRS for t in pair],
        runner=run,
        expected=lambda n: [i + 1 for i in range(n)],
        note=f"{size:,} x inc(i) with the progress display on (live widget; text view) and off",
        min_repeats=min_repeats,
    )


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


# --------------------------------------------------------------------------- harness


@dataclass
class Stat:
    times: list[float] = field(default_factory=list)
    mem: list[dict[str, float]] = field(default_factory=list)
    error: str = ""  # the tool could not run this workload
    load: list[dict[str, float]] = field(default_factory=list)  # other processes' CPU per call
    discarded: int = 0  # timed calls thrown away because other processes were busy
    mismatch: str = ""  # it ran, but its result differs from the serial loop's

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")


def check(w: Workload, out: Any, size: int) -> str:
    """Compare a result with the serial loop's, exactly; return what differs ("" if nothing)."""
    if w.expected is None:
        if out is not None and hasattr(out, "__len__") and len(out) != size:
            return f"{len(out)} results, expected {size}"
        return ""
    want = w.expected(size)
    got = list(out) if out is not None else None
    if got == want:
        return ""
    if got is None or len(got) != len(want):
        return f"got {None if got is None else len(got)} results, expected {len(want)}"
    bad = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    i = bad[0]
    return f"{len(bad)} of {len(want)} results differ (first: [{i}] {got[i]!r} != {want[i]!r})"


def run_workload(w: Workload, repeats: int) -> dict[str, Stat]:
    repeats = max(repeats, w.min_repeats)
    stats = {t: Stat() for t in w.tools}
    tools = []
    for t in w.tools:
        if t in PARMAGIC_TOOLS or t.startswith(("run_cell", "%%parallel", "%pmap")):
            if PM is None or PM.mod is None:
                stats[t].error = f"n/a: {PM.error if PM else 'parmagic not loaded'}"
                continue
            if t.startswith("%") and PM.ip is None:
                stats[t].error = f"n/a: {PM.error}"
                continue
        tools.append(t)
    log(f"[{w.name}] warm-up: {', '.join(tools) or 'no tool can run it'}")
    for t in tools:
        try:
            out = w.runner(t, w.warm_size)
            stats[t].mismatch = check(w, out, w.warm_size)
        except Exception as e:
            stats[t].error = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
            log(f"  {t}: warm-up failed: {e}")
    tools = [t for t in tools if not stats[t].error]
    for r in range(repeats if tools else 0):
        k = r % len(tools)
        order = tools[k:] + tools[:k]
        for t in order:
            if r > 0 and t in w.once:
                continue
            if stats[t].error:
                continue
            for attempt in range(RETRIES + 1):
                guard = QUIET_LOAD is not None and w.guard
                if guard:
                    wait_quiet(QUIET_LOAD)
                gc.collect()
                sampler = MemSampler() if w.memory else None
                if sampler:
                    sampler.start()
                meter = LoadMeter()
                t0 = time.perf_counter()
                try:
                    out = w.runner(t, w.size)
                except Exception as e:
                    stats[t].error = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
                    log(f"  {t}: failed: {e}")
                    if sampler:
                        sampler.stop()
                    break
                dt = time.perf_counter() - t0
                load = meter.stop()
                mem = sampler.stop() if sampler else None
                bad = check(w, out, w.size)
                if bad:
                    stats[t].mismatch = bad
                    log(f"  {t}: result differs from the serial loop: {bad}")
                del out
                # /proc's CPU times tick every 10 ms: only a call of 0.25 s or more says
                # reliably how busy the others were during it (shorter ones rely on the wait)
                busy = guard and dt >= MIN_JUDGED_S and load["other_cores"] > QUIET_LOAD
                if busy and attempt < RETRIES:
                    stats[t].discarded += 1
                    log(
                        f"  {t}: {dt:.3f} s discarded: other processes used {load['other_cores']:.2f} cores"
                    )
                    continue
                stats[t].times.append(dt)
                stats[t].load.append(load)
                if mem:
                    stats[t].mem.append(mem)
                break
        done = ", ".join(
            f"{t} {stats[t].times[-1]:.3f}" for t in tools if stats[t].times and not stats[t].error
        )
        log(f"[{w.name}] repeat {r + 1}/{repeats}: {done}")
    if w.cleanup:
        w.cleanup()
    return stats


# --------------------------------------------------------------------------- cold start


COLD_CELL = "results = []\nfor i in range(1000):\n    results.append(inc(i))\n"


def cold_child(wait: float) -> None:
    """In a fresh interpreter: time %load_ext, wait, then the first and later %%parallel cells."""
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    ip = make_shell()
    out["shell_s"] = time.perf_counter() - t0
    with quiet():  # a notebook has run cells before: IPython's own first-cell costs are paid
        ip.run_cell("x = 1", store_history=True)
    t0 = time.perf_counter()
    with quiet():
        res = ip.run_cell("%load_ext parmagic", store_history=True)
    out["load_ext_s"] = time.perf_counter() - t0
    if not res.success:
        raise SystemExit(f"%load_ext parmagic failed: {res.error_in_exec!r}")
    time.sleep(wait)
    ip.user_ns["inc"] = W.inc

    def cell() -> float:
        buf = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            res = ip.run_cell("%%parallel\n" + COLD_CELL, store_history=True)
        dt = time.perf_counter() - t0
        if not res.success or ip.user_ns.get("results") != [i + 1 for i in range(1000)]:
            raise SystemExit(f"cold cell failed: {res.error_in_exec!r}\n{buf.getvalue()[-1500:]}")
        return dt

    out["first_s"] = cell()
    out["warm_s"] = statistics.median(cell() for _ in range(5))
    # joblib beside it, for context: its first call in this process vs a warm one
    from joblib import Parallel, delayed

    def jl() -> float:
        t0 = time.perf_counter()
        Parallel(n_jobs=-1)(delayed(W.inc)(i) for i in range(1000))
        return time.perf_counter() - t0

    out["joblib_first_s"] = jl()
    out["joblib_warm_s"] = statistics.median(jl() for _ in range(5))
    import parmagic

    parmagic.shutdown()
    print("COLD " + json.dumps(out), flush=True)


def run_cold(repeats: int, wait: float) -> dict[str, Any]:
    rows: list[dict[str, float]] = []
    error = ""
    if PM is None or PM.mod is None:
        return {"rows": rows, "error": f"n/a: {PM.error if PM else 'parmagic not loaded'}"}
    for r in range(repeats):
        if QUIET_LOAD is not None:
            wait_quiet(QUIET_LOAD)
        cmd = [sys.executable, os.path.abspath(__file__), "--cold-child", str(wait)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("COLD ")]
        if p.returncode or not line:
            error = f"error: child exit {p.returncode}: {(p.stderr or p.stdout)[-300:]}"
            log(f"[cold] {error}")
            break
        rows.append(json.loads(line[-1][5:]))
        d = rows[-1]
        log(
            f"[cold] repeat {r + 1}/{repeats}: first {d['first_s']:.3f} warm {d['warm_s']:.3f}"
            f" load_ext {d['load_ext_s']:.3f}"
        )
    return {"rows": rows, "error": error, "wait": wait}


# --------------------------------------------------------------------------- report


def fmt(x: float) -> str:
    if x != x:
        return "n/a"
    return f"{x:.3f}" if x < 100 else f"{x:.1f}"


def serial_median(results, w: Workload) -> float:
    """The serial loop's median for ``w`` (from ``w.serial_from`` when it has none itself)."""
    stats = results[w.serial_from][1] if w.serial_from in results else results[w.name][1]
    serial = stats.get(SERIAL)
    return serial.median if serial and serial.times else float("nan")


def table_times(results: dict[str, tuple[Workload, dict[str, Stat]]]) -> list[str]:
    lines = [
        "| workload | tool | median s | min-max s | speedup vs serial | other load (cores) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for wname, (w, stats) in results.items():
        s_med = serial_median(results, w)
        for t, st in stats.items():
            if not st.times:
                lines.append(f"| {wname} | {t} | {st.error or 'n/a'} | | | |")
                continue
            sp = s_med / st.median if s_med == s_med and t != SERIAL else float("nan")
            note = f" ({st.error})" if st.error else ""
            note += " (result differs!)" if st.mismatch else ""
            judged = [
                x["other_cores"]
                for x, dt in zip(st.load, st.times, strict=True)
                if dt >= MIN_JUDGED_S
            ]
            other = max(judged) if judged else float("nan")
            lines.append(
                f"| {wname} | {t}{note} | {fmt(st.median)} | {fmt(min(st.times))}-"
                f"{fmt(max(st.times))} | {fmt(sp) + 'x' if sp == sp else ''} | "
                f"{'-' if other != other else f'{other:.2f}'} |"
            )
    return lines


def table_ratios(results: dict[str, tuple[Workload, dict[str, Stat]]]) -> list[str]:
    anchors = [a for a in (JOBLIB, LOKY_MAP, MP_POOL, MPIRE, SERIAL)]
    lines = [
        "| workload | parmagic | " + " | ".join(f"/ {a}" for a in anchors) + " |",
        "|---|---|" + "---:|" * len(anchors),
    ]
    for wname, (_w, stats) in results.items():
        for t in (MAGIC_PAR, MAGIC_PAR_KERNEL, *PARMAGIC_TOOLS[1:]):
            st = stats.get(t)
            if not st or not st.times:
                continue
            cells = []
            for a in anchors:
                sa = stats.get(a)
                cells.append(f"{st.median / sa.median:.2f}" if sa and sa.times else "")
            lines.append(f"| {wname} | {t} | " + " | ".join(cells) + " |")
    return lines


def table_memory(w: Workload, stats: dict[str, Stat]) -> list[str]:
    lines = [
        "| tool | wall median s | parent peak +MB | parent retained +MB | workers peak +MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for t, st in stats.items():
        if not st.mem:
            continue

        def med(key, st=st):
            return statistics.median(m[key] for m in st.mem)

        lines.append(
            f"| {t} | {fmt(st.median)} | {med('parent_peak_mb'):.0f} | "
            f"{med('parent_retained_mb'):.0f} | {med('workers_peak_mb'):.0f} |"
        )
    return lines


class Bars:
    def __init__(self, binding: bool):
        self.rows: list[tuple[str, str, str, str]] = []
        self.binding = binding
        self.failed = 0

    def add(self, bar: str, measured: str, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        if ok is False:
            self.failed += 1
        self.rows.append((bar, measured, verdict, ""))

    def report(self, what: str, measured: str) -> None:
        """A number the issue asks to see but sets no bar on."""
        self.rows.append((what, measured, "reported", ""))

    def lines(self) -> list[str]:
        head = "| bar | measured | result |"
        if not self.binding:
            head = "| bar (smoke run: sizes too small to judge) | measured | result |"
        out = [head, "|---|---|---|"]
        out += [f"| {b} | {m} | {v} |" for b, m, v, _ in self.rows]
        return out


def med(results, wname: str, tool: str) -> float:
    if wname not in results:
        return float("nan")
    st = results[wname][1].get(tool)
    return st.median if st and st.times else float("nan")


def ratio_bar(bars: Bars, results, wname, tool, anchor, limit) -> None:
    a, b = med(results, wname, tool), med(results, wname, anchor)
    if a != a or b != b:
        bars.add(f"{wname}: {tool} / {anchor} <= {limit}x", "n/a", None)
        return
    r = a / b
    bars.add(
        f"{wname}: {tool} / {anchor} <= {limit}x",
        f"{r:.2f}x ({fmt(a)} s / {fmt(b)} s)",
        r <= limit,
    )


def scale_cpu_bars(bars: Bars, results, wname: str, w: Workload) -> None:
    """Speedups at 8 and 16 workers; at 16, parmagic's must reach the best anchor's."""
    s_med = serial_median(results, w)
    speedups = {}
    for tool in (MAGIC_PAR, ENGINE_CELL, ENGINE_PMAP, JOBLIB, MP_POOL):
        p = med(results, wname, tool)
        if s_med == s_med and p == p:
            speedups[tool] = s_med / p
            bars.report(
                f"{wname}: {tool} speedup", f"{s_med / p:.2f}x ({fmt(s_med)} s serial / {fmt(p)} s)"
            )
    anchors = [speedups[t] for t in (JOBLIB, MP_POOL) if t in speedups]
    if w.n_jobs < 16 or not anchors:
        return
    best = max(anchors)
    for tool in (MAGIC_PAR, ENGINE_CELL, ENGINE_PMAP):
        got = speedups.get(tool)
        bars.add(
            f"{wname}: {tool} speedup >= the best anchor's ({best:.2f}x)",
            "n/a" if got is None else f"{got:.2f}x",
            None if got is None else got >= best,
        )


def evaluate_bars(results, cold, binding: bool, quick: bool, tiny_big: str) -> Bars:
    bars = Bars(binding)
    for tool in (MAGIC_PMAP, ENGINE_PMAP) if tiny_big in results else ():
        ratio_bar(bars, results, tiny_big, tool, JOBLIB, 0.5)
        ratio_bar(bars, results, tiny_big, tool, LOKY_MAP, 1.5)
    for wname in [k for k in results if k.startswith("tiny-")]:
        for tool in (MAGIC_PAR, MAGIC_PAR_KERNEL, ENGINE_CELL):
            ratio_bar(bars, results, wname, tool, JOBLIB, 1.0)
    for wname, (w, _stats) in results.items():
        if wname.startswith("scale-cpu"):
            scale_cpu_bars(bars, results, wname, w)
        if wname.startswith("scale-tiny"):
            for tool in (MAGIC_PAR, ENGINE_CELL, ENGINE_PMAP):
                ratio_bar(bars, results, wname, tool, JOBLIB, 0.1)
    if "cpu" in results:
        w = results["cpu"][0]
        need = 0.93 * w.n_jobs
        s = med(results, "cpu", SERIAL)
        for tool in (MAGIC_PAR, MAGIC_PMAP, ENGINE_CELL, ENGINE_PMAP):
            p = med(results, "cpu", tool)
            if s != s or p != p:
                bars.add(f"cpu: {tool} speedup >= {need:.2f}x", "n/a", None)
            else:
                bars.add(
                    f"cpu: {tool} speedup >= 0.93 x {w.n_jobs} = {need:.2f}x",
                    f"{s / p:.2f}x ({fmt(s)} s serial / {fmt(p)} s)",
                    s / p >= need,
                )
    if "seed" in results:
        secs = 0.2 if quick else 1.0
        ideal = math.ceil(10 / 4) * secs
        for tool in (MAGIC_PAR, MAGIC_PMAP, ENGINE_CELL, ENGINE_PMAP):
            v = med(results, "seed", tool)
            bars.add(
                f"seed: {tool} <= ideal {ideal:.1f} s + 0.1 s",
                "n/a" if v != v else f"{fmt(v)} s",
                None if v != v else v <= ideal + 0.1,
            )
    if "bigarg" in results:
        stats = results["bigarg"][1]
        for tool in (MAGIC_PAR, ENGINE_CELL, MAGIC_PMAP, ENGINE_PMAP):
            ratio_bar(bars, results, "bigarg", tool, JOBLIB, 1.0)
            st = stats.get(tool)
            if st and st.mem:
                peak = statistics.median(m["parent_peak_mb"] for m in st.mem)
                kept = statistics.median(m["parent_retained_mb"] for m in st.mem)
                bars.add(
                    f"bigarg: {tool} parent memory growth < 50 MB (peak and retained)",
                    f"peak +{peak:.0f} MB, retained +{kept:.0f} MB",
                    peak < 50 and kept < 50,
                )
            else:
                bars.add(f"bigarg: {tool} parent memory growth < 50 MB", "n/a", None)
    if cold is not None:
        rows = cold["rows"]
        if rows:
            first = statistics.median(r["first_s"] for r in rows)
            warm = statistics.median(r["warm_s"] for r in rows)
            bars.add(
                f"cold: first %%parallel cell {cold['wait']:g} s after %load_ext <= warm + 0.05 s",
                f"{first:.3f} s vs warm {warm:.3f} s (+{first - warm:.3f} s)",
                first <= warm + 0.05,
            )
        else:
            bars.add("cold: first cell <= warm + 0.05 s", cold["error"] or "n/a", None)
    if "progress" in results:
        for on, off in PROGRESS_PAIRS:
            a, b = med(results, "progress", on), med(results, "progress", off)
            bars.add(
                f"progress: {on} / {off} <= 1.05x",
                "n/a" if a != a or b != b else f"{a / b:.3f}x ({fmt(a)} s / {fmt(b)} s)",
                None if a != a or b != b else a / b <= 1.05,
            )
    return bars


def machine_lines(argv: list[str]) -> list[str]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for ln in f:
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(Exception):
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
    vers = []
    for pkg in ("parmagic", "joblib", "loky", "mpire", "numpy", "ipython", "cloudpickle", "psutil"):
        try:
            vers.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            vers.append(f"{pkg} (not installed)")
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "-C", ROOT, "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--", "parmagic"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if commit and dirty:
            commit += " + uncommitted changes in parmagic/"
    snap = os.path.join(ROOT, ".bench-commit")  # a snapshot made with `git archive`
    if not commit and os.path.exists(snap):
        with open(snap) as f:
            commit = f.read().strip() + " (git archive snapshot)"
    where = "n/a"
    with contextlib.suppress(Exception):
        import parmagic

        where = os.path.dirname(parmagic.__file__)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: `{' '.join(shlex.quote(a) for a in argv)}`",
        f"- machine: {cores} cores usable (nproc), os.cpu_count() {os.cpu_count()}, {cpu}, {mem}",
        f"- {platform.platform()}; Python {platform.python_version()}",
        f"- versions: {', '.join(vers)}",
        f"- parmagic: {where}, commit {commit or 'n/a'}",
    ]


# --------------------------------------------------------------------------- main


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv: list[str] | None = None) -> int:
    global PM
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 repeat")
    ap.add_argument("--scale", action="store_true", help="8/16-worker runs (needs >= 16 cores)")
    ap.add_argument("--force", action="store_true", help="run --scale even with < 16 cores")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 5, 1 with --quick)")
    ap.add_argument("-n", "--n-jobs", type=int, default=2, help="workers (default 2; seed uses 4)")
    ap.add_argument("--only", default="", help="comma-separated workloads to run")
    ap.add_argument("--results", default="", help="also write the markdown report to this file")
    ap.add_argument("--json", default="", help="write the raw timings to this file")
    ap.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a bar fails or a result differs from the serial loop's "
        "(without it, exit 1 only when something failed to run)",
    )
    ap.add_argument(
        "--quiet-load",
        type=float,
        default=None,
        help="on a shared machine: wait until other processes use under this many cores before "
        "each timed call, and retry (up to 3 times) a call during which they used more "
        "(default 0.25 for a full run, off with --quick; 0 or less: off)",
    )
    ap.add_argument(
        "--quiet-budget",
        type=float,
        default=900.0,
        help="most seconds the whole run may spend waiting for a quiet machine (default 900)",
    )
    ap.add_argument("--cold-child", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cold_child is not None:
        cold_child(args.cold_child)
        return 0

    global QUIET_LOAD
    quick = args.quick
    q = args.quiet_load if args.quiet_load is not None else (None if quick else 0.25)
    QUIET_LOAD = q if q is not None and q > 0 else None
    QUIET_BUDGET[0] = args.quiet_budget
    repeats = args.repeats or (1 if quick else 5)
    n = args.n_jobs
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    cmdline = [os.path.relpath(sys.executable, ROOT), os.path.relpath(__file__, ROOT)]
    cmdline += sys.argv[1:] if argv is None else argv

    if args.scale and usable_cores() < 16 and not args.force:
        print(
            f"--scale needs a machine with at least 16 cores; this one has {usable_cores()}. "
            "Refusing (pass --force to run it anyway, oversubscribed).",
            file=sys.stderr,
        )
        return 2

    log("calibrating the pure-Python loop ...")
    loops10 = W.spin_loops_for(10.0)
    workloads: list[Callable[[], Workload]] = []
    if args.scale:
        loops36 = int(loops10 * 3.6)
        tools = [MAGIC_PAR, ENGINE_CELL, ENGINE_PMAP, JOBLIB, MP_POOL, SERIAL]
        sz = 32 if quick else 320
        tiny = 10_000 if quick else 100_000
        workloads = [
            lambda: _named(w_cpu(sz, 8, 36, loops36), "scale-cpu36 @8", tools, once={SERIAL}),
            lambda: _named(
                w_cpu(sz, 16, 36, loops36),
                "scale-cpu36 @16",
                tools[:-1],
                serial_from="scale-cpu36 @8",
            ),
            lambda: _named(w_tiny(tiny, 16), f"scale-tiny-{tiny // 1000}k @16", tools),
        ]
        counts = {8, 16}
        tiny_big = ""
    else:
        tiny_sizes = (2_000, 10_000) if quick else (20_000, 100_000)
        tiny_big = f"tiny-{tiny_sizes[1] // 1000}k"
        named = {
            "seed": lambda: w_seed(quick),
            f"tiny-{tiny_sizes[0] // 1000}k": lambda: w_tiny(tiny_sizes[0], n),
            tiny_big: lambda: w_tiny(tiny_sizes[1], n),
            "cpu": lambda: w_cpu(40 if quick else 200, n, 10, loops10),
            "bigarg": lambda: w_bigarg(20 if quick else 200, n),
            "progress": lambda: w_progress(2_000 if quick else 20_000, n, 0 if quick else 150),
        }
        keys = [k for k in named if not only or k in only or k.split("-")[0] in only]
        workloads = [named[k] for k in keys]
        counts = {n, 4} if (not only or "seed" in only) else {n}

    # fork-based pools first, while this process has no threads
    POOLS.start_forking(counts, {MP_POOL} if args.scale else {MP_POOL, MPIRE})
    log("loading parmagic and an IPython shell ...")
    PM = Parmagic()
    if PM.error:
        log(f"parmagic unavailable, its rows will read n/a: {PM.error}")

    results: dict[str, tuple[Workload, dict[str, Stat]]] = {}
    t_start = time.perf_counter()
    cold = None
    try:
        for make in workloads:
            w = make()
            results[w.name] = (w, run_workload(w, repeats))
        if not args.scale and (not only or "cold" in only):
            cold = run_cold(1 if quick else repeats, 2.0)
    finally:
        POOLS.close()
        if PM and PM.mod:
            with contextlib.suppress(Exception):
                PM.mod.shutdown()
    elapsed = time.perf_counter() - t_start

    binding = not quick and not (args.scale and usable_cores() < 16)
    bars = evaluate_bars(results, cold, binding, quick, tiny_big)
    report = render(results, cold, bars, cmdline, repeats, elapsed, args, n)
    print(report)
    if args.results:
        with open(args.results, "w") as f:
            f.write(report)
    if args.json:
        raw = {
            wname: {t: {"times": st.times, "mem": st.mem, "error": st.error} for t, st in s.items()}
            for wname, (_w, s) in results.items()
        }
        raw["cold"] = cold
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
    broken = [
        f"{wname} / {t}: {st.error}"
        for wname, (_w, stats) in results.items()
        for t, st in stats.items()
        if st.error.startswith("error")
    ]
    if cold is not None and cold.get("error", "").startswith("error"):
        broken.append(f"cold: {cold['error']}")
    differ = [
        f"{wname} / {t}"
        for wname, (_w, stats) in results.items()
        for t, st in stats.items()
        if st.mismatch
    ]
    for line in broken:
        log(f"FAILED TO RUN: {line}")
    if differ:
        log(f"results differ from the serial loop's: {', '.join(differ)}")
    if broken:
        return 1  # the smoke test's job: every tool ran every workload
    return 1 if (args.strict and (bars.failed or differ)) else 0


def _named(w: Workload, name: str, tools: list[str], **changes: Any) -> Workload:
    w.name = name
    w.tools = list(tools)
    for key, value in changes.items():
        setattr(w, key, value)
    return w


def quiet_line(results) -> str:
    if QUIET_LOAD is None:
        return "off (every timed call kept, whatever else ran)"
    n = sum(st.discarded for _w, stats in results.values() for st in stats.values())
    return (
        f"each timed call (seed excepted: its workers sleep) waited until other processes used < {QUIET_LOAD:g} cores, and was "
        f"rerun (up to {RETRIES} times) if they used more during it; {n} call(s) rerun, "
        f"{QUIET_WAITED[0]:.0f} s spent waiting"
        + ("; the waiting budget ran out" if QUIET_BUDGET[0] <= 0 else "")
    )


def render(results, cold, bars: Bars, cmdline, repeats, elapsed, args, n) -> str:
    mode = "scale" if args.scale else ("quick (smoke)" if args.quick else "full")
    out = ["# parmagic benchmark", ""]
    out += machine_lines(cmdline)
    out += [
        f"- mode: {mode}; {repeats} repeat(s) per tool, round-robin; -n {n} (seed: -n 4); "
        f"{elapsed:.0f} s in all",
        f"- shared-machine guard: {quiet_line(results)}",
        "",
        "## Workloads",
        "",
    ]
    for wname, (w, _s) in results.items():
        more = (
            f" ({w.min_repeats} repeats: calls of milliseconds)" if w.min_repeats > repeats else ""
        )
        out.append(f"- **{wname}**: {w.note}{more}")
    if cold is not None:
        out.append(
            "- **cold**: a fresh interpreter: `%load_ext parmagic`, wait 2 s, then the first "
            "`%%parallel` cell (1,000 x inc(i), default workers) vs the same cell warm (median of 5)"
        )
    out += ["", "## Wall time", ""]
    out += table_times(results)
    out += ["", "## Ratios (parmagic median / anchor median; < 1 means parmagic is faster)", ""]
    out += table_ratios(results)
    if "bigarg" in results:
        out += ["", "## bigarg memory (medians; RSS growth over the run's start)", ""]
        out += table_memory(*results["bigarg"])
    if cold is not None:
        out += ["", "## Cold start", ""]
        rows = cold["rows"]
        if rows:
            out += ["| measure | median s | min-max s |", "|---|---:|---:|"]
            for key, label in (
                ("load_ext_s", "`%load_ext parmagic`"),
                ("first_s", "first `%%parallel` cell, 2 s after load_ext"),
                ("warm_s", "warm `%%parallel` cell"),
                ("joblib_first_s", "joblib: first call in the process (context)"),
                ("joblib_warm_s", "joblib: warm call (context)"),
            ):
                vals = [r[key] for r in rows]
                out.append(
                    f"| {label} | {fmt(statistics.median(vals))} | {fmt(min(vals))}-{fmt(max(vals))} |"
                )
        else:
            out.append(cold["error"] or "n/a")
    bad = [
        f"- {wname} / {t}: {st.mismatch}"
        for wname, (_w, stats) in results.items()
        for t, st in stats.items()
        if st.mismatch
    ]
    out += ["", "## Correctness (each result compared exactly with the serial loop's)", ""]
    out += bad or ["- every result equals the serial loop's"]
    out += ["", "## Bars", ""]
    out += bars.lines()
    out += [
        "",
        "Notes: pools (parmagic's, joblib's, the loky executor, mp.Pool, mpire with "
        "keep_alive) are created and warmed before timing, except mpire in bigarg, which makes "
        "its pool per call (its shared_objects idiom). In bigarg the loky map and mp.Pool pickle "
        "the array with each chunk (their default); joblib memory-maps it (its default). "
        'Worker RSS counts shared pages once per worker. "Other load" is the most CPU that '
        "processes outside the benchmark used during any one timed call of 0.25 s or more "
        "(/proc counts CPU time in 10 ms ticks; shorter calls show -), in cores: where it is "
        "not near 0 the machine was shared and the parallel rows suffer most. "
        '"Notebook display" rows make parmagic see a Jupyter kernel (widget bar, HTML summary); '
        "the others run in terminal IPython (text progress and summary).",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
