"""``--compare`` and ``--sweep``: time a loop serially or at several worker counts.

The timing runs are dry: they run the iterations but apply no effect, show no
output and bind nothing (only their progress is shown, under its own label), so the
cell's state comes only from the one real run.
Code that acts outside the kernel (files, network) runs once per timing run.
"""

from __future__ import annotations

import time
from typing import Any

from . import engine
from .engine import CellRun
from .options import Options
from .rewrite import CellPlan, LoopStep


def run_plan_compared(plan: CellPlan, cell: CellRun) -> Any:
    """Run the plan like ``engine.run_plan``; before each loop, its timing runs."""
    __tracebackhide__ = True

    def timed_loop(step: LoopStep, cell: CellRun) -> Any:
        __tracebackhide__ = True
        timings = _timing_runs(step, cell)
        value = engine.run_loop(step, cell)
        _show(timings, engine.last_run(), cell.options)
        return value

    return engine.run_plan(plan, cell, timed_loop)


def _timing_runs(step: LoopStep, cell: CellRun) -> dict:
    """The serial and sweep runs, each with its progress shown under its own label."""
    __tracebackhide__ = True
    timings: dict[str, Any] = {}
    options, label = cell.options, step.source_line
    if options.compare:
        serial = cell.with_options(
            options.with_changes(backend="serial", scheduler=None, summary=False)
        )
        t0 = time.perf_counter()
        record = engine.run_loop(step, serial, dry=True, label=f"serial timing: {label}")
        timings["serial"] = (time.perf_counter() - t0, record)
    for n in options.sweep:
        sweep = cell.with_options(
            options.with_changes(n_jobs=n, compare=False, sweep=(), summary=False)
        )
        t0 = time.perf_counter()
        engine.run_loop(step, sweep, dry=True, label=f"timing -n {n}: {label}")
        timings.setdefault("sweep", []).append((n, time.perf_counter() - t0))
    return timings


def _show(timings: dict, parallel: Any, options: Options) -> None:
    from .display import show
    from .summary import Comparison, Sweep

    shown = []
    if "serial" in timings:
        seconds, record = timings["serial"]
        estimated = options.compare_sample is not None and parallel.total not in (
            None,
            record.total,
        )
        if estimated and record.total:
            seconds = seconds / record.total * (parallel.total or record.total)
        shown.append(Comparison(seconds, parallel, estimated))
    if "sweep" in timings:
        serial = timings["serial"][0] if "serial" in timings else None
        shown.append(Sweep(timings["sweep"], serial_seconds=serial, label=parallel.label))
    for obj in shown:
        show(obj)
