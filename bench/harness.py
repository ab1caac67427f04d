"""Timing: the workload record, the round-robin repeats, memory and other-load meters.

``run_workload`` warms each tool up, then times it ``repeats`` times, the tools
taking turns (the starting one rotates). On a shared machine (``QUIET_LOAD`` set
by ``bench.py --quiet-load``) each timed call first waits for quiet and is rerun
when other processes were busy during it.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import runners as R
from runners import PARMAGIC_TOOLS, log

MB = 1024 * 1024


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
        return {
            "other_cores": max(0.0, other / wall),
            "steal_cores": (steal - self.sys0[1]) / wall,
        }


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


# --------------------------------------------------------------------------- harness


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
    # what of a result is compared with the serial loop's (None: ``list(result)``), e.g. a
    # fitted estimator's score where estimator objects compare by identity
    digest: Callable[[Any], list] | None = None
    # floats within this relative tolerance count as equal (0: exactly): the kernel's BLAS
    # and OpenMP run more threads than a worker's, which changes the order of float sums
    rel_tol: float = 0.0
    group: str = ""  # "notebook": a real-notebook workload (the bars for those apply)


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


def same(a: Any, b: Any, rel_tol: float) -> bool:
    """``a == b``, except that floats (also inside tuples and lists) may differ by ``rel_tol``."""
    if rel_tol and isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel_tol)
    if rel_tol and isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same(x, y, rel_tol) for x, y in zip(a, b, strict=True))
    return a == b


def check(w: Workload, out: Any, size: int) -> str:
    """Compare a result with the serial loop's; return what differs ("" if nothing).

    Exactly, unless the workload sets ``rel_tol``; ``w.digest`` says what of a result
    is compared.
    """
    if w.expected is None:
        if out is not None and hasattr(out, "__len__") and len(out) != size:
            return f"{len(out)} results, expected {size}"
        return ""
    want = w.expected(size)
    if out is None:
        got = None
    else:
        got = w.digest(out) if w.digest else list(out)
    if got == want:
        return ""
    if got is None or len(got) != len(want):
        return f"got {None if got is None else len(got)} results, expected {len(want)}"
    bad = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if not same(a, b, w.rel_tol)]
    if not bad:
        return ""
    i = bad[0]
    return f"{len(bad)} of {len(want)} results differ (first: [{i}] {got[i]!r} != {want[i]!r})"


def run_workload(w: Workload, repeats: int) -> dict[str, Stat]:
    repeats = max(repeats, w.min_repeats)
    stats = {t: Stat() for t in w.tools}
    tools = []
    for t in w.tools:
        if t in PARMAGIC_TOOLS or t.startswith(("run_cell", "%%parallel", "%pmap")):
            if R.PM is None or R.PM.mod is None:
                stats[t].error = f"n/a: {R.PM.error if R.PM else 'parmagic not loaded'}"
                continue
            if t.startswith("%") and R.PM.ip is None:
                stats[t].error = f"n/a: {R.PM.error}"
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
