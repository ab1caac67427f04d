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
Besides the synthetic workloads (synthetic.py) it runs real-notebook ones
(realnb.py: scikit-learn, pandas). This file is the command line only; the tools
are in runners.py, the timing in harness.py, the report in report.py.
See bench/README.md.
"""

# ruff: noqa: E402  (the imports below need the sys.path set up above them)
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # workers inherit sys.path, so they can import ``workloads``
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)  # parmagic from the checkout when it is not installed

import harness as H
import realnb
import report
import runners as R
import workloads as W
from harness import Stat, Workload, run_workload
from runners import ENGINE_CELL, ENGINE_PMAP, JOBLIB, MAGIC_PAR, MP_POOL, MPIRE, SERIAL
from synthetic import (
    cold_child,
    run_cold,
    w_bigarg,
    w_cache_rerun,
    w_cpu,
    w_progress,
    w_seed,
    w_tiny,
)

# --------------------------------------------------------------------------- main


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the workloads, print (and write) the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 repeat")
    ap.add_argument("--scale", action="store_true", help="8/16-worker runs (needs >= 16 cores)")
    ap.add_argument("--force", action="store_true", help="run --scale even with < 16 cores")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 5, 1 with --quick)")
    ap.add_argument("-n", "--n-jobs", type=int, default=2, help="workers (default 2; seed uses 4)")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated workloads to run: seed, tiny, cpu, bigarg, progress, cold, "
        "nb (every real-notebook one) or nb-estimators, nb-gmm, nb-kmeans, nb-pandas, nb-cold",
    )
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
    ap.add_argument("--nb-cold-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cold_child is not None:
        cold_child(args.cold_child)
        return 0
    if args.nb_cold_child:
        realnb.nb_cold_child(args.quick)
        return 0

    quick = args.quick
    q = args.quiet_load if args.quiet_load is not None else (None if quick else 0.25)
    H.QUIET_LOAD = q if q is not None and q > 0 else None
    H.QUIET_BUDGET[0] = args.quiet_budget
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

    R.log("calibrating the pure-Python loop ...")
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
            # real-notebook workloads (issue 12); `--only nb` runs them all
            "nb-estimators": lambda: realnb.w_estimators(quick, n),
            "nb-gmm": lambda: realnb.w_gmm(quick, n),
            "nb-kmeans": lambda: realnb.w_kmeans(quick, n),
            "nb-pandas": lambda: realnb.w_pandas(quick, n),
            "cache-rerun": lambda: w_cache_rerun(quick, n),  # resume (issue 15)
        }
        keys = [k for k in named if not only or k in only or k.split("-")[0] in only]
        workloads = [named[k] for k in keys]
        counts = {n, 4} if (not only or "seed" in only) else {n}

    # fork-based pools first, while this process has no threads
    R.POOLS.start_forking(counts, {MP_POOL} if args.scale else {MP_POOL, MPIRE})
    R.log("loading parmagic and an IPython shell ...")
    R.PM = R.Parmagic()
    if R.PM.error:
        R.log(f"parmagic unavailable, its rows will read n/a: {R.PM.error}")

    results: dict[str, tuple[Workload, dict[str, Stat]]] = {}
    t_start = time.perf_counter()
    cold = nb_cold = None
    try:
        for make in workloads:
            w = make()
            results[w.name] = (w, run_workload(w, repeats))
        if not args.scale and (not only or "cold" in only):
            cold = run_cold(1 if quick else repeats, 2.0)
        # not in a plain --quick: the fresh interpreter and its workers import scikit-learn
        # (~10 s of CPU), more than the rest of the smoke run's real-notebook rows together
        nb_cold_on = "nb-cold" in only or "nb" in only or (not only and not quick)
        if not args.scale and nb_cold_on:
            nb_cold = realnb.run_nb_cold(1 if quick else repeats, quick)
    finally:
        R.POOLS.close()
        if R.PM and R.PM.mod:
            with contextlib.suppress(Exception):
                R.PM.mod.shutdown()
    elapsed = time.perf_counter() - t_start

    binding = not quick and not (args.scale and usable_cores() < 16)
    bars = report.evaluate_bars(results, cold, binding, quick, tiny_big, nb_cold)
    text = report.render(results, cold, bars, cmdline, repeats, elapsed, args, n, nb_cold)
    print(text)
    if args.results:
        with open(args.results, "w") as f:
            f.write(text)
    if args.json:
        raw = {
            wname: {t: {"times": st.times, "mem": st.mem, "error": st.error} for t, st in s.items()}
            for wname, (_w, s) in results.items()
        }
        raw["cold"] = cold
        raw["nb-cold"] = nb_cold
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
    broken = [
        f"{wname} / {t}: {st.error}"
        for wname, (_w, stats) in results.items()
        for t, st in stats.items()
        if st.error.startswith("error")
    ]
    for label, c in (("cold", cold), ("nb-cold", nb_cold)):
        if c is not None and c.get("error", "").startswith("error"):
            broken.append(f"{label}: {c['error']}")
    differ = [
        f"{wname} / {t}"
        for wname, (_w, stats) in results.items()
        for t, st in stats.items()
        if st.mismatch
    ]
    for line in broken:
        R.log(f"FAILED TO RUN: {line}")
    if differ:
        R.log(f"results differ from the serial loop's: {', '.join(differ)}")
    if broken:
        return 1  # the smoke test's job: every tool ran every workload
    return 1 if (args.strict and (bars.failed or differ)) else 0


def _named(w: Workload, name: str, tools: list[str], **changes: Any) -> Workload:
    """``w`` renamed, with these tools and these fields changed (the --scale variants)."""
    w.name = name
    w.tools = list(tools)
    for key, value in changes.items():
        setattr(w, key, value)
    return w


if __name__ == "__main__":
    sys.exit(main())
