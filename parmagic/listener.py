"""What the engine tells whoever displays a run.

The engine calls these from the kernel's main thread: ``on_start`` once,
``on_progress`` after every commit and at least every 0.1 s while it waits
(the listener throttles what it draws), ``on_output`` with each iteration's
captured output in iteration order, and ``on_finish`` once, on success and
failure alike.
"""

from __future__ import annotations

import sys
from typing import Protocol

from .record import RunRecord


class RunListener(Protocol):
    """Receives a run's life cycle; see the module docstring for the call order."""

    def on_start(self, record: RunRecord) -> None:
        """The run is about to submit its first task."""

    def on_progress(self, record: RunRecord, busy: int) -> None:
        """Something changed; ``busy`` is the number of workers holding a task."""

    def on_output(self, index: int, stream: str, text: str) -> None:
        """Iteration ``index`` is committed and wrote ``text`` to ``stream`` ("stdout"/"stderr")."""

    def on_finish(self, record: RunRecord) -> None:
        """The run ended; ``record.outcome`` says how."""


class PlainListener:
    """Shows no progress; writes each iteration's output to ``sys.stdout``."""

    def on_start(self, record: RunRecord) -> None:
        """Nothing to show at the start."""

    def on_progress(self, record: RunRecord, busy: int) -> None:
        """Nothing to show while it runs."""

    def on_output(self, index: int, stream: str, text: str) -> None:
        """Write the committed iteration's output where the serial loop would have."""
        out = sys.stderr if stream == "stderr" else sys.stdout
        out.write(text)
        out.flush()

    def on_finish(self, record: RunRecord) -> None:
        """Nothing to show at the end."""
