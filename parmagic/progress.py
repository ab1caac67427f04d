"""Progress of one run as plain numbers, its one-line picture, and a redraw throttle.

The state is a dataclass with an injected clock (as rich's ``Task``), so the
numbers (elapsed, rate, ETA) are tested without sleeping. No widgets and no
IPython here: ``widgets.py`` and ``textview.py`` draw what this module counts.

The line follows tqdm's conventions::

    for i in range(20)      45%|█████████▌           | 9/20 [00:02<00:03, 4.10 it/s, 2/2 busy]

The loop's name sits in a fixed-width area so the bar's left edge stays put
whatever the name; the rate and ETA are smoothed as tqdm smooths them (an
exponential moving average of the rate between completions).
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

#: Weight of the newest rate in the moving average (tqdm's ``smoothing`` default).
SMOOTHING = 0.3

#: Characters of the fixed-width name area in front of the bar.
NAME_WIDTH = 24

#: Cells of the text bar.
BAR_CELLS = 20

#: Eighth blocks for a text bar's partial cell, as tqdm draws them.
_BLOCKS = " ▏▎▍▌▋▊▉█"


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


def format_interval(seconds: float | None) -> str:
    """tqdm's clock format: ``00:02``, ``12:05``, ``1:02:03``; ``?`` if unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(max(0.0, seconds) + 1e-6), 60)  # 2.9999... is 00:03
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def format_rate(rate: float | None) -> str:
    """``4.10 it/s``, ``1,234 it/s``, or ``2.50 s/it`` below one a second; ``? it/s`` if unknown."""
    if not rate:
        return "? it/s"
    if rate < 1:
        return f"{1 / rate:.2f} s/it"
    return f"{rate:,.0f} it/s" if rate >= 100 else f"{rate:.2f} it/s"


def loop_name(label: str) -> str:
    """The loop's name for headings: ``for i in range(8)`` (no trailing colon), or a default."""
    return label.strip().rstrip(":").rstrip() or "parallel loop"


def name_area(label: str, width: int = NAME_WIDTH) -> str:
    """The loop's name padded or cut (with an ellipsis) to exactly ``width`` characters."""
    name = loop_name(label)
    return name.ljust(width) if len(name) <= width else name[: width - 1] + "…"


def text_bar(fraction: float, cells: int = BAR_CELLS) -> str:
    """``█████▌    ``: ``fraction`` of ``cells`` filled, in eighths."""
    eighths = int(max(0.0, min(1.0, fraction)) * cells * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (_BLOCKS[part] if full < cells else "")
    return bar.ljust(cells)


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
    cached: int = 0  # --cache: of ``done``, replayed from disk
    busy: int = 0
    finished_at: float | None = None
    _ema: float = field(default=0.0, repr=False)  # biased moving average of the rate
    _ema_samples: int = field(default=0, repr=False)
    _last_count: int = field(default=0, repr=False)  # completions at the last change
    _last_change: float | None = field(default=None, repr=False)  # when they changed

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()
        self._last_change = self.started

    @classmethod
    def for_record(cls, record: RunRecord, clock: Clock = time.monotonic) -> Progress:
        """A fresh progress for ``record`` (total and workers taken from it)."""
        return cls(total=record.total, n_workers=record.n_workers, clock=clock)

    def observe(self, record: RunRecord, busy: int) -> None:
        """Take the record's counts of committed iterations and feed the rate average."""
        self.done, self.failed = record.done, record.failed
        self.cached = record.from_cache
        self.busy = busy
        self._sample(self.clock())

    def _sample(self, now: float) -> None:
        """One rate sample per change of the count: completions since the last change / time."""
        count, since = self.completed, now - self._last_change
        if count > self._last_count and since > 0:
            rate = (count - self._last_count) / since
            self._ema = SMOOTHING * rate + (1 - SMOOTHING) * self._ema
            self._ema_samples += 1
            self._last_count, self._last_change = count, now

    def recount(self, record: RunRecord) -> None:
        """Take the final counts of ``record``."""
        self.done, self.failed = record.done, record.failed
        self.cached = record.from_cache

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
    def mean_rate(self) -> float | None:
        """Completed iterations per second over the whole run, or None before the first one."""
        if not self.completed or self.elapsed <= 0:
            return None
        return self.completed / self.elapsed

    @property
    def rate(self) -> float | None:
        """The smoothed rate while running (tqdm's EMA, bias-corrected); the mean once finished."""
        if self.finished_at is not None or not self._ema_samples:
            return self.mean_rate
        return self._ema / (1 - (1 - SMOOTHING) ** self._ema_samples)

    @property
    def remaining(self) -> int | None:
        """Iterations still to end, or None without a total."""
        return None if self.total is None else max(0, self.total - self.completed)

    @property
    def eta(self) -> float | None:
        """Estimated seconds to the end; None if unknown.

        At each completion: the remaining iterations at the smoothed rate. Between
        completions it counts down, but not below the estimate for one iteration
        fewer, so it never rises while nothing happens (the mean rate would make
        it climb) and does not reach zero while work is left.
        """
        remaining = self.remaining
        if remaining == 0:
            return 0.0
        rate = self.rate
        if remaining is None or not rate:
            return None
        if self.finished_at is not None:
            return remaining / rate
        at_change = remaining / rate
        since = max(0.0, self.clock() - self._last_change)
        return max(at_change - since, (remaining - 1) / rate)

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

    def percent_text(self) -> str:
        """`` 45%`` (4 characters), or empty without a total."""
        fraction = self.fraction
        return "" if fraction is None else f"{int(fraction * 100):>3d}%"

    def bracket_text(self, outcome: str | None = None) -> str:
        """``[00:02<00:03, 4.10 it/s, 2/2 busy, 1 failed]``; finished: no ETA or busy workers."""
        finished = self.finished_at is not None
        clock = format_interval(self.elapsed)
        if not finished and self.total is not None:
            clock += f"<{format_interval(self.eta)}"
        parts = [clock, format_rate(self.rate)]
        if not finished:
            parts.append(f"{self.busy}/{self.n_workers} busy")
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.cached:
            parts.append(f"{self.cached} from cache")
        return f"[{', '.join(parts)}]"

    def line(self, label: str, outcome: str | None = None) -> str:
        """The whole tqdm-like line; ``outcome`` (``success``...) is appended once finished."""
        head = name_area(label)
        if self.total is None:
            body = f"{head} {self.count_text()} {self.bracket_text()}"
        else:
            body = (
                f"{head} {self.percent_text()}|{text_bar(self.fraction or 0.0)}| "
                f"{self.count_text()} {self.bracket_text()}"
            )
        return f"{body} {outcome}" if outcome else body

    def describe(self) -> str:
        """The status without the name and bar: ``9/20 [00:02<00:03, 4.10 it/s, 2/2 busy]``."""
        return f"{self.count_text()} {self.bracket_text()}"


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
