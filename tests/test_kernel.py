"""%%parallel through a real Jupyter kernel (jupyter_client): same state, same output."""

from __future__ import annotations

import time

import pytest

from .cells import CELLS, SETUP
from .kernel import execute, kernel, value

pytestmark = pytest.mark.kernel

KERNEL_CELLS = [
    c
    for c in CELLS
    if c[0]
    in {
        "joblib_slow_power",
        "joblib_if_else",
        "spec_worked_example",
        "nested_path_append",
        "continue_and_last_local",
        "print_order",
        "print_order_when_later_iterations_finish_first",
        "list_comprehension",
        "attribute_effects",
        "last_expression_after_loop",
        "generator_iterable",
        "else_clause",
    }
]

SNAPSHOT = (
    "{k: repr(vars(v) if hasattr(v, '__dict__') else v) for k, v in globals().items() "
    "if not k.startswith('_') and k not in "
    "('In', 'Out', 'exit', 'quit', 'get_ipython') and not callable(v) and type(v).__name__ != 'module'}"
)


@pytest.fixture(scope="module")
def kc():
    with kernel() as (km, client):
        ex = execute(client, "%load_ext parmagic")
        assert ex.ok, ex.error()
        yield client


def reset(kc) -> None:
    ex = execute(kc, "%reset -f\n")
    assert ex.ok
    ex = execute(kc, SETUP)
    assert ex.ok, ex.error()


def result_text(ex) -> str | None:
    """The cell's Out[] value (execute_result), not the progress or summary displays."""
    results = [m["content"]["data"] for _, m in ex.messages if m["msg_type"] == "execute_result"]
    return results[-1]["text/plain"] if results else None


@pytest.mark.parametrize("name,cell", KERNEL_CELLS, ids=[c[0] for c in KERNEL_CELLS])
def test_kernel_cell_same_as_plain(kc, name: str, cell: str) -> None:
    reset(kc)
    plain = execute(kc, cell)
    assert plain.ok, plain.error()
    expected = value(kc, SNAPSHOT)
    reset(kc)
    par = execute(kc, "%%parallel -n 2\n" + cell)
    assert par.ok, par.error()
    assert value(kc, SNAPSHOT) == expected
    assert par.stream("stdout") == plain.stream("stdout")
    assert result_text(par) == result_text(plain)


def test_worker_pids_same_in_two_cells_and_not_the_kernel(kc) -> None:
    reset(kc)
    cell = (
        "%%parallel -n 2 --no-progress\n{0} = []\nfor i in range(8):\n    time.sleep(0.05)\n"
        "    {0}.append(os.getpid())\n{0}_pool = parmagic.status()['pids']\n"
    )
    assert execute(kc, "import os, time, parmagic").ok
    assert execute(kc, cell.format("first")).ok
    assert execute(kc, cell.format("second")).ok
    first, second, pool1, pool2, kernel_pid = value(
        kc, "set(first), set(second), first_pool, second_pool, os.getpid()"
    )
    assert pool1 == pool2 and len(pool1) == 2
    assert first == second == set(pool1)
    assert kernel_pid not in first | second


def test_seed_example_on_a_warm_pool_under_3_5_s(kc) -> None:
    """The joblib tutorial's 10 x 1 s loop at -n 4: ideal 3 s."""
    reset(kc)
    assert execute(kc, "def sleepy_power(x, p):\n    time.sleep(1)\n    return x ** p\n").ok
    warm = execute(
        kc, "%%parallel -n 4 --no-progress\nw = []\nfor i in range(4):\n    w.append(i)\n"
    )
    assert warm.ok, warm.error()
    t0 = time.monotonic()
    ex = execute(
        kc,
        "%%parallel -n 4\nresults = []\nfor i in range(10):\n    results.append(sleepy_power(i, 5))\n",
    )
    elapsed = time.monotonic() - t0
    assert ex.ok, ex.error()
    assert value(kc, "results") == [i**5 for i in range(10)]
    assert elapsed < 3.5, f"10 x 1 s at -n 4 took {elapsed:.2f} s"


def test_refusal_in_kernel_is_one_clear_error_and_changes_nothing(kc) -> None:
    reset(kc)
    assert execute(kc, "seen = set()\nbefore = 1").ok
    ex = execute(
        kc,
        "%%parallel\nbefore = 2\nfor x in range(5):\n    if x not in seen:\n        seen.add(x)\n",
    )
    assert not ex.ok
    err = ex.error()
    assert err["ename"] == "RefusedLoopError"
    assert "line 4" in err["evalue"] and "'seen'" in err["evalue"]
    assert value(kc, "before, seen") == (1, set())
    assert not any("parmagic/" in line for line in err["traceback"])


def test_bad_option_is_a_usage_error(kc) -> None:
    ex = execute(kc, "%%parallel -n 0\nfor i in range(3):\n    pass\n")
    assert not ex.ok
    assert ex.reply["content"]["ename"] == "UsageError"
    assert "--n-jobs" in ex.stream("stderr") and "\n" not in ex.stream("stderr").strip()


def test_help_prints_options(kc) -> None:
    ex = execute(kc, "%%parallel -h\nfor i in range(3):\n    pass\n")
    assert ex.ok
    assert "--n-jobs" in ex.stream() and "--on-error" in ex.stream()
