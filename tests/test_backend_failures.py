"""The failure semantics of SPEC §4 on every local backend (dask: tests/test_dask.py)."""

from __future__ import annotations

import pytest

import parmagic

from .shell import fresh, run, shell

BACKENDS = ["loky", "threads", "multiprocessing", "serial"]


def magic(backend: str, extra: str = "") -> str:
    return f"%%parallel -n 2 --no-progress --chunksize 1 --backend {backend} {extra}\n"


@pytest.fixture
def ip(capsys: pytest.CaptureFixture):
    ip = shell()
    fresh(ip, "import time", capsys)
    return ip


@pytest.mark.parametrize("backend", BACKENDS)
def test_error_commits_the_prefix_and_raises_the_original_exception(
    ip, capsys, backend: str
) -> None:
    cell = (
        magic(backend)
        + "out = []\nfor i in range(6):\n    print('it', i)\n    out.append(10 // (3 - i))\n"
    )
    result, out, _ = run(ip, cell, capsys)
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    assert ip.user_ns["out"] == [3, 5, 10]
    printed = [line for line in out.splitlines() if line.startswith("it ")]
    assert printed == ["it 0", "it 1", "it 2", "it 3"]  # as the serial loop prints
    assert ip.user_ns["i"] == 3
    statuses = [it.status for it in parmagic.last_run().iterations]
    assert statuses[:4] == ["done", "done", "done", "failed"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_collect_commits_every_success_and_lists_failures(ip, capsys, backend: str) -> None:
    cell = (
        magic(backend, "--on-error collect")
        + "out = []\nfor i in range(6):\n    out.append(10 // (i % 3))\n"
    )
    result, _, _ = run(ip, cell, capsys)
    exc = result.error_in_exec
    assert isinstance(exc, parmagic.CollectedErrors)
    assert [(k, item, type(e)) for k, item, e in exc.failures] == [
        (0, 0, ZeroDivisionError),
        (3, 3, ZeroDivisionError),
    ]
    assert ip.user_ns["out"] == [10, 5, 10, 5]
    assert "iteration 0 (item=0): ZeroDivisionError" in str(exc)


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_fails_the_slow_iteration_and_keeps_the_rest(ip, capsys, backend: str) -> None:
    cell = magic(backend, "--timeout 0.5 --on-error collect") + (
        "out = []\nfor i in range(4):\n    if i == 1:\n        t = time.monotonic()\n"
        "        while time.monotonic() - t < 30:\n            pass\n    out.append(i)\n"
    )
    result, _, _ = run(ip, cell, capsys)
    exc = result.error_in_exec
    assert isinstance(exc, parmagic.CollectedErrors)
    [(k, _, error)] = exc.failures
    assert (
        k == 1 and isinstance(error, parmagic.IterationTimeoutError) and "iteration 1" in str(error)
    )
    assert ip.user_ns["out"] == [0, 2, 3]
    again, _, err = run(
        ip, magic(backend) + "ok = []\nfor i in range(3):\n    ok.append(i)\n", capsys
    )
    assert again.success, err
    assert ip.user_ns["ok"] == [0, 1, 2]


def test_n_1_runs_in_the_kernel_so_debug_reaches_the_cell_frame(ip, capsys) -> None:
    """-n 1: the failing iteration's own frame is in the traceback %debug walks."""
    import os
    import sys

    cell = "%%parallel -n 1 --no-progress\nout = []\nfor i in range(5):\n    out.append(os.getpid())\n    x = 1 / (i - 2)\n"
    run(ip, "import os", capsys)
    result, _, _ = run(ip, cell, capsys)
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    assert set(ip.user_ns["out"]) == {os.getpid()}
    tb, frames = sys.last_traceback, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    cell_frames = [
        f for f in frames if "i" in f.f_locals and f.f_code.co_filename.startswith(("<", "/"))
    ]
    assert any(f.f_locals.get("i") == 2 for f in cell_frames)


@pytest.mark.parametrize("backend", BACKENDS)
def test_effect_failing_in_the_kernel_leaves_the_serial_locals(ip, capsys, backend: str) -> None:
    """`counts[key] += 1` with a missing key fails in the kernel, mid-batch: as in plain Python."""
    body = (
        "counts = {'a': 0}\nseen = []\nfor i in range(10):\n    v = i * 2\n    seen.append(v)\n"
        "    key = 'a' if i != 6 else 'b'\n    print('at', i)\n    counts[key] += 1\n    after = i\n"
    )
    plain, plain_out, _ = run(ip, body, capsys)
    expected = {n: ip.user_ns[n] for n in ("counts", "seen", "i", "v", "key", "after")}
    fresh(ip, "import time", capsys)
    par, par_out, _ = run(
        ip, f"%%parallel -n 2 --no-progress --chunksize 10 --backend {backend}\n" + body, capsys
    )
    assert isinstance(par.error_in_exec, KeyError) and isinstance(plain.error_in_exec, KeyError)
    assert {n: ip.user_ns[n] for n in expected} == expected  # i == 6, v == 12, after == 5
    at = [line for line in par_out.splitlines() if line.startswith("at ")]
    assert at == [line for line in plain_out.splitlines() if line.startswith("at ")]
