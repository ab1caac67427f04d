"""Speed promises that are facts, not timings: the thread budget in workers, imports
already paid by idle workers, and a loop too cheap for workers finishing in the kernel.

Nothing here measures time; every wait is a bounded poll of an event.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import pytest

import parmagic
from parmagic import engine, pool, preimport
from parmagic.options import Options, cpu_count
from parmagic.worker import budget

from .shell import fresh, run, shell

POLL_LIMIT_S = 90.0


@pytest.fixture
def ip(capsys: pytest.CaptureFixture):
    ip = shell()
    fresh(ip, "import sys, time\nimport threadpoolctl\n", capsys)
    yield ip
    parmagic.set_defaults(n_jobs=-1, backend="loky")


@pytest.fixture
def auto_serial_off(monkeypatch: pytest.MonkeyPatch):
    """``auto_serial=False`` (the option once options.py declares it; until then the class
    attribute that ``getattr(options, "auto_serial", True)`` reads)."""
    if "auto_serial" in {f.name for f in dataclasses.fields(Options)}:
        previous = parmagic.defaults()
        parmagic.set_defaults(auto_serial=False)
        yield
        parmagic.set_defaults(auto_serial=previous.auto_serial)
    else:
        monkeypatch.setattr(Options, "auto_serial", False, raising=False)
        yield


THREADS_CELL = """%%parallel -n 2 --backend {backend}
seen = []
for i in range(4):
    import numpy
    seen.append((os.getpid(), [(l["internal_api"], l["num_threads"])
                               for l in threadpoolctl.threadpool_info()]))
"""


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_workers_keep_to_the_thread_budget(ip, capsys, auto_serial_off, backend: str) -> None:
    run(ip, "import os", capsys)
    result, _, err = run(ip, THREADS_CELL.format(backend=backend), capsys)
    assert result.success, err
    want = max(1, cpu_count() // 2)
    seen = ip.user_ns["seen"]
    assert all(pid != os.getpid() for pid, _ in seen)
    libraries = [lib for _, libs in seen for lib in libs]
    assert libraries and all(n == want for _, n in libraries), libraries


def test_an_explicit_omp_num_threads_in_the_kernel_wins(ip, capsys, auto_serial_off) -> None:
    explicit = str(max(1, cpu_count() // 2) + 1)  # not what the budget would give
    pool.shutdown()  # workers inherit the kernel's environment when they start
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = explicit
    try:
        run(ip, "import os", capsys)
        result, _, err = run(ip, THREADS_CELL.format(backend="loky"), capsys)
        assert result.success, err
        libraries = [lib for _, libs in ip.user_ns["seen"] for lib in libs]
        assert libraries and all(n == int(explicit) for _, n in libraries), libraries
        assert "OMP_NUM_THREADS" in pool.status()["thread_budget"]
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
        pool.shutdown()


def test_a_threadpoolctl_limit_in_the_kernel_is_shipped() -> None:
    pytest.importorskip("numpy")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        found = budget.for_workers(2, cores=64)
    assert found.limit == 32
    assert found.kernel_limits and all(n == 1 for _, n in found.kernel_limits)
    assert "threadpoolctl in the kernel" in found.describe()
    assert not budget.for_workers(2, cores=64).kernel_limits or os.environ.get("OMP_NUM_THREADS")


def _fresh_site_module() -> str:
    for name in ("idna", "six", "attr", "charset_normalizer"):
        if name not in sys.modules:
            try:
                __import__(name)
            except ImportError:
                continue
            del sys.modules[name]  # the cell imports it for real below
            for sub in [m for m in sys.modules if m.startswith(name + ".")]:
                del sys.modules[sub]
            return name
    pytest.skip("no unimported site-packages module to try")


def test_workers_import_what_the_kernel_imported_while_idle(ip, capsys, auto_serial_off) -> None:
    name = _fresh_site_module()
    run(ip, "%%parallel -n 2\nfor i in range(2):\n    pass\n", capsys)  # the pool is up
    result, _, err = run(ip, f"import {name}", capsys)  # post_run_cell sends the imports
    assert result.success, err
    pids = set(pool.status()["pids"])
    deadline = time.monotonic() + POLL_LIMIT_S
    while not all(name in preimport.imported_in_workers().get(pid, ()) for pid in pids):
        assert time.monotonic() < deadline, preimport.imported_in_workers()
        preimport.schedule()
        time.sleep(0.05)
    cell = (
        "%%parallel -n 2\nhad = []\nfor i in range(6):\n"
        f"    had.append((os.getpid(), {name!r} in sys.modules))\n"
    )
    run(ip, "import os", capsys)
    result, _, err = run(ip, cell, capsys)
    assert result.success, err
    assert all(present for _, present in ip.user_ns["had"]), ip.user_ns["had"]


CHEAP = """out = []
total = 0
for i in range(30000):
    y = i * 2
    out.append(y)
    total += y
    if i % 10000 == 0:
        print("at", i)
"""


def test_a_loop_too_cheap_for_workers_finishes_in_the_kernel(ip, capsys) -> None:
    result, plain_out, err = run(ip, CHEAP, capsys)
    assert result.success, err
    plain = {k: ip.user_ns[k] for k in ("out", "total", "i", "y")}
    fresh(ip, "import sys, time", capsys)
    result, out, err = run(ip, "%%parallel -n 2 --no-progress\n" + CHEAP, capsys)
    assert result.success, err
    assert {k: ip.user_ns[k] for k in plain} == plain
    assert [line for line in out.splitlines() if line.startswith("at ")] == [
        line for line in plain_out.splitlines() if line.startswith("at ")
    ]
    record = parmagic.last_run()
    assert record.ran_in_kernel_from is not None and 0 < record.ran_in_kernel_from < 30000
    assert "kernel" in record.auto_serial_note and record.done == 30000


def test_with_auto_serial_off_a_cheap_loop_stays_on_workers(ip, capsys, auto_serial_off) -> None:
    result, _, err = run(ip, "%%parallel -n 2 --no-progress\n" + CHEAP, capsys)
    assert result.success, err
    assert ip.user_ns["out"][-1] == 2 * 29999
    record = parmagic.last_run()
    assert record.ran_in_kernel_from is None
    assert os.getpid() not in {task.worker for task in record.tasks}


def test_a_heavy_loop_stays_on_workers(ip, capsys) -> None:
    cell = "%%parallel -n 2 --no-progress\nout = []\nfor i in range(12):\n    time.sleep(0.02)\n    out.append(i)\n"
    result, _, err = run(ip, cell, capsys)
    assert result.success, err
    assert ip.user_ns["out"] == list(range(12)) and ip.user_ns["i"] == 11
    record = parmagic.last_run()
    assert record.ran_in_kernel_from is None and record.auto_serial_note == ""


def test_the_judge_switches_only_when_the_kernel_is_not_slower() -> None:
    from parmagic.batching import AutoSerial
    from parmagic.worker.protocol import BatchResult

    def result(pid: int, seconds: float) -> BatchResult:
        return BatchResult(start=0, ran=1, pid=pid, marks=[0.0], end=seconds)

    cheap = AutoSerial(100_000, 4, 8)
    for pid in (1, 2, 1, 2):
        cheap.observe(result(pid, 1e-6))
    cheap.judge(4, 99_996, False)
    assert not cheap.decided  # waits for the whole wave before moving work to the kernel
    cheap.judge(8, 99_992, False)
    assert cheap.decided and cheap.switch and "kernel" in cheap.note

    heavy = AutoSerial(100, 4, 8)
    heavy.observe(result(1, 0.05))
    heavy.judge(1, 92, False)
    assert heavy.decided and not heavy.switch  # decided at once: workers gain

    short = AutoSerial(40, 4, 8)  # saves well under MIN_SAVING_SECONDS: stays on workers
    for pid in (1, 2, 1, 2):
        short.observe(result(pid, 1e-6))
    short.judge(4, 32, False)
    assert not short.decided  # a few cheap batches are too few to decide on
    short.judge(8, 32, False)
    assert short.decided and not short.switch

    unsized = AutoSerial(None, 4, 8)  # no len(): the saving cannot be bounded
    unsized.observe(result(1, 1e-6))
    unsized.judge(1, None, False)
    assert unsized.decided and not unsized.switch

    engine_module = engine  # the record fields the summary reads
    assert hasattr(engine_module.RunRecord("x", "loky", 2, 1), "ran_in_kernel_from")
