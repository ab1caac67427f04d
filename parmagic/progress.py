"""Progress of one run as plain numbers, and a throttle for redrawing it.

The state is a dataclass with an injected clock (as rich's ``Task``), so the
numbers (elapsed, rate, ETA) are tested without sleeping. No widgets and no
IPython here: ``widgets.py`` and ``textview.py`` draw what this module counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .record import RunRecord

#: A clock returning seconds, like ``time.monotonic``.
Clock = Callable[[], float]

#: Redraws of a live view per second, at most.
MAX_RENDERS_PER_SECOND = 10


def format_seconds(seconds: float | None) -> str:
    """Format a duration for people: ``0.25s``, ``1.50s``, ``12.3s``, ``2m05s``, ``1h02m``; ``?`` if unknown."""
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        minutes, secs = divmod(int(round(seconds)), 60)
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(int(round(seconds)) // 60, 60)
    return f"{hours}h{minutes:02d}m"


def loop_name(label: str) -> str:
    """The loop's name for headings: ``for i in range(8)`` (no trailing colon), or a default."""
    return label.strip().rstrip(":").rstrip() or "parallel loop"


@dataclass
class Progress:
    """How far a run has got: counts, busy workers and the times derived from them.

    ``observe`` reads the record's counters, so calling it after every commit is O(1).
    """

    total: int | None
    n_workers: int = 1
    clock: Clock = field(default=time.monotonic, repr=False)
    started: float | None = None
    done: int = 0
    failed: int = 0
    busy: int = 0
    finished_at: float | None = None

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    @classmethod
    def for_record(cls, record: RunRecord, clock: Clock = time.monotonic) -> Progress:
        """A fresh progress for ``record`` (total and workers taken from it)."""
        return cls(total=record.total, n_workers=record.n_workers, clock=clock)

    def observe(self, record: RunRecord, busy: int) -> None:
        """Take the record's counts of committed iterations."""
        self.done, self.failed = record.done, record.failed
        self.busy = busy

    def recount(self, record: RunRecord) -> None:
        """Take the final counts of ``record``."""
        self.done, self.failed = record.done, record.failed

    def finish(self, record: RunRecord) -> None:
        """Freeze the clock and take the final counts; no worker is busy any more."""
        self.recount(record)
        self.busy = 0
        self.finished_at = self.clock()

    @property
    def completed(self) -> int:
        """Iterations that ended, well or not."""
        return self.done + self.failed

    @property
    def elapsed(self) -> float:
        """Seconds since the start (frozen once finished)."""
        end = self.finished_at if self.finished_at is not None else self.clock()
        return max(0.0, end - self.started)

    @property
    def rate(self) -> float | None:
        """Completed iterations per second, or None before the first one."""
        if not self.completed or self.elapsed <= 0:
            return None
        return self.completed / self.elapsed

    @property
    def remaining(self) -> int | None:
        """Iterations still to end, or None without a total."""
        return None if self.total is None else max(0, self.total - self.completed)

    @property
    def eta(self) -> float | None:
        """Estimated seconds to the end at the mean rate so far; None if unknown."""
        if self.remaining == 0:
            return 0.0
        if self.remaining is None or self.rate is None:
            return None
        return self.remaining / self.rate

    @property
    def fraction(self) -> float | None:
        """Completed share of the total in [0, 1], or None without a total."""
        if self.total is None:
            return None
        return min(1.0, self.completed / self.total) if self.total else 1.0

    def count_text(self) -> str:
        """``7/16`` with a total, ``7 done`` without one."""
        if self.total is None:
            return f"{self.completed} done"
        return f"{self.completed}/{self.total}"

    def describe(self) -> str:
        """One line: done/total · elapsed · ETA · busy workers · failures."""
        parts = [self.count_text(), f"{format_seconds(self.elapsed)} elapsed"]
        if self.finished_at is None:
            if self.total is not None:
                parts.append(f"ETA {format_seconds(self.eta)}")
            parts.append(f"{self.busy}/{self.n_workers} busy")
        parts.append(f"{self.failed} failed")
        return " · ".join(parts)


@dataclass
class Throttle:
    """Says when to redraw: at most once per ``interval`` seconds, and always when final.

    ``last`` is the time of the last redraw; set it to the start time to hold
    back the first redraw until one interval has passed.
    """

    interval: float = 1.0 / MAX_RENDERS_PER_SECOND
    last: float | None = None

    def should_render(self, now: float, final: bool = False) -> bool:
        """True when a redraw at ``now`` is due (and then counts it as done)."""
        if final or self.last is None or now - self.last >= self.interval:
            self.last = now
            return True
        return False
