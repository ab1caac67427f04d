"""Progress state and redraw throttle, with a fake clock (no sleeping)."""

from __future__ import annotations

import pytest

from parmagic.progress import (
    NAME_WIDTH,
    Progress,
    Throttle,
    format_interval,
    format_rate,
    format_seconds,
    name_area,
    text_bar,
)
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


def test_rate_and_eta_at_a_steady_pace(clock):
    progress, record = make(clock, total=10)
    assert progress.eta is None and progress.rate is None  # nothing ended yet
    for _ in range(4):  # two iterations a second, observed every 0.5 s
        clock.advance(0.5)
        commit(record)
        progress.observe(record, busy=2)
    assert progress.rate == pytest.approx(2.0)
    assert progress.remaining == 6
    assert progress.eta == pytest.approx(3.0)
    assert progress.fraction == pytest.approx(0.4)
    progress.finish(record)
    assert progress.rate == pytest.approx(2.0)  # the mean once finished


def test_eta_never_rises_between_completions(clock):
    progress, record = make(clock, total=10)
    clock.advance(1)
    commit(record)
    commit(record)
    progress.observe(record, busy=2)
    etas = [progress.eta]
    for _ in range(30):  # 3 s with nothing new: the mean rate would make the ETA climb
        clock.advance(0.1)
        progress.observe(record, busy=2)
        etas.append(progress.eta)
    assert all(b <= a for a, b in zip(etas, etas[1:], strict=False)), etas
    assert etas[-1] == pytest.approx(7 / 2)  # counted down, held at one iteration fewer
    assert etas[-1] > 0


def test_rate_is_smoothed_like_tqdm(clock):
    progress, record = make(clock, total=100)
    for _ in range(10):  # 10 it/s for a second
        clock.advance(0.1)
        commit(record)
        progress.observe(record, busy=2)
    clock.advance(1.0)  # one slow iteration: 1 it/s
    commit(record)
    progress.observe(record, busy=2)
    # an EMA (weight 0.3) moves part of the way, not to the new rate nor the mean
    assert 1.0 < progress.rate < 10.0
    assert progress.rate == pytest.approx(0.3 * 1.0 + 0.7 * 10.0, rel=0.01)


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


def test_line_running_and_finished(clock):
    progress, record = make(clock, total=20)
    for _ in range(9):
        clock.advance(0.25)
        commit(record)
        progress.observe(record, busy=2)
    line = progress.line("for i in range(20):")
    assert line == (
        "for i in range(20)        45%|█████████           | 9/20 "
        "[00:02<00:02, 4.00 it/s, 2/2 busy]"
    )
    commit(record, FAILED)
    progress.finish(record)
    assert progress.line("for i in range(20):", "error") == (
        "for i in range(20)        50%|██████████          | 10/20 "
        "[00:02, 4.44 it/s, 1 failed] error"
    )


def test_bar_left_edge_does_not_move_with_the_name(clock):
    progress, _ = make(clock, total=4)
    names = ["x", "for i in range(4):", "for left, right in zip(first_long_name, second):"]
    edges = [progress.line(name).index("|") for name in names]
    assert len(set(edges)) == 1, edges
    assert name_area(names[2]).endswith("…") and len(name_area(names[2])) == NAME_WIDTH


def test_line_without_total(clock):
    progress, record = make(clock, total=None, workers=4)
    commit(record, FAILED)
    progress.observe(record, busy=3)
    assert progress.line("loop").endswith(" 1 done [00:00, ? it/s, 3/4 busy, 1 failed]")


@pytest.mark.parametrize(
    ("fraction", "bar"),
    [(0.0, " " * 20), (0.5, "█" * 10 + " " * 10), (0.53, "█" * 10 + "▌" + " " * 9), (1, "█" * 20)],
)
def test_text_bar(fraction, bar):
    assert text_bar(fraction) == bar


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "?"), (2.7, "00:02"), (125, "02:05"), (3723, "1:02:03")]
)
def test_format_interval(seconds, text):
    assert format_interval(seconds) == text


@pytest.mark.parametrize(
    ("rate", "text"),
    [(None, "? it/s"), (4.1, "4.10 it/s"), (1234.5, "1,234 it/s"), (0.4, "2.50 s/it")],
)
def test_format_rate(rate, text):
    assert format_rate(rate) == text


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
