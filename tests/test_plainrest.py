"""Auto-serial's rest in the kernel (issue 12): a loop too cheap for workers finishes as
the plain cell runs it, with the plain cell's namespace, output, errors and stop button.

The shell tests compare the plain cell with the ``%%parallel`` one; the kernel tests press
the stop button through ``KernelManager.interrupt_kernel()`` while the rest runs.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import parmagic

from .kernel import collect, execute, kernel, value
from .shell import fresh, run, shell, snapshot
from .test_failures import when_written

SETUP = "import random\ndef inc(x):\n    return x + 1\n"
MAGIC = "%%parallel -n 2 --no-progress\n"


@pytest.fixture
def ip(capsys: pytest.CaptureFixture):
    ip = shell()
    fresh(ip, SETUP, capsys)
    yield ip
    parmagic.set_defaults(n_jobs=-1, backend="loky")


def plain_and_parallel(ip: Any, capsys: Any, cell: str) -> tuple[tuple, tuple]:
    """(result, stdout, stderr, namespace) of the plain cell, then of the %%parallel one."""
    fresh(ip, SETUP, capsys)
    result, out, err = run(ip, cell, capsys)
    plain = (result, out, err, snapshot(ip.user_ns))
    fresh(ip, SETUP, capsys)
    result, out, err = run(ip, MAGIC + cell, capsys)
    return plain, (result, out, err, snapshot(ip.user_ns))


def kernel_part(record: Any) -> list:
    """The record's batches that ran in the kernel as the plain loop (timed as a whole)."""
    return [t for t in record.tasks if t.worker == os.getpid() and t.marks == [0.0]]


LOOP = """results = []
total = 0
for i in range(30000):
    y = inc(i)
    if i % 10000 == 0:
        print("at", i)
    if y % 7 == 0:
        continue
    results.append(y)
    total += y
else:
    finished = True
"""


def test_the_rest_runs_as_the_plain_loop(ip, capsys) -> None:
    plain, parallel = plain_and_parallel(ip, capsys, LOOP)
    assert plain[0].success and parallel[0].success, parallel[2]
    assert parallel[3] == plain[3]
    assert parallel[1].splitlines()[:3] == plain[1].splitlines()
    record = parmagic.last_run()
    assert 0 < record.ran_in_kernel_from < 30000 and "kernel" in record.auto_serial_note
    rest = kernel_part(record)
    assert rest and sum(t.count for t in rest) == 30000 - record.ran_in_kernel_from
    assert record.done == 30000 and len(record.iterations) == 30000
    assert {it.status for it in record.iterations} == {"done"}
    assert f"iterations from #{record.ran_in_kernel_from} on ran in the kernel" in parallel[2]


SHOWS = """import warnings
from IPython.display import display
warnings.simplefilter("ignore", UserWarning)
warned = []
warnings.showwarning = lambda message, *rest, **kw: warned.append(str(message))
shown = []
for i in range(30000):
    if i % 10000 == 0:
        display(f"shown {i}")
        warnings.warn(f"hidden {i}")
        warnings.warn(f"once {i % 2}", RuntimeWarning)
    shown.append(i)
"""


def test_displays_and_the_kernels_warning_filters_in_the_rest(ip, capsys) -> None:
    plain, parallel = plain_and_parallel(ip, capsys, SHOWS)
    assert parallel[0].success, parallel[2]
    assert parallel[3] == plain[3]
    assert [x for x in parallel[1].splitlines() if "shown" in x] == [
        x for x in plain[1].splitlines() if "shown" in x
    ]
    assert ip.user_ns["warned"] and not any("hidden" in w for w in ip.user_ns["warned"])
    assert parmagic.last_run().ran_in_kernel_from is not None


def test_items_changed_in_the_rest_are_the_kernels_own(ip, capsys) -> None:
    fresh(ip, SETUP, capsys)
    result, _, err = run(ip, "rows = [{'i': i} for i in range(30000)]", capsys)
    ids = [id(r) for r in ip.user_ns["rows"]]
    result, _, err = run(ip, MAGIC + "for row in rows:\n    row['twice'] = row['i'] * 2\n", capsys)
    assert result.success, err
    rows = ip.user_ns["rows"]
    assert [id(r) for r in rows] == ids and ip.user_ns["row"] is rows[-1]
    assert all(r["twice"] == 2 * r["i"] for r in rows)
    assert kernel_part(parmagic.last_run())


def test_comprehensions_and_pmap_finish_in_the_kernel_in_their_own_scope(ip, capsys) -> None:
    cell = "squares = [inc(i) * i for i in range(30000) if i % 3]\n"
    plain, parallel = plain_and_parallel(ip, capsys, cell)
    assert parallel[0].success, parallel[2]
    assert parallel[3] == plain[3] and "i" not in ip.user_ns
    assert kernel_part(parmagic.last_run())
    result, out, err = run(
        ip, "got = %pmap -n 2 --no-progress inc(x) for x in range(30000)", capsys
    )
    assert result.success, err
    assert ip.user_ns["got"] == [i + 1 for i in range(30000)]
    assert kernel_part(parmagic.last_run())


FAILING = """out = []
for i in range(30000):
    out.append(10 // (25000 - i))
"""


def test_an_error_in_the_rest_reads_like_the_plain_cells(ip, capsys) -> None:
    plain, parallel = plain_and_parallel(ip, capsys, FAILING)
    assert not parallel[0].success
    assert type(parallel[0].error_in_exec) is type(plain[0].error_in_exec) is ZeroDivisionError
    assert parallel[3] == plain[3]  # out has 25000 values, i is 25000: as far as plain got
    shown = parallel[1] + parallel[2]
    assert "out.append(10 // (25000 - i))" in shown and "parmagic/" not in shown
    record = parmagic.last_run()
    assert (record.done, record.failed, record.outcome) == (25000, 1, "error")
    assert record.iterations[25000].status == "failed"
    assert isinstance(record.iterations[25000].error, ZeroDivisionError)


def test_a_comprehension_failing_in_the_rest_binds_nothing(ip, capsys) -> None:
    cell = "vals = [10 // (25000 - i) for i in range(30000)]\n"
    plain, parallel = plain_and_parallel(ip, capsys, cell)
    assert type(parallel[0].error_in_exec) is type(plain[0].error_in_exec) is ZeroDivisionError
    assert parallel[3] == plain[3] and "vals" not in ip.user_ns
    assert "10 // (25000 - i)" in parallel[1] + parallel[2]


ITEMS = """class Items:
    def __len__(self):
        return 30000
    def __iter__(self):
        for i in range(25000):
            yield i
        raise RuntimeError("the source broke")
"""


def test_an_iterable_that_breaks_in_the_rest_commits_what_it_yielded(ip, capsys) -> None:
    cell = "got = []\nfor x in Items():\n    got.append(x * 2)\n"
    fresh(ip, SETUP + ITEMS, capsys)
    plain = run(ip, cell, capsys)
    plain_ns = snapshot(ip.user_ns)
    fresh(ip, SETUP + ITEMS, capsys)
    result, out, err = run(ip, MAGIC + cell, capsys)
    assert type(result.error_in_exec) is type(plain[0].error_in_exec) is RuntimeError
    assert snapshot(ip.user_ns) == plain_ns and len(ip.user_ns["got"]) == 25000
    assert parmagic.last_run().done == 25000


DRAWS_LATE = """random.seed(7)
xs = []
for i in range(30000):
    if i >= 29000:
        xs.append(random.random())
"""


def test_draws_late_in_the_rest_are_the_plain_loops_on_every_run(ip, capsys) -> None:
    run(ip, DRAWS_LATE, capsys)
    plain = list(ip.user_ns["xs"])
    for _ in range(3):  # the second run on starts in the kernel from memory
        result, _, err = run(ip, MAGIC + DRAWS_LATE, capsys)
        assert result.success, err
        # nothing drew before the rest: the kernel's generator is as the loop found it
        assert ip.user_ns["xs"] == plain
        assert "drew random numbers" not in err  # the numbers are the plain loop's
    run(ip, "after = random.random()", capsys)
    assert ip.user_ns["after"] not in plain  # the kernel's generator moved on


# ----------------------------------------------------------------- the stop button


KERNEL_SETUP = """\
%load_ext parmagic
import os, time
import parmagic

def touch(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))

class Marked(list):
    '''Touches ``mark`` once it holds ``at`` values: the stop button lands in the rest.'''

    def __init__(self, mark, at):
        super().__init__()
        self.mark, self.at = mark, at

    def append(self, x):
        if len(self) == self.at:
            touch(self.mark)
        super().append(x)
"""
HOW_FAR = re.compile(r"parmagic: interrupted; (\d+) iteration\(s\) of 3000000 committed")


@pytest.fixture(scope="module")
def kernel_pair() -> Iterator[tuple[Any, Any]]:
    with kernel() as (km, kc):
        ex = execute(kc, KERNEL_SETUP)
        assert ex.ok, ex.error()
        warm = execute(kc, MAGIC + "for i in range(4):\n    time.sleep(0.01)")
        assert warm.ok, warm.error()
        yield km, kc


def stopped(km: Any, kc: Any, code: str, mark: Path, within: float) -> Any:
    """Run ``code``; press the stop button once an iteration wrote ``mark``; the cell must
    end with KeyboardInterrupt within ``within`` seconds of the press."""
    msg_id = kc.execute(code)
    sent = when_written(mark, lambda _: (km.interrupt_kernel(), time.monotonic())[1])
    ex = collect(kc, msg_id)
    assert ex.reply["content"]["ename"] == "KeyboardInterrupt"
    assert ex.idle_at() - sent < within, f"the cell took {ex.idle_at() - sent:.2f}s to stop"
    return ex


@pytest.mark.kernel
@pytest.mark.slow
def test_the_stop_button_in_the_rest_lands_between_iterations(
    kernel_pair: tuple[Any, Any], tmp_path: Path
) -> None:
    km, kc = kernel_pair
    mark = tmp_path / "in-the-rest"
    code = (
        MAGIC + f"r = Marked({str(mark)!r}, 600_000)\n"
        "for i in range(3_000_000):\n"
        "    r.append(i)\n"
        "    r.append(-i)\n"
    )
    ex = stopped(km, kc, code, mark, within=2.0)
    found = HOW_FAR.findall(ex.stream("stderr"))
    assert len(found) == 1, ex.stream("stderr")
    n = int(found[0])
    assert 300_000 <= n < 3_000_000
    assert value(kc, "len(r), r[-2:], i") == (2 * n, [n - 1, -(n - 1)], n - 1)
    assert value(kc, "parmagic.last_run().done, parmagic.last_run().outcome") == (n, "interrupted")
    assert value(kc, "parmagic.last_run().ran_in_kernel_from") is not None
    assert "part-way" not in ex.stream("stderr")


@pytest.mark.kernel
@pytest.mark.slow
def test_an_iteration_that_runs_on_is_stopped_after_a_second(
    kernel_pair: tuple[Any, Any], tmp_path: Path
) -> None:
    km, kc = kernel_pair
    mark = tmp_path / "runs-on"
    code = (
        MAGIC + "r = []\n"
        "for i in range(3_000_000):\n"
        "    r.append(i)\n"
        "    if i == 2_000_000:\n"
        f"        touch({str(mark)!r})\n"
        "        time.sleep(60)\n"
        "        r.append('never')\n"
    )
    ex = stopped(km, kc, code, mark, within=3.0)
    err = ex.stream("stderr")
    assert "iteration 2000000" in err and "part-way" in err, err
    assert HOW_FAR.findall(err) == ["2000000"], err
    # as a plain loop leaves it: iteration 2,000,000 appended its i, then slept
    assert value(kc, "len(r), r[-1], i") == (2_000_001, 2_000_000, 2_000_000)
    ex = execute(kc, MAGIC + "after = []\nfor i in range(6):\n    after.append(i * i)")
    assert ex.ok, ex.error()
    assert value(kc, "after") == [i * i for i in range(6)]


# ----------------------------------------------------------------- a loop run again

AGAIN = """out = []
for i in range(30000):
    out.append(work(i))
"""
WORK = """DELAY = 0.0
def work(x):
    if DELAY:
        time.sleep(DELAY)
    return 10 // (LIMIT - x)
LIMIT = -1
"""


@pytest.fixture
def again(ip, capsys):
    """A cheap loop run once: auto-serial has seen it finish in the kernel."""
    fresh(ip, SETUP + "import time\n" + WORK, capsys)
    result, _, err = run(ip, MAGIC + AGAIN, capsys)
    assert result.success, err
    assert parmagic.last_run().ran_in_kernel_from is not None
    return ip


def test_a_cheap_loop_run_again_starts_in_the_kernel(again, capsys) -> None:
    result, _, err = run(again, MAGIC + AGAIN, capsys)
    assert result.success, err
    assert again.user_ns["out"] == [10 // (-1 - x) for x in range(30000)]
    assert again.user_ns["i"] == 29999
    record = parmagic.last_run()
    assert record.ran_in_kernel_from == 0 and "when it last ran" in record.auto_serial_note
    assert {t.worker for t in record.tasks} == {os.getpid()}  # no worker was asked
    assert record.done == 30000


def test_a_loop_run_again_with_dearer_iterations_moves_to_the_workers(again, capsys) -> None:
    run(again, "DELAY = 0.005", capsys)
    cell = "out = []\nfor i in range(40):\n    out.append(work(i))\n"
    result, _, err = run(again, MAGIC + cell, capsys)
    assert result.success, err
    assert again.user_ns["out"] == [10 // (-1 - x) for x in range(40)]
    record = parmagic.last_run()
    assert record.ran_in_kernel_from is None and record.done == 40
    assert len({t.worker for t in record.tasks} - {os.getpid()}) == 2  # both workers took part


def test_an_error_in_a_loop_started_in_the_kernel_reads_like_the_plain_cells(again, capsys) -> None:
    run(again, "LIMIT = 25000", capsys)
    result, out, err = run(again, MAGIC + AGAIN, capsys)
    assert type(result.error_in_exec) is ZeroDivisionError
    assert len(again.user_ns["out"]) == 25000 and again.user_ns["i"] == 25000
    shown = re.sub(r"\x1b\[[0-9;]*m", "", out + err)
    assert "return 10 // (LIMIT - x)" in shown and "parmagic/" not in shown
    record = parmagic.last_run()
    assert (record.done, record.failed, record.ran_in_kernel_from) == (25000, 1, 0)


MONTE_CARLO = """random.seed(3)
inside = 0
xs = []
for i in range(20000):
    x, y = random.random(), random.random()
    xs.append(x)
    inside += x * x + y * y < 1
"""


def test_a_seeded_monte_carlo_finished_in_the_kernel_draws_the_streams_of_any_n(ip, capsys) -> None:
    """Iteration k draws from its own stream wherever it runs: the rest in the kernel too."""
    got = {}
    for options in ("-n 2", "-n 2 --no-auto-serial", "-n 1"):
        result, _, err = run(ip, f"%%parallel {options} --no-progress\n{MONTE_CARLO}", capsys)
        assert result.success, err
        got[options] = (ip.user_ns["inside"], list(ip.user_ns["xs"]))
        if options == "-n 2":
            assert parmagic.last_run().ran_in_kernel_from is not None
    assert got["-n 2"] == got["-n 2 --no-auto-serial"] == got["-n 1"]


def test_batches_in_the_kernel_that_draw_never_run_twice(ip, capsys) -> None:
    """-n 1 runs batches on the kernel's own items: a batch that drew cannot run again."""
    run(ip, "random.seed(1)\nitems = [[] for _ in range(40)]", capsys)
    cell = "%%parallel -n 1 --no-progress --chunksize 8\nfor it in items:\n"
    result, _, err = run(ip, cell + "    it.append(random.random())\n", capsys)
    assert result.success, err
    assert [len(it) for it in ip.user_ns["items"]] == [1] * 40
