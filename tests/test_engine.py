"""The engine over the in-kernel backends (no kernel, no process pool).

Ordering whatever order batches finish in, a batch lost with its pool run again,
the rest cancelled after a failure, and ``--on-error collect``.
"""

from __future__ import annotations

import time
from concurrent.futures import Future

import pytest

from parmagic import engine, pool
from parmagic.backends.base import WorkersLost
from parmagic.backends.local import ThreadBackend
from parmagic.errors import CollectedErrors
from parmagic.options import Options
from parmagic.rewrite import plan_cell

BACKENDS = ["serial", "threads"]


def run(source: str, namespace: dict, backend_factory=pool.get_backend, **options) -> dict:
    opts = Options(progress=False, **options)
    cell = engine.CellRun(namespace, opts, backend_factory, None, "<test>", source)
    engine.run_plan(plan_cell(source, "<test>"), cell)
    return namespace


@pytest.mark.parametrize("backend", BACKENDS)
def test_effects_commit_in_iteration_order_whatever_finishes_first(backend: str) -> None:
    source = (
        "out = []\nfor i in range(12):\n    time.sleep((12 - i) % 4 * 0.002)\n    out.append(i)\n"
    )
    ns = run(source, {"time": time}, backend=backend, n_jobs=3, chunksize=1)
    assert ns["out"] == list(range(12)) and ns["i"] == 11


class LosingBackend(ThreadBackend):
    """Threads, but the first batches submitted are lost in one break, as if the pool broke."""

    shared_board = True  # as a process pool: the supervisor knows which batches it lost

    def __init__(self, n_workers: int, lose: int):
        super().__init__(n_workers, pool._thread_pool(n_workers))
        self.lose = lose
        self.broken = WorkersLost("the pool broke")  # one break: one error for all it lost

    def submit(self, fn, *args) -> Future:
        if self.lose <= 0:
            return super().submit(fn, *args)
        self.lose -= 1
        lost: Future = Future()
        lost.set_exception(self.broken)
        return lost

    def worker_pids(self) -> list[int]:
        return []  # the "workers" are this process: never signal it


def test_a_batch_lost_with_its_pool_runs_again_and_commits_once() -> None:
    backend = LosingBackend(2, lose=3)
    source = "out = []\nfor i in range(6):\n    out.append(i * i)\n"
    ns = run(source, {}, backend_factory=lambda o: backend, n_jobs=2, chunksize=2)
    assert ns["out"] == [0, 1, 4, 9, 16, 25]
    assert engine.last_run().done == 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failure_commits_the_prefix_and_cancels_the_rest(backend: str) -> None:
    source = "out = []\nfor i in range(40):\n    out.append(10 // (3 - i))\n"
    ns: dict = {}
    with pytest.raises(ZeroDivisionError):
        run(source, ns, backend=backend, n_jobs=2, chunksize=1)
    assert ns["out"] == [3, 5, 10]
    record = engine.last_run()
    assert (record.outcome, record.done, record.failed) == ("error", 3, 1)
    assert all(k > 3 for k in record.cancelled)


@pytest.mark.parametrize("backend", BACKENDS)
def test_collect_commits_every_success_then_lists_the_failures(backend: str) -> None:
    source = "out = []\nfor i in range(7):\n    out.append(6 // (i % 3))\n"
    ns: dict = {}
    with pytest.raises(CollectedErrors) as raised:
        run(source, ns, backend=backend, n_jobs=2, chunksize=2, on_error="collect")
    assert ns["out"] == [6, 3, 6, 3]
    assert [k for k, _, _ in raised.value.failures] == [0, 3, 6]


def test_an_effect_failing_in_the_kernel_raises_as_the_plain_loop_does() -> None:
    source = "d = {}\nfor i in range(4):\n    x = i * 2\n    d[i // 2] += x\n"
    ns: dict = {}
    with pytest.raises(KeyError):
        run(source, ns, backend="threads", n_jobs=2)
    assert ns["d"] == {} and ns["i"] == 0 and ns["x"] == 0  # the locals at the failed effect
