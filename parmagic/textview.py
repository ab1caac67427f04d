"""Progress as text, for terminal IPython and plain Python (no widgets anywhere).

On a terminal (stderr is a tty) the progress is one line, redrawn in place
with ``\\r`` as tqdm does, at most ~10 times a second, and left as ONE final
line when the run ends. On a stream that is not a terminal (a script's stderr
sent to a file) nothing is redrawn: only the final line is written. Iteration
output goes to stdout/stderr in iteration order exactly as the serial loop
would have written it (the live line is wiped first, and redrawn after it);
the summary follows the final line (by default as text on stderr, so stdout
holds only what the loop itself printed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from .progress import MAX_RENDERS_PER_SECOND, Clock, Progress, Throttle
from .record import RunRecord
from .summary import Summary, is_compact

#: Seconds between two redraws of the live line, at least.
TEXT_INTERVAL = 1.0 / MAX_RENDERS_PER_SECOND


def write_to_stderr(obj: Any) -> None:
    """Write ``obj``'s text form as a block on stderr."""
    sys.stderr.write(f"{obj}\n")
    sys.stderr.flush()


def _isatty(stream: TextIO) -> bool:
    """True for a terminal; streams without ``isatty`` (or a closed one) are not."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class TextListener:
    """A ``RunListener`` writing a text progress line and a text summary.

    ``live`` says whether to redraw the line in place (default: when the
    progress stream is a terminal); ``summary`` False shows no summary.
    """

    def __init__(
        self,
        label: str = "",
        clock: Clock = time.monotonic,
        show: Callable[[Any], None] = write_to_stderr,
        interval: float = TEXT_INTERVAL,
        progress_stream: TextIO | None = None,
        live: bool | None = None,
        summary: bool = True,
    ) -> None:
        """``show`` presents the final :class:`Summary`; lines go to ``progress_stream`` (stderr)."""
        self.label = label
        self.clock = clock
        self.show = show
        self.interval = interval
        self.progress_stream = progress_stream
        self.live = live
        self.summary = summary
        self.progress: Progress | None = None
        self.throttle = Throttle(interval)
        self._line_open = False  # the loop's last output did not end its line
        self._drawn = 0  # width of the live line on screen now (0: none)
        self._name = label

    def _out(self) -> TextIO:
        """The progress stream (looked up late: tests and IPython swap sys.stderr)."""
        return self.progress_stream or sys.stderr

    def _stream(self, name: str) -> TextIO:
        """The current sys stream by name."""
        return sys.stderr if name == "stderr" else sys.stdout

    def _draw(self, text: str) -> None:
        """Redraw the live line in place (padded over a longer previous one)."""
        out = self._out()
        out.write("\r" + text.ljust(self._drawn))
        out.flush()
        self._drawn = len(text)

    def _wipe(self) -> None:
        """Clear the live line, so that output starts at the left edge of a clean line."""
        if self._drawn:
            out = self._out()
            out.write("\r" + " " * self._drawn + "\r")
            out.flush()
            self._drawn = 0

    def on_start(self, record: RunRecord) -> None:
        """Start counting; the first redraw comes after one interval."""
        self.progress = Progress.for_record(record, clock=self.clock)
        self.throttle = Throttle(self.interval, last=self.progress.started)
        self._name = self.label or record.label
        if self.live is None:
            self.live = _isatty(self._out())

    def on_progress(self, record: RunRecord, busy: int) -> None:
        """Redraw the live line, at most once per interval; nothing on a non-terminal."""
        if not self.live or self.progress is None or self._line_open:
            return
        if self.throttle.should_render(self.clock()):
            self.progress.observe(record, busy)
            self._draw(self.progress.line(self._name))

    def on_output(self, index: int, stream: str, text: str) -> None:
        """Write the iteration's output where the serial loop would have (the live line wiped)."""
        if text and not self._line_open:
            self._wipe()
        out = self._stream(stream)
        out.write(text)
        out.flush()
        if text:
            self._line_open = not text.endswith("\n")

    def on_finish(self, record: RunRecord) -> None:
        """The one final line, then the summary."""
        if self.progress is None:
            return
        self.progress.finish(record)
        out = self._out()
        if self._line_open:  # end the loop's unfinished line on our stream; stdout stays as is
            out.write("\n")
            self._line_open = False
        final = self.progress.line(self._name, record.outcome)
        if self._drawn:
            self._draw(final)
            out.write("\n")
        else:
            out.write(final + "\n")
        out.flush()
        self._drawn = 0
        if self.summary:
            self.show(Summary(record, compact=is_compact(record)))
