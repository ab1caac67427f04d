"""The supervisor over a fake backend: what a settled, lost or unsendable batch becomes.

No kernel and no pool: the fake backend hands out futures the test settles, and
the test writes the status board as a worker would.
"""

from __future__ import annotations

import os
import pickle
from concurrent.futures import Future

import pytest

from parmagic.backends.base import Backend, WorkersLost
from parmagic.errors import UnsendableValueError, WorkerDiedError
from parmagic.supervisor import MAX_BLIND_BREAKS, Supervisor
from parmagic.worker.board import BATCH, RUNNING
from parmagic.worker.protocol import BatchResult


class FakeBackend(Backend):
    """Process-like: a shared status board; futures are settled by the test."""

    name = "fake"
    shared_board = True

    def __init__(self) -> None:
        super().__init__(2)
        self.submitted: list[tuple] = []

    def submit(self, fn, *args) -> Future:
        self.submitted.append(args)
        return Future()

    def worker_pids(self) -> list[int]:
        return []  # the board's writer is this process: never signal it


@pytest.fixture
def supervisor():
    sup = Supervisor(FakeBackend(), timeout=None, n_slots=4)
    yield sup
    sup.close()


def submit(sup: Supervisor, start: int, chunk: list) -> tuple[Future, object]:
    future = sup.submit(lambda *a: None, "ref", start, chunk)
    return future, sup._slots[future]


def test_a_finished_batch_is_one_piece_with_its_result(supervisor) -> None:
    future, _ = submit(supervisor, 0, [1, 2, 3])
    result = BatchResult(start=0, ran=3, pid=1)
    future.set_result(result)
    (piece,) = supervisor.settle(future, 0, [1, 2, 3])
    assert (piece.start, piece.chunk, piece.result) == (0, [1, 2, 3], result)


def test_a_dead_worker_fails_only_the_iteration_it_held(supervisor) -> None:
    chunk = list("abcde")
    future, slot = submit(supervisor, 10, chunk)
    slot.write(10, 12, RUNNING)  # the worker says: running iteration 12
    future.set_exception(WorkersLost("broken", {os.getpid(): -11}))
    pieces = supervisor.settle(future, 10, chunk)
    assert [(p.start, p.chunk, p.result is None) for p in pieces] == [
        (10, ["a", "b"], True),
        (12, ["c"], False),
        (13, ["d", "e"], True),
    ]
    (_, error, _) = pieces[1].result.errors[0]
    assert isinstance(error, WorkerDiedError)
    assert "SIGSEGV" in str(error) and "iteration 12 (item='c')" in str(error)


def test_a_death_somewhere_in_a_batch_reruns_it_tracked(supervisor) -> None:
    future, slot = submit(supervisor, 0, [1, 2])
    slot.write(0, 0, BATCH)  # no per-iteration writes: which iteration is unknown
    future.set_exception(WorkersLost("broken", {os.getpid(): -9}))
    (piece,) = supervisor.settle(future, 0, [1, 2])
    assert piece.result is None and piece.chunk == [1, 2]
    _, slot = submit(supervisor, 0, [1, 2])
    assert slot.tracked  # the rerun reports every iteration, so a recurring crash is pinned


def test_breaks_nobody_explains_blame_the_earliest_pending_iteration(supervisor) -> None:
    for _ in range(MAX_BLIND_BREAKS - 1):
        future, _ = submit(supervisor, 5, [1])
        future.set_exception(WorkersLost("broken"))
        assert supervisor.settle(future, 5, [1])[0].result is None  # run again
    future, _ = submit(supervisor, 5, [1])
    future.set_exception(WorkersLost("broken"))
    (piece,) = supervisor.settle(future, 5, [1])
    assert isinstance(piece.result.errors[0][1], WorkerDiedError)


def test_a_batch_that_cannot_travel_back_runs_again_one_by_one(supervisor) -> None:
    future, _ = submit(supervisor, 0, [1, 2])
    future.set_exception(pickle.PicklingError("cannot pickle 'generator'"))
    pieces = supervisor.settle(future, 0, [1, 2])
    assert [(p.start, p.chunk, p.result) for p in pieces] == [(0, [1], None), (1, [2], None)]
    future, _ = submit(supervisor, 1, [2])
    future.set_exception(pickle.PicklingError("cannot pickle 'generator'"))
    (piece,) = supervisor.settle(future, 1, [2])
    assert isinstance(piece.result.errors[0][1], UnsendableValueError)


def test_slots_are_freed_when_batches_settle_or_are_dropped(supervisor) -> None:
    futures = [submit(supervisor, i, [i])[0] for i in range(4)]  # every slot taken
    for future in futures[:2]:
        future.set_result(BatchResult(start=0, ran=1, pid=1))
        supervisor.settle(future, 0, [0])
    for future in futures[2:]:
        future.cancel()
        supervisor.drop(future)
    for i in range(4):  # would fail for want of a slot if any had leaked
        submit(supervisor, i, [i])


def test_a_backend_that_cannot_stop_one_worker_is_never_asked_to(supervisor) -> None:
    future, slot = submit(supervisor, 0, [1])
    slot.write(0, 0, RUNNING)
    assert supervisor.stop_stuck([future]) is False  # the engine then aborts the pool
