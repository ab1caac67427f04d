"""Functions the benchmark's workers call.

They live in a module of their own (``bench/`` is put on ``sys.path`` by
``bench/bench.py``, and worker processes inherit it) so that every tool pickles
them by reference, the same way, and none pays for shipping a function by value.
Nothing heavy is imported here: workers import this module.
"""

from __future__ import annotations

import time


def inc(x):
    """The trivial iteration: almost no work, so only the tool's overhead shows."""
    return x + 1


def spin(loops):
    """Pure-Python CPU work: ``loops`` turns of a small-integer loop (holds the GIL throughout).

    Every turn costs the same (the values stay small), so time is linear in ``loops``.
    """
    acc = 0
    for i in range(loops):
        acc = (acc * 31 + i) & 0xFFFF
    return acc


def spin_loops_for(ms: float, trials: int = 5) -> int:
    """How many ``spin`` loops take about ``ms`` milliseconds here (median of ``trials``)."""
    loops = 100_000
    for _ in range(2):  # probe, then re-measure at the size found
        times = []
        for _ in range(trials):
            t0 = time.perf_counter()
            spin(loops)
            times.append(time.perf_counter() - t0)
        times.sort()
        loops = max(1, int(loops * (ms / 1000.0) / times[len(times) // 2]))
    return loops


def sleep(seconds):
    """``time.sleep`` as a module function (the seed example's iteration)."""
    time.sleep(seconds)


def slice_sum(arr, i, parts=40):
    """Sum slice ``i`` of ``parts`` equal slices of ``arr`` (the big-argument iteration)."""
    k = len(arr) // parts
    return float(arr[i * k : (i + 1) * k].sum())


def slice_sum_shared(arr, i):
    """``slice_sum`` with mpire's argument order (shared objects first)."""
    return slice_sum(arr, i)
