"""``--backend multiprocessing``: the standard-library pool gives the serial result, and lives well.

Same-result checks reuse the serial-equivalence cells; the rest check the
pool's life: reused across cells, rebuilt after an interrupt, a dead worker or
a new worker count, and no process or file left behind (not even when the
kernel is killed).
"""

from __future__ import annotations

import _thread
import glob
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from parmagic.backends.base import WorkersLost
from parmagic.backends.mp import START_METHOD, MultiprocessingBackend
from parmagic.options import Options

from .cells import CELLS
from .shell import fresh, run, shell
from .test_equivalence import plain_and_parallel

psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _no_shell_afterwards() -> Iterator[None]:
    """Later modules may test behaviour outside IPython: drop the shell these tests made."""
    yield
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()


MAGIC = "%%parallel -n 2 --no-progress --backend multiprocessing"


def backend(n: int = 2) -> MultiprocessingBackend:
    """The kernel's multiprocessing backend for ``n`` workers (the instance cells use)."""
    from parmagic import pool

    found = pool.get_backend(Options(backend="multiprocessing", n_jobs=n))
    assert isinstance(found, MultiprocessingBackend)
    return found


def pids_of(ip, cell_name: str, capsys: pytest.CaptureFixture, n: int = 2) -> set[int]:
    cell = f"%%parallel -n {n} --no-progress --no-auto-serial --backend multiprocessing\n{cell_name} = []\nfor i in range(20):\n    {cell_name}.append(os.getpid())\n"
    result, _, err = run(ip, cell, capsys)
    assert result.success, err
    return set(ip.user_ns[cell_name])


@pytest.mark.parametrize("name,cell", CELLS, ids=[c[0] for c in CELLS])
def test_same_namespace_and_output(name: str, cell: str, capsys: pytest.CaptureFixture) -> None:
    expected, got, (plain_out, plain_err), (par_out, par_err) = plain_and_parallel(
        name, cell, "multiprocessing", capsys
    )
    assert got == expected
    assert par_out == plain_out
    plain_lines = plain_err.splitlines()
    assert [line for line in par_err.splitlines() if line in plain_lines] == plain_lines


def test_never_forks_the_multithreaded_kernel() -> None:
    assert START_METHOD in ("forkserver", "spawn")


def test_workers_are_not_the_kernel_and_are_reused(capsys: pytest.CaptureFixture) -> None:
    ip = shell()
    fresh(ip, "import os", capsys)
    first, second = pids_of(ip, "p1", capsys), pids_of(ip, "p2", capsys)
    assert os.getpid() not in first | second
    assert first | second <= set(backend().worker_pids())
    assert len(backend().worker_pids()) == 2
    assert second <= first | set(backend().worker_pids())  # the same pool served both cells


def test_pmap_api() -> None:
    import parmagic

    def cube(x: int) -> int:
        return x**3

    assert parmagic.pmap(cube, range(30), backend="multiprocessing", n_jobs=2, progress=False) == [
        x**3 for x in range(30)
    ]


def test_new_worker_count_rebuilds_the_pool(capsys: pytest.CaptureFixture) -> None:
    ip = shell()
    fresh(ip, "import os", capsys)
    pids_of(ip, "two", capsys, n=2)
    assert len(backend(2).worker_pids()) == 2
    old = set(backend(2).worker_pids())
    pids_of(ip, "three", capsys, n=3)
    assert len(backend(3).worker_pids()) == 3
    assert _gone(old)


def test_interrupt_stops_the_cell_and_the_next_cell_works(capsys: pytest.CaptureFixture) -> None:
    ip = shell()
    fresh(ip, "import os, time", capsys)
    pids_of(ip, "warm", capsys)
    timer = threading.Timer(1.5, _thread.interrupt_main)
    timer.start()
    try:
        result, _, _ = run(
            ip,
            f"{MAGIC}\ndone = []\nfor i in range(4):\n    time.sleep(60)\n    done.append(i)\n",
            capsys,
        )
    finally:
        timer.cancel()
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert ip.user_ns["done"] == []
    started = time.monotonic()
    after = pids_of(ip, "after", capsys)
    assert time.monotonic() - started < 10  # no worker still sleeping
    assert after <= set(backend().worker_pids())


def test_dead_worker_fails_only_its_iteration(capsys: pytest.CaptureFixture) -> None:
    from parmagic.errors import CollectedErrors, WorkerDiedError

    ip = shell()
    fresh(ip, "import os", capsys)
    pids_of(ip, "warm", capsys)
    cell = (
        f"{MAGIC} --on-error collect\nout = []\nfor i in range(8):\n"
        "    if i == 5:\n        os._exit(3)\n    out.append(i)\n"
    )
    result, _, _ = run(ip, cell, capsys)
    error = result.error_in_exec
    assert isinstance(error, CollectedErrors), error
    assert [(k, type(exc)) for k, _, exc in error.failures] == [(5, WorkerDiedError)]
    assert "exit code 3" in str(error.failures[0][2])
    assert ip.user_ns["out"] == [0, 1, 2, 3, 4, 6, 7]
    assert pids_of(ip, "after", capsys) <= set(backend().worker_pids())


def test_timeout_kills_an_iteration_stuck_where_the_alarm_cannot_reach(
    capsys: pytest.CaptureFixture,
) -> None:
    from parmagic.errors import CollectedErrors, IterationTimeoutError, WorkerDiedError

    ip = shell()
    fresh(ip, "import signal, time", capsys)
    cell = (
        f"{MAGIC} --timeout 0.5 --on-error collect\nout = []\nfor i in range(4):\n"
        "    if i == 1:\n"
        "        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # as if stuck in C\n"
        "        time.sleep(30)\n"
        "    out.append(i)\n"
    )
    started = time.monotonic()
    result, _, _ = run(ip, cell, capsys)
    assert time.monotonic() - started < 15
    error = result.error_in_exec
    assert isinstance(error, CollectedErrors), error
    [(k, _, exc)] = error.failures
    # The watchdog notes the kill only after os.kill returns, so the engine may see the
    # death first and call it a plain WorkerDiedError: either way iteration 1 alone fails.
    assert k == 1 and isinstance(exc, IterationTimeoutError | WorkerDiedError), exc
    assert ip.user_ns["out"] == [0, 2, 3]


def test_unpicklable_captured_value_is_named(capsys: pytest.CaptureFixture) -> None:
    from parmagic.errors import UnsendableValueError

    ip = shell()
    fresh(ip, "import threading\nlk = threading.Lock()\n", capsys)
    result, _, _ = run(
        ip, f"{MAGIC}\nout = []\nfor i in range(3):\n    out.append((i, lk))\n", capsys
    )
    assert isinstance(result.error_in_exec, UnsendableValueError)
    assert "'lk'" in str(result.error_in_exec)


def test_shutdown_leaves_no_process_and_no_payload_file(capsys: pytest.CaptureFixture) -> None:
    import parmagic

    ip = shell()
    fresh(ip, "import os", capsys)
    pids = pids_of(ip, "p", capsys)
    parmagic.shutdown()
    assert _gone(pids)
    assert not glob.glob(f"/dev/shm/parmagic-{os.getpid()}-*") and not glob.glob(
        f"/tmp/parmagic-{os.getpid()}-*"
    )


def test_abort_then_submit_works_without_the_engine() -> None:
    from parmagic.worker.batch import warm_up

    pool = MultiprocessingBackend(2)
    try:
        pool.start()
        sleeping = [pool.submit(time.sleep, 30) for _ in range(2)]
        time.sleep(0.5)
        pool.abort()
        for future in sleeping:  # killed running, or cancelled before it started
            with pytest.raises((WorkersLost, CancelledError)):
                future.result(timeout=10)
        assert pool.submit(warm_up).result(timeout=30) in pool.worker_pids()
    finally:
        pool.close()
    assert pool.worker_pids() == []


def test_workers_exit_when_the_kernel_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "kernel.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            from parmagic.worker.batch import warm_up
            from parmagic.backends.mp import MultiprocessingBackend
            if __name__ == "__main__":
                pool = MultiprocessingBackend(2)
                pool.start()
                pool.submit(warm_up).result()
                while len(pool.worker_pids()) < 2:
                    pass
                print(*pool.worker_pids(), flush=True)
                os.kill(os.getpid(), 9)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    pids = {int(p) for p in proc.stdout.split()}
    assert len(pids) == 2, proc.stderr
    assert _gone(pids)


def _gone(pids: set[int], timeout: float = 10.0) -> bool:
    """True once none of ``pids`` runs (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _running(pid)]
        if not alive:
            return True
        time.sleep(0.05)
    return False


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
