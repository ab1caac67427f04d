"""%%parallel leaves the same namespace and output as the plain cell (real IPython shell)."""

from __future__ import annotations

import pytest

from .cells import CELLS, SETUP
from .shell import fresh, run, shell, snapshot

BACKENDS = ["loky", "threads", "serial"]


def plain_and_parallel(name: str, cell: str, backend: str, capsys: pytest.CaptureFixture) -> tuple:
    ip = shell()
    fresh(ip, SETUP, capsys)
    plain, plain_out, plain_err = run(ip, cell, capsys)
    assert plain.success, f"{name}: the plain cell itself fails: {plain_err}"
    expected = snapshot(ip.user_ns), plain.result
    fresh(ip, SETUP, capsys)
    par, par_out, par_err = run(
        ip, f"%%parallel -n 2 --no-progress --backend {backend}\n{cell}", capsys
    )
    assert par.success, f"{name} on {backend} failed: {par.error_in_exec!r}\n{par_err}"
    got = snapshot(ip.user_ns), par.result
    return expected, got, (plain_out, plain_err), (par_out, par_err)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,cell", CELLS, ids=[c[0] for c in CELLS])
def test_same_namespace_and_output(
    name: str, cell: str, backend: str, capsys: pytest.CaptureFixture
) -> None:
    expected, got, (plain_out, plain_err), (par_out, par_err) = plain_and_parallel(
        name, cell, backend, capsys
    )
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    assert par_out == plain_out
    plain_lines = plain_err.splitlines()
    assert [line for line in par_err.splitlines() if line in plain_lines] == plain_lines


def test_at_least_25_distinct_cells() -> None:
    assert len({cell for _, cell in CELLS}) >= 25


def test_redefinition_is_picked_up_by_next_cell(capsys: pytest.CaptureFixture) -> None:
    ip = shell()
    fresh(ip, "def f(x):\n    return x + 1\n", capsys)
    run(
        ip,
        "%%parallel -n 2 --no-progress\nr1 = []\nfor i in range(4):\n    r1.append(f(i))\n",
        capsys,
    )
    run(ip, "def f(x):\n    return x * 100\n", capsys)
    run(
        ip,
        "%%parallel -n 2 --no-progress\nr2 = []\nfor i in range(4):\n    r2.append(f(i))\n",
        capsys,
    )
    assert ip.user_ns["r1"] == [1, 2, 3, 4]
    assert ip.user_ns["r2"] == [0, 100, 200, 300]


def test_workers_are_not_the_kernel_and_are_reused(capsys: pytest.CaptureFixture) -> None:
    ip = shell()
    fresh(ip, "import os", capsys)
    cell = "%%parallel -n 2 --no-progress --no-auto-serial\n{name} = []\nfor i in range(20):\n    {name}.append(os.getpid())\n"
    run(ip, cell.format(name="p1"), capsys)
    run(ip, cell.format(name="p2"), capsys)
    p1, p2 = set(ip.user_ns["p1"]), set(ip.user_ns["p2"])
    assert os_getpid() not in p1 | p2
    assert p1 | p2 <= set(__import__("parmagic").status()["pids"])


def os_getpid() -> int:
    import os

    return os.getpid()


def test_lazy_iterable_is_not_materialised(capsys: pytest.CaptureFixture) -> None:
    ip = shell()
    fresh(ip, "import itertools", capsys)
    cell = (
        "%%parallel -n 2 --no-progress\nfirst = []\n"
        "for i in zip(range(10**12), range(5)):\n    first.append(i)\n"
    )
    result, _, err = run(ip, cell, capsys)
    assert result.success, err
    assert ip.user_ns["first"] == [(i, i) for i in range(5)]


def test_no_loop_cell_runs_normally_and_says_so(capsys: pytest.CaptureFixture) -> None:
    ip = shell()
    fresh(ip, "", capsys)
    result, out, err = run(ip, "%%parallel\nx = 1\nx + 1\n", capsys)
    assert result.success and result.result == 2 and ip.user_ns["x"] == 1
    assert "no top-level loop" in err
