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

    def __repr__(self) -> str:
        """``IterationRecord(#3 failed on pid 4711, 0.10s, ValueError)``: one short line."""
        where = f" on pid {self.worker}" if self.worker is not None else ""
        took = f", {self.duration:.2f}s" if self.duration is not None else ""
        error = f", {type(self.error).__name__}" if self.error is not None else ""
        return f"IterationRecord(#{self.index} {self.status}{where}{took}{error})"


@dataclass
class TaskRecord:
    """One batch of consecutive iterations that ran on one worker (a rectangle of the timeline)."""

    index: int  # first iteration of the batch
    count: int  # iterations that ran (to the end or to their error)
    start: float  # time.time() in the worker when the first iteration started
    marks: list[float]  # the worker's clock as each iteration started (seconds)
    end: float  # the worker's clock when the last one ended
    worker: int
    errors: dict[int, BaseException] = field(default_factory=dict)
    outputs: dict[int, str] = field(default_factory=dict)
    items: dict[int, Any] = field(default_factory=dict)  # items of failed iterations
    cached: bool = False  # replayed from the --cache folder: not run, no time, no worker

    def __repr__(self) -> str:
        """``TaskRecord(#0-#7, 8 iterations on pid 4711, 0.51s, 1 failed)``: one short line."""
        span = f"#{self.index}" + (f"-#{self.index + self.count - 1}" if self.count > 1 else "")
        failed = f", {len(self.errors)} failed" if self.errors else ""
        plural = "s" if self.count != 1 else ""
        return (
            f"TaskRecord({span}, {self.count} iteration{plural} on pid {self.worker}, "
            f"{self.duration:.2f}s{failed})"
        )

    @property
    def duration(self) -> float:
        """Seconds the worker spent on the batch's iterations."""
        return max(0.0, self.end - self.marks[0]) if self.marks else 0.0

    @property
    def durations(self) -> list[float]:
        """Seconds each iteration took (the mean, for a batch timed as a whole)."""
        if len(self.marks) == 1 and self.count > 1:
            return [self.duration / self.count] * self.count
        ends = self.marks[1:] + [self.end]
        return [max(0.0, e - m) for m, e in zip(self.marks, ends, strict=False)]

    @property
    def status(self) -> str:
        """``failed`` if any of its iterations failed, else ``done``."""
        return FAILED if self.errors else DONE

    def iteration_records(self) -> list[IterationRecord]:
        """One record per iteration of the batch."""
        out, t, durations = [], self.start, self.durations
        for offset in range(self.count):
            k = self.index + offset
            d = durations[offset] if offset < len(durations) else 0.0
            err = self.errors.get(k)
            out.append(
                IterationRecord(
                    index=k,
                    status=FAILED if err is not None else DONE,
                    start=t,
                    duration=d,
                    worker=self.worker,
                    output=self.outputs.get(k, ""),
                    error=err,
                    item=self.items.get(k),
                )
            )
            t += d
        return out


@dataclass
class RunRecord:
    """One loop or ``%pmap`` run: its batches, counters, and (on demand) its iterations."""

    label: str
    backend: str
    n_workers: int
    total: int | None  # None when the iterable has no len()
    started: float = field(default_factory=time.time)  # wall clock at the start of the run
    ended: float | None = None
    outcome: str = RUNNING
    tasks: list[TaskRecord] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)  # first iterations of dropped batches
    #: seconds from the start of the run until the first task was submitted (pool start-up,
    #: pickling of captured values)
    startup: float = 0.0
    done: int = 0  # iterations that finished without error
    failed: int = 0  # iterations that raised, timed out or lost their worker
    task_time: float = 0.0  # summed duration of all iterations that ran
    _iterations: list[IterationRecord] | None = field(default=None, repr=False)
    #: auto_serial: the first iteration that ran in the kernel (the loop was too cheap to
    #: gain from workers), and the numbers behind that choice; None / "" when it did not
    ran_in_kernel_from: int | None = None
    auto_serial_note: str = ""
    from_cache: int = 0  # --cache: iterations replayed from disk instead of run (in ``done``)

    @property
    def ran_tasks(self) -> list[TaskRecord]:
        """The batches that ran on a worker (not those replayed from the cache)."""
        return [task for task in self.tasks if not task.cached]

    def __repr__(self) -> str:
        """``RunRecord('for i in range(10):', success, 10/10 done, 2 workers (loky), 1.23s)``."""
        counts = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        failed = f", {self.failed} failed" if self.failed else ""
        failed += f", {self.from_cache} from cache" if self.from_cache else ""
        workers = f"{self.n_workers} worker{'s' if self.n_workers != 1 else ''}"
        return (
            f"RunRecord({self.label!r}, {self.outcome}, {counts} done{failed}, "
            f"{workers} ({self.backend}), {self.wall:.2f}s)"
        )

    def add_task(self, task: TaskRecord) -> None:
        """Count a committed batch."""
        self.tasks.append(task)
        self.failed += len(task.errors)
        self.done += task.count - len(task.errors)
        if task.cached:
            self.from_cache += task.count
        self.task_time += task.duration
        self._iterations = None

    def add_iteration(self, it: IterationRecord) -> None:
        """Count one iteration as a batch of its own (for records built by hand)."""
        start = it.start if it.start is not None else self.started
        task = TaskRecord(
            index=it.index,
            count=1,
            start=start,
            marks=[start],
            end=start + (it.duration or 0.0),
            worker=it.worker or 0,
            outputs={it.index: it.output} if it.output else {},
        )
        if it.status == FAILED:
            task.errors[it.index] = it.error if it.error is not None else RuntimeError("failed")
            task.items[it.index] = it.item
        self.add_task(task)

    @property
    def iterations(self) -> list[IterationRecord]:
        """Every committed iteration in order, then the cancelled ones (built on first use)."""
        if self._iterations is None:
            its = [it for task in self.tasks for it in task.iteration_records()]
            its += [IterationRecord(index=k, status=CANCELLED) for k in self.cancelled]
            self._iterations = its
        return self._iterations

    @property
    def failures(self) -> list[IterationRecord]:
        """The failed iterations, in order."""
        return [
            it
            for task in self.tasks
            if task.errors
            for it in task.iteration_records()
            if it.status == FAILED
        ]

    @property
    def wall(self) -> float:
        """Wall time of the run in seconds (so far, while it runs)."""
        return (self.ended or time.time()) - self.started

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
        return "".join(text for task in self.tasks for _, text in sorted(task.outputs.items()))
