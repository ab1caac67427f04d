"""The synthetic workloads: seed, tiny, cpu, bigarg, progress, and the cold start.

Each ``w_*`` returns a ``Workload`` whose runner runs it through every tool in that
tool's usual form; ``run_cold`` times ``%load_ext parmagic`` and the first cell in
fresh interpreters (``bench.py --cold-child``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import harness as H
import runners as R
import workloads as W
from harness import MB, Workload
from runners import (
    ALL_TOOLS,
    ENGINE_CELL,
    ENGINE_PMAP,
    JOBLIB,
    LOKY_MAP,
    MAGIC_PAR,
    MAGIC_PAR_KERNEL,
    MAGIC_PMAP,
    MP_POOL,
    MPIRE,
    PLAIN_CELL,
    POOLS,
    SERIAL,
    as_kernel,
    generic_runner,
    log,
    loop_cell,
    make_shell,
    quiet,
)

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.py")


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
        tools=[
            MAGIC_PAR,
            MAGIC_PMAP,
            ENGINE_CELL,
            ENGINE_PMAP,
            JOBLIB,
            LOKY_MAP,
            MP_POOL,
            MPIRE,
        ],
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
        tools=[MAGIC_PAR, MAGIC_PAR_KERNEL, *ALL_TOOLS[1:], PLAIN_CELL],
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
            return R.PM.pmap(f, range(parts), n_jobs=n_jobs)
        if tool == ENGINE_CELL:
            scope = dict(ns)
            R.PM.cell(cell_src, scope, n_jobs=n_jobs)
            return scope.get("results")
        if tool == MAGIC_PAR:
            return R.PM.shell(f"%%parallel -n {n_jobs}\n{cell_src}", ns, "results")
        if tool == PLAIN_CELL:
            return R.PM.shell(cell_src, ns, "results")
        if tool == MAGIC_PMAP:
            return R.PM.shell(
                f"bench_out = %pmap -n {n_jobs} slice_sum(arr, i) for i in range({parts})",
                ns,
                "bench_out",
            )
        raise KeyError(tool)

    def cleanup():
        state.clear()
        if R.PM and R.PM.ip:
            for name in ("arr", "results", "bench_out"):
                R.PM.ip.user_ns.pop(name, None)
        gc.collect()

    return Workload(
        name="bigarg",
        n_jobs=n_jobs,
        size=parts,
        warm_size=1,  # warm-up on a small array: same code paths, no big transfer
        tools=[*ALL_TOOLS, PLAIN_CELL],
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
                R.PM.cell(cell(n), scope, n_jobs=n_jobs, progress=tool not in off)
                return scope.get("results")
            flag = " --no-progress" if tool in off else ""
            return R.PM.shell(f"%%parallel -n {n_jobs}{flag}\n{cell(n)}", ns, "results")

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


# --------------------------------------------------------------------------- resume (issue 15)

CACHE_MAGIC = "%%parallel --cache, rerun (magic)"
CACHE_ENGINE = "run_cell cache=, rerun (engine)"


def w_cache_rerun(quick: bool, n_jobs: int) -> Workload:
    """A 200-iteration loop rerun from a full ``--cache`` against the plain loop.

    The untimed warm-up call has the timed size, so it fills the cache: every timed
    parmagic call is a rerun that replays all 200 iterations from disk (read, verify the
    HMAC, unpickle, apply in order) and runs none. ``%%parallel`` without the cache and
    the serial loop are the references.
    """
    import shutil
    import tempfile

    secs = 0.001 if quick else 0.005
    folder = tempfile.mkdtemp(prefix="bench-cache-")  # 0700, removed by cleanup

    def cell(n: int) -> str:
        return f"results = []\nfor i in range({n}):\n    results.append(sleep({secs}) or i)\n"

    def run(tool: str, n: int):
        ns = {"sleep": W.sleep}
        if tool == SERIAL:
            return [W.sleep(secs) or i for i in range(n)]
        if tool == CACHE_ENGINE:
            R.PM.cell(cell(n), ns, n_jobs=n_jobs, cache=folder)
            return ns["results"]
        flag = f" --cache {folder}" if tool == CACHE_MAGIC else ""
        return R.PM.shell(f"%%parallel -n {n_jobs}{flag}\n{cell(n)}", ns, "results")

    return Workload(
        name="cache-rerun",
        n_jobs=n_jobs,
        size=200,
        warm_size=200,
        tools=[CACHE_MAGIC, CACHE_ENGINE, MAGIC_PAR, SERIAL],
        runner=run,
        expected=lambda n: list(range(n)),
        guard=False,  # sleeping iterations: other load barely matters
        note=f"200 x time.sleep({secs}), rerun from a full --cache, vs %%parallel and serial",
        cleanup=lambda: shutil.rmtree(folder, ignore_errors=True),
    )


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
    if R.PM is None or R.PM.mod is None:
        return {
            "rows": rows,
            "error": f"n/a: {R.PM.error if R.PM else 'parmagic not loaded'}",
        }
    for r in range(repeats):
        if H.QUIET_LOAD is not None:
            H.wait_quiet(H.QUIET_LOAD)
        cmd = [sys.executable, BENCH, "--cold-child", str(wait)]
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
