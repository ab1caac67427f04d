"""What the engine tells whoever displays a run.

The engine calls these from the kernel's main thread: ``on_start`` once,
``on_progress`` after every commit and at least every 0.1 s while it waits
(the listener throttles what it draws), ``on_output`` with each iteration's
captured output in iteration order, ``on_display`` with each display (rich
output, figures) among that output, and ``on_finish`` once, on success and
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

    def on_display(
        self,
        index: int,
        data: dict,
        metadata: dict,
        transient: dict | None = None,
        update: bool = False,
    ) -> None:
        """Iteration ``index`` is committed and displayed the mimebundle ``data``."""

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

    def on_display(
        self,
        index: int,
        data: dict,
        metadata: dict,
        transient: dict | None = None,
        update: bool = False,
    ) -> None:
        """Publish the bundle as ``display()`` in the cell would; outside IPython print its text."""
        display_functions = sys.modules.get("IPython.core.display_functions")
        shell_class = getattr(
            sys.modules.get("IPython.core.interactiveshell"), "InteractiveShell", None
        )
        if display_functions is None or shell_class is None or not shell_class.initialized():
            if not update and "text/plain" in data:
                print(data["text/plain"])  # what display() does without a shell
            return
        sys.stdout.flush()
        sys.stderr.flush()
        extra: dict = {"transient": transient} if transient else {}
        if update:
            extra["update"] = True
        display_functions.publish_display_data(data=data, metadata=metadata, **extra)

    def on_finish(self, record: RunRecord) -> None:
        """Nothing to show at the end."""
