"""Progress state and redraw throttle, with a fake clock (no sleeping)."""

from __future__ import annotations

import pytest

from parmagic.progress import Progress, Throttle, format_seconds
from parmagic.record import DONE, FAILED, IterationRecord, RunRecord


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def commit(record: RunRecord, status: str = DONE) -> None:
    record.add_iteration(IterationRecord(record.done + record.failed, status))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, total: int | None = 10, workers: int = 2) -> tuple[Progress, RunRecord]:
    record = RunRecord("loop", "loky", workers, total)
    return Progress.for_record(record, clock=clock), record


def test_counts_only_new_iterations(clock):
    progress, record = make(clock)
    for status in (DONE, DONE, FAILED):
        commit(record, status)
    progress.observe(record, busy=2)
    assert (progress.done, progress.failed, progress.busy) == (2, 1, 2)
    commit(record)
    progress.observe(record, busy=1)
    assert (progress.done, progress.failed, progress.completed) == (3, 1, 4)


def test_recount_and_finish_take_exact_numbers(clock):
    progress, record = make(clock)
    commit(record)
    progress.observe(record, busy=2)
    commit(record, FAILED)
    clock.advance(3)
    progress.finish(record)
    assert (progress.done, progress.failed, progress.busy) == (1, 1, 0)
    clock.advance(100)
    assert progress.elapsed == 3.0  # frozen at finish


def test_eta_from_mean_rate(clock):
    progress, record = make(clock, total=10)
    assert progress.eta is None and progress.rate is None  # nothing ended yet
    clock.advance(4)
    commit(record)
    commit(record)
    progress.observe(record, busy=2)
    assert progress.rate == pytest.approx(0.5)
    assert progress.remaining == 8
    assert progress.eta == pytest.approx(16.0)
    assert progress.fraction == pytest.approx(0.2)


def test_eta_zero_when_all_done_and_none_without_total(clock):
    progress, record = make(clock, total=2)
    clock.advance(1)
    commit(record)
    commit(record)
    progress.observe(record, busy=0)
    assert progress.eta == 0.0 and progress.fraction == 1.0
    unknown, record2 = make(clock, total=None)
    commit(record2)
    unknown.observe(record2, busy=1)
    assert unknown.eta is None and unknown.fraction is None and unknown.remaining is None


def test_empty_total_is_complete(clock):
    progress, _ = make(clock, total=0)
    assert progress.fraction == 1.0 and progress.eta == 0.0


def test_describe_running_and_finished(clock):
    progress, record = make(clock, total=16)
    clock.advance(2)
    for _ in range(4):
        commit(record)
    progress.observe(record, busy=2)
    assert progress.describe() == "4/16 · 2.00s elapsed · ETA 6.00s · 2/2 busy · 0 failed"
    progress.finish(record)
    assert progress.describe() == "4/16 · 2.00s elapsed · 0 failed"


def test_describe_without_total(clock):
    progress, record = make(clock, total=None, workers=4)
    commit(record, FAILED)
    progress.observe(record, busy=3)
    assert progress.describe() == "1 done · 0.00s elapsed · 3/4 busy · 1 failed"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "?"),
        (-1, "0.00s"),
        (0.254, "0.25s"),
        (1.5, "1.50s"),
        (12.34, "12.3s"),
        (125, "2m05s"),
        (3720, "1h02m"),
    ],
)
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_throttle_caps_renders_at_ten_per_second():
    throttle = Throttle()
    calls, span = 20_000, 2.0
    renders = sum(throttle.should_render(i * span / calls) for i in range(calls))
    assert 19 <= renders <= 21
    assert throttle.should_render(span, final=True)  # the final state is always drawn


def test_throttle_first_call_renders_unless_held_back():
    assert Throttle().should_render(5.0)
    held = Throttle(interval=1.0, last=5.0)
    assert not held.should_render(5.9)
    assert held.should_render(6.0)
    assert not held.should_render(6.5)
