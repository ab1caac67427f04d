"""Failure handling through a real Jupyter kernel: nothing finished is lost, the pool survives.

One kernel (parmagic loaded, loky pool of 2) serves most tests; each test asserts
what was committed, what the error says, and that a following cell works on a
whole pool. Interrupts go through ``KernelManager.interrupt_kernel()`` (the stop
button), worker deaths are ``os._exit``, a segfault and SIGKILL from outside, and
the kernel itself is SIGKILLed at the end. Tests wait for marker files that the
iterations write (never for a guessed time) before they interrupt or kill.
The autouse ``no_leftovers`` fixture (conftest.py) checks every test for stray
processes, temp files and shared-memory segments.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from .kernel import Execution, collect, execute, kernel, value

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

ANSI = re.compile(r"\x1b\[[0-9;]*m")

SETUP = """\
%load_ext parmagic
import os, sys, time, signal, hashlib, threading
import parmagic

def touch(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
"""


@pytest.fixture(scope="module")
def kernel_pair() -> Iterator[tuple[Any, Any]]:
    """A kernel with parmagic loaded and a warm pool of 2 workers."""
    with kernel() as (km, kc):
        ex = execute(kc, SETUP)
        assert ex.ok, ex.error()
        warm = execute(
            kc, "%%parallel -n 2 --no-progress\nfor i in range(4):\n    time.sleep(0.01)"
        )
        assert warm.ok, warm.error()
        yield km, kc


@pytest.fixture
def kc(kernel_pair: tuple[Any, Any]) -> Any:
    return kernel_pair[1]


@pytest.fixture
def km(kernel_pair: tuple[Any, Any]) -> Any:
    return kernel_pair[0]


# --------------------------------------------------------------------------- helpers


def start(kc: Any, code: str) -> str:
    """Send ``code`` for execution without waiting; return the request id."""
    return kc.execute(code)


def when_written(path: Path, then: Callable[[str], Any], timeout: float = 60) -> Any:
    """Wait until a worker has written the marker ``path``; call ``then`` with its text."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"no iteration wrote {path}"
        time.sleep(0.005)
    return then(path.read_text())


def traceback_text(ex: Execution) -> str:
    error = ex.error()
    assert error is not None, "the cell did not fail"
    return ANSI.sub("", "\n".join(error["traceback"]))


def assert_pool_whole(km: Any, kc: Any, n: int = 2) -> None:
    """A following cell works, on ``n`` live workers, and the kernel has no other children."""
    ex = execute(
        kc, "%%parallel -n 2 --no-progress\nafter = []\nfor i in range(6):\n    after.append(i * i)"
    )
    assert ex.ok, ex.error()
    assert value(kc, "after") == [i * i for i in range(6)]
    pids = value(kc, "parmagic.status()['pids']")
    assert len(pids) == n and all(psutil.pid_exists(p) for p in pids)
    children = psutil.Process(km.provisioner.pid).children(recursive=True)
    stray = [
        p.pid
        for p in children
        if p.pid not in pids
        and p.status() != psutil.STATUS_ZOMBIE
        and "resource_tracker" not in " ".join(p.cmdline())
    ]
    assert stray == [], f"kernel children besides the pool: {stray}"


def statuses(kc: Any) -> dict[int, str]:
    return dict(value(kc, "[(it.index, it.status) for it in parmagic.last_run().iterations]"))


# --------------------------------------------------------------------------- exceptions


def test_exception_commits_prefix_and_shows_the_cells_own_lines(km: Any, kc: Any) -> None:
    code = (
        "%%parallel -n 2 --no-progress\n"
        "r_exc = []\n"
        "for i in range(10):\n"
        "    time.sleep(0.02 * (i % 3))\n"
        "    if i == 6:\n"
        "        raise ValueError(f'bad {i}')\n"
        "    r_exc.append(i)\n"
    )
    ex = execute(kc, code)
    error = ex.error()
    assert (error["ename"], error["evalue"]) == ("ValueError", "bad 6")
    text = traceback_text(ex)
    # as a plain cell's: the cell's own In[N] and line 6 with its source, first thing shown
    n = ex.reply["content"]["execution_count"]
    assert re.search(rf"Traceback \(most recent call last\)\nCell In\[{n}\], line 6\n", text), text
    assert "RemoteTraceback" not in text and "run_cell_magic" not in text, text
    assert "skipping hidden" not in text, text
    assert "----> 6         raise ValueError(f'bad {i}')" in text, text
    assert "parmagic/" not in text and "__pm_" not in text, text
    assert value(kc, "r_exc") == [0, 1, 2, 3, 4, 5]
    st = statuses(kc)
    assert [st[k] for k in range(7)] == ["done"] * 6 + ["failed"]
    assert all(st[k] == "cancelled" for k in st if k > 6)
    assert value(kc, "type(sys.last_value).__name__, str(sys.last_value)") == (
        "ValueError",
        "bad 6",
    )
    assert_pool_whole(km, kc)


def test_error_stops_long_running_rest_so_next_cell_is_prompt(km: Any, kc: Any) -> None:
    code = (
        "%%parallel -n 2 --no-progress --chunksize 1\n"
        "for i in range(6):\n"
        "    if i == 1:\n"
        "        raise RuntimeError('early')\n"
        "    if i >= 2:\n"
        "        time.sleep(60)\n"
    )
    began = time.monotonic()
    ex = execute(kc, code)
    assert ex.error()["ename"] == "RuntimeError"
    assert_pool_whole(km, kc)
    assert time.monotonic() - began < 15, "the cancelled iterations kept the workers busy"


def test_collect_commits_every_success_and_lists_each_failure(km: Any, kc: Any) -> None:
    code = (
        "%%parallel -n 2 --no-progress --on-error collect\n"
        "r_col = []\n"
        "for i in range(10):\n"
        "    if i == 2:\n"
        "        1 / 0\n"
        "    if i == 7:\n"
        "        {}['missing']\n"
        "    r_col.append(i)\n"
    )
    ex = execute(kc, code)
    error = ex.error()
    assert error["ename"] == "CollectedErrors"
    assert "2 iteration(s) failed" in error["evalue"]
    assert "iteration 2 (item=2): ZeroDivisionError: division by zero" in error["evalue"]
    assert "iteration 7 (item=7): KeyError: 'missing'" in error["evalue"]
    assert value(kc, "r_col") == [0, 1, 3, 4, 5, 6, 8, 9]
    kept = value(kc, "[(k, item, type(e).__name__) for k, item, e in sys.last_value.failures]")
    assert kept == [(2, 2, "ZeroDivisionError"), (7, 7, "KeyError")]
    assert "parmagic/" not in traceback_text(ex)
    assert_pool_whole(km, kc)


def test_last_run_keeps_status_duration_worker_output_and_error(km: Any, kc: Any) -> None:
    code = (
        "%%parallel -n 2 --no-progress\n"
        "for i in range(6):\n"
        "    print('it', i)\n"
        "    if i == 3:\n"
        "        raise KeyError(i)\n"
    )
    ex = execute(kc, code)
    assert ex.error()["ename"] == "KeyError"
    assert ex.stream() == "it 0\nit 1\nit 2\nit 3\n"
    rows = value(
        kc,
        "[(it.index, it.status, it.duration is not None and it.duration >= 0, it.worker, it.output,"
        " type(it.error).__name__ if it.error else None) for it in parmagic.last_run().iterations]",
    )
    pids = set(value(kc, "parmagic.status()['pids']"))
    by_index = {r[0]: r for r in rows}
    for k in range(3):
        assert by_index[k][1:3] == ("done", True) and by_index[k][4] == f"it {k}\n"
        assert by_index[k][5] is None and by_index[k][3] in pids
    assert by_index[3][1:] == ("failed", True, by_index[3][3], "it 3\n", "KeyError")
    assert {r[1] for r in rows if r[0] > 3} <= {"cancelled"}


def test_unsendable_value_is_refused_before_any_task_runs(km: Any, kc: Any, tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    assert execute(kc, "lock = threading.Lock()").ok
    cell = f"for i in range(4):\n    touch({str(mark)!r})\n    r_lock.append(str(lock)[:5])\n"
    ex = execute(kc, "%%parallel -n 2 --no-progress\nr_lock = []\n" + cell)
    error = ex.error()
    assert error["ename"] == "UnsendableValueError"
    assert "'lock'" in error["evalue"] and "_thread.lock" in error["evalue"]
    assert "--backend threads" in error["evalue"]
    assert not mark.exists(), "a task ran although a captured value could not be sent"
    assert value(kc, "r_lock") == []
    ok = execute(kc, "%%parallel -n 2 --no-progress --backend threads\nr_lock = []\n" + cell)
    assert ok.ok, ok.error()
    assert value(kc, "r_lock") == ["<unlo"] * 4
    assert_pool_whole(km, kc)


def test_unsendable_effect_value_fails_only_its_iteration(km: Any, kc: Any) -> None:
    code = (
        "%%parallel -n 2 --no-progress --chunksize 2\n"
        "r_eff = []\n"
        "for i in range(6):\n"
        "    r_eff.append(threading.Lock() if i == 3 else i)\n"
    )
    ex = execute(kc, code)
    error = ex.error()
    assert error["ename"] == "UnsendableValueError"
    assert error["evalue"].startswith("iteration 3 (item=3) produced a value that cannot be sent")
    assert "--backend threads" in error["evalue"]
    assert value(kc, "r_eff") == [0, 1, 2]
    assert_pool_whole(km, kc)


# --------------------------------------------------------------------------- timeouts


def test_timeout_fails_only_the_slow_iterations_also_stuck_in_c_or_sleep(km: Any, kc: Any) -> None:
    code = (
        "%%parallel -n 2 --no-progress --timeout 1 --on-error collect\n"
        "r_to = []\n"
        "for i in range(8):\n"
        "    if i == 2:\n"
        "        hashlib.pbkdf2_hmac('sha256', b'x', b'y', 10**9)  # minutes in C, no signal check\n"
        "    if i == 5:\n"
        "        time.sleep(60)\n"
        "    time.sleep(0.05)\n"
        "    r_to.append(i)\n"
    )
    before = set(value(kc, "parmagic.status()['pids']"))
    began = time.monotonic()
    ex = execute(kc, code)
    took = time.monotonic() - began
    error = ex.error()
    assert error["ename"] == "CollectedErrors", error
    lines = error["evalue"].splitlines()
    assert lines[0] == "2 iteration(s) failed:"
    assert lines[1].startswith("  iteration 2 (item=2): IterationTimeoutError: iteration 2")
    assert "--timeout 1 s" in lines[1] and "was killed" in lines[1]
    assert lines[2].startswith("  iteration 5 (item=5): IterationTimeoutError: iteration 5")
    assert "killed" not in lines[2]  # time.sleep stopped at the limit; its worker lived on
    assert value(kc, "r_to") == [0, 1, 3, 4, 6, 7]
    assert took < 10, took
    killed = int(re.search(r"its worker (\d+) was killed", lines[1]).group(1))
    rows = dict(value(kc, "[(it.index, it.worker) for it in parmagic.last_run().iterations]"))
    assert rows[2] == killed and not psutil.pid_exists(killed)
    # only the stuck worker died: its sibling kept its work and is still in the pool
    (sibling,) = before - {killed}
    assert sibling in value(kc, "parmagic.status()['pids']")
    assert_pool_whole(km, kc)


def test_timeout_in_raise_mode_keeps_the_prefix(km: Any, kc: Any) -> None:
    code = (
        "%%parallel -n 2 --no-progress --timeout 0.5\n"
        "r_tr = []\n"
        "for i in range(6):\n"
        "    time.sleep(30 if i == 3 else 0.05)\n"
        "    r_tr.append(i)\n"
    )
    ex = execute(kc, code)
    error = ex.error()
    assert error["ename"] == "IterationTimeoutError"
    assert error["evalue"].startswith("iteration 3 (item=3) ran longer than --timeout 0.5 s")
    assert re.search(r"Cell In\[\d+\], line 4\n", traceback_text(ex))
    assert value(kc, "r_tr") == [0, 1, 2]
    assert_pool_whole(km, kc)


# --------------------------------------------------------------------------- interrupts


def test_interrupt_commits_the_finished_prefix_and_the_pool_survives(
    km: Any, kc: Any, tmp_path: Path
) -> None:
    mark = tmp_path / "six"
    before = value(kc, "parmagic.status()['pids']")
    code = (
        "%%parallel -n 2 --no-progress\n"
        "r_int = []\n"
        "for i in range(60):\n"
        f"    if i == 6:\n        touch({str(mark)!r})\n"
        "    time.sleep(0.2)\n"
        "    r_int.append(i)\n"
    )
    msg_id = start(kc, code)
    sent = when_written(mark, lambda _: (km.interrupt_kernel(), time.monotonic())[1])
    ex = collect(kc, msg_id)
    stopped = ex.messages[-1][0] - sent
    assert ex.reply["content"]["ename"] == "KeyboardInterrupt"
    found = re.search(
        r"parmagic: interrupted; (\d+) iteration\(s\) of 60 committed", ex.stream("stderr")
    )
    assert found, ex.stream("stderr")
    n = int(found.group(1))
    assert 5 <= n < 60
    assert value(kc, "r_int") == list(range(n))
    assert stopped < 1.5, f"the cell took {stopped:.2f}s to stop"
    assert value(kc, "parmagic.last_run().outcome") == "interrupted"
    st = statuses(kc)
    assert [st[k] for k in range(n)] == ["done"] * n
    assert all(s == "cancelled" for k, s in st.items() if k >= n)
    assert re.search(r"Cell In\[\d+\], line 3\n", traceback_text(ex))
    assert_pool_whole(km, kc)
    assert value(kc, "parmagic.status()['pids']") == before  # no worker had to die


def test_interrupt_kills_a_worker_stuck_in_c_within_a_second(
    km: Any, kc: Any, tmp_path: Path
) -> None:
    mark = tmp_path / "stuck"
    code = (
        "%%parallel -n 2 --no-progress\n"
        "r_stuck = []\n"
        "for i in range(8):\n"
        f"    if i == 3:\n        touch({str(mark)!r})\n"
        "        hashlib.pbkdf2_hmac('sha256', b'x', b'y', 10**9)\n"
        "    time.sleep(0.05)\n"
        "    r_stuck.append(i)\n"
    )
    before = set(value(kc, "parmagic.status()['pids']"))
    msg_id = start(kc, code)
    stuck = when_written(mark, int)
    sent = when_written(mark, lambda _: (km.interrupt_kernel(), time.monotonic())[1])
    ex = collect(kc, msg_id)
    assert ex.reply["content"]["ename"] == "KeyboardInterrupt"
    assert ex.messages[-1][0] - sent < 1.5
    n = len(value(kc, "r_stuck"))
    assert value(kc, "r_stuck") == list(range(n)) and n <= 3
    assert not psutil.pid_exists(stuck), "the stuck worker was not stopped"
    (sibling,) = before - {stuck}
    assert sibling in value(kc, "parmagic.status()['pids']"), "a worker that was not stuck died"
    assert_pool_whole(km, kc)


# --------------------------------------------------------------------------- worker deaths

DEATHS = {
    "os._exit": ("os._exit(3)", "exit code 3"),
    "segfault": ("os.kill(os.getpid(), signal.SIGSEGV)", "SIGSEGV"),
    "sigkill-from-outside": ("time.sleep(60)", "SIGKILL"),
}


def _death_cell(name: str, how: str, mode: str, mark: Path) -> str:
    return (
        f"%%parallel -n 2 --no-progress --on-error {mode}\n"
        f"{name} = []\n"
        "for i in range(10):\n"
        "    if i == 4:\n"
        f"        touch({str(mark)!r})\n"
        f"        {how}\n"
        "    time.sleep(0.05)\n"
        f"    {name}.append(i)\n"
    )


def _run_and_kill(km: Any, kc: Any, code: str, mark: Path, from_outside: bool) -> Execution:
    msg_id = start(kc, code)
    if from_outside:
        when_written(mark, lambda pid: os.kill(int(pid), signal.SIGKILL))
    return collect(kc, msg_id)


@pytest.mark.parametrize("death", list(DEATHS))
def test_worker_death_fails_only_its_iteration(
    km: Any, kc: Any, tmp_path: Path, death: str
) -> None:
    how, said = DEATHS[death]
    mark = tmp_path / "dying"
    code = _death_cell("r_die", how, "collect", mark)
    ex = _run_and_kill(km, kc, code, mark, from_outside=death == "sigkill-from-outside")
    error = ex.error()
    assert error["ename"] == "CollectedErrors", error
    dead = int(mark.read_text())
    lines = error["evalue"].splitlines()
    assert lines[:1] == ["1 iteration(s) failed:"], lines
    assert lines[1] == (
        f"  iteration 4 (item=4): WorkerDiedError: worker {dead} died ({said}"
        + (": killed from outside, e.g. by the out-of-memory killer" if said == "SIGKILL" else "")
        + ") while running iteration 4 (item=4)"
    )
    assert value(kc, "r_die") == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert statuses(kc)[4] == "failed"
    assert_pool_whole(km, kc)


def test_worker_death_in_raise_mode_commits_the_prefix(km: Any, kc: Any, tmp_path: Path) -> None:
    mark = tmp_path / "dying"
    ex = _run_and_kill(
        km, kc, _death_cell("r_seg", DEATHS["segfault"][0], "raise", mark), mark, False
    )
    error = ex.error()
    assert error["ename"] == "WorkerDiedError"
    assert re.fullmatch(
        r"worker \d+ died \(SIGSEGV\) while running iteration 4 \(item=4\)", error["evalue"]
    )
    assert value(kc, "r_seg") == [0, 1, 2, 3]
    assert "parmagic/" not in traceback_text(ex)
    assert_pool_whole(km, kc)


def test_worker_death_inside_a_big_batch_is_pinned_to_its_iteration(km: Any, kc: Any) -> None:
    # tiny iterations run in batches of hundreds that do not report each iteration;
    # the lost batch runs again reporting each one, and the crash recurs on 1234
    code = (
        # --no-auto-serial: iterations this cheap would finish in the kernel, 1234 with them
        "%%parallel -n 2 --no-progress --on-error collect --no-auto-serial\n"
        "r_big = []\n"
        "for i in range(3000):\n"
        "    if i == 1234:\n"
        "        os._exit(7)\n"
        "    r_big.append(i)\n"
    )
    ex = execute(kc, code)
    error = ex.error()
    assert error["ename"] == "CollectedErrors", error
    assert "iteration 1234 (item=1234): WorkerDiedError: worker" in error["evalue"]
    assert "(exit code 7) while running iteration 1234" in error["evalue"]
    assert value(kc, "len(r_big), r_big == [i for i in range(3000) if i != 1234]") == (2999, True)
    assert_pool_whole(km, kc)


# --------------------------------------------------------------------------- the kernel dies


def test_pool_dies_with_a_killed_kernel(tmp_path: Path) -> None:
    mark = tmp_path / "running"
    with kernel() as (km, kc):
        assert execute(kc, SETUP).ok
        code = (
            "%%parallel -n 2 --no-progress\n"
            "for i in range(100):\n"
            f"    touch({str(mark)!r})\n"
            "    time.sleep(0.2)\n"
        )
        start(kc, code)
        when_written(mark, int)
        kernel_pid = km.provisioner.pid
        family = psutil.Process(kernel_pid).children(recursive=True)
        workers = [p for p in family if "loky" in " ".join(p.cmdline())]
        assert len(workers) >= 2
        os.kill(kernel_pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(family, timeout=5)
        assert alive == [], f"outlived the kernel: {[(p.pid, p.cmdline()) for p in alive]}"
