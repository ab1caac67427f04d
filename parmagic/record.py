"""The run record: what every run leaves behind, whatever happened.

Plain dataclasses with no behaviour beyond small derived numbers, so the
engine fills them, the display reads them, and tests build them by hand.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

#: Iteration statuses, in the order a run can reach them.
PENDING, DONE, FAILED, CANCELLED = "pending", "done", "failed", "cancelled"

#: Run outcomes.
RUNNING, SUCCESS, ERROR, INTERRUPTED = "running", "success", "error", "interrupted"


@dataclass
class IterationRecord:
    """One iteration of a parallel loop: what ran, where, for how long, and what it said."""

    index: int
    status: str = PENDING
    start: float | None = None  # time.time() in the worker
    duration: float | None = None  # seconds
    worker: int | None = None  # pid of the worker process (the kernel's pid for threads/serial)
    output: str = ""  # captured stdout/stderr text, in write order
    error: BaseException | None = None
    item: Any = None  # repr-safe: only kept for failed iterations


@dataclass
class RunRecord:
    """One loop or ``%pmap`` run: its iterations and its timing."""

    label: str
    backend: str
    n_workers: int
    total: int | None  # None when the iterable has no len()
    started: float = field(default_factory=time.time)  # wall clock at the start of the run
    ended: float | None = None
    outcome: str = RUNNING
    iterations: list[IterationRecord] = field(default_factory=list)
    #: seconds from the start of the run until the first task was submitted (pool start-up,
    #: pickling of captured values)
    startup: float = 0.0

    @property
    def wall(self) -> float:
        """Wall time of the run in seconds (so far, while it runs)."""
        return (self.ended or time.time()) - self.started

    @property
    def done(self) -> int:
        """Number of iterations that finished without error."""
        return sum(1 for it in self.iterations if it.status == DONE)

    @property
    def failed(self) -> int:
        """Number of iterations that raised, timed out or lost their worker."""
        return sum(1 for it in self.iterations if it.status == FAILED)

    @property
    def task_time(self) -> float:
        """Summed duration of all iterations that ran."""
        return sum(it.duration or 0.0 for it in self.iterations)

    @property
    def speedup(self) -> float:
        """Summed task time over wall time."""
        return self.task_time / self.wall if self.wall > 0 else 0.0

    @property
    def efficiency(self) -> float:
        """Speedup over the number of workers."""
        return self.speedup / self.n_workers if self.n_workers else 0.0

    @property
    def outputs(self) -> str:
        """All captured output, in iteration order."""
        return "".join(it.output for it in self.iterations)
