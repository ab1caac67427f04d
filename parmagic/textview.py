"""Progress as text, for terminal IPython and plain Python (no widgets anywhere).

Progress goes to stderr as an occasional whole line (at most one a second,
none for runs under a second, and one final line); iteration output goes to
stdout/stderr in iteration order exactly as the serial loop would have
written it; the summary is shown at the end (by default as text on stderr, so
stdout holds only what the loop itself printed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .progress import Clock, Progress, Throttle, loop_name
from .record import RunRecord
from .summary import Summary

#: Seconds between two progress lines, at least.
TEXT_INTERVAL = 1.0


def write_to_stderr(obj: Any) -> None:
    """Write ``obj``'s text form as a block on stderr."""
    sys.stderr.write(f"{obj}\n")
    sys.stderr.flush()


class TextListener:
    """A ``RunListener`` writing text progress lines and a text summary."""

    def __init__(
        self,
        label: str = "",
        clock: Clock = time.monotonic,
        show: Callable[[Any], None] = write_to_stderr,
        interval: float = TEXT_INTERVAL,
        progress_stream: TextIO | None = None,
    ) -> None:
        """``show`` presents the final :class:`Summary`; lines go to ``progress_stream`` (stderr)."""
        self.label = label
        self.clock = clock
        self.show = show
        self.interval = interval
        self.progress_stream = progress_stream
        self.progress: Progress | None = None
        self.throttle = Throttle(interval)
        self._line_open = False  # the last output did not end its line
        self._name = label

    def _stream(self, name: str) -> TextIO:
        """The current sys stream by name (looked up late: tests and IPython swap them)."""
        return sys.stderr if name == "stderr" else sys.stdout

    def _write_line(self, text: str) -> None:
        """One whole progress line, never in the middle of an output line."""
        if self._line_open:
            return
        stream = self.progress_stream or sys.stderr
        stream.write(f"[parmagic] {loop_name(self._name)}: {text}\n")
        stream.flush()

    def on_start(self, record: RunRecord) -> None:
        """Start counting; the first line comes after one interval."""
        self.progress = Progress.for_record(record, clock=self.clock)
        self.throttle = Throttle(self.interval, last=self.progress.started)
        self._name = self.label or record.label

    def on_progress(self, record: RunRecord, busy: int) -> None:
        """A progress line, at most one per interval."""
        if self.progress is not None and self.throttle.should_render(self.clock()):
            self.progress.observe(record, busy)
            self._write_line(self.progress.describe())

    def on_output(self, index: int, stream: str, text: str) -> None:
        """Write the iteration's output where the serial loop would have."""
        out = self._stream(stream)
        out.write(text)
        out.flush()
        if text:
            self._line_open = not text.endswith("\n")

    def on_finish(self, record: RunRecord) -> None:
        """The final line, then the summary."""
        if self.progress is None:
            return
        self.progress.finish(record)
        if self._line_open:  # end the loop's unfinished line on our stream; stdout stays as is
            (self.progress_stream or sys.stderr).write("\n")
            self._line_open = False
        self._write_line(f"{self.progress.describe()} · {record.outcome}")
        self.show(Summary(record))
