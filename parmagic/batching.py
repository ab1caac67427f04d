"""Batch sizing: how many iterations go into each task.

One iteration per task until an iteration's cost is known, then enough to make a
task last about ``TARGET_BATCH_SECONDS``: long enough to hide per-task overhead,
short enough for live progress and an even finish (joblib's auto-batching aims
at 0.2-2 s; a notebook wants its bar to move sooner).
"""

from __future__ import annotations

from .worker.protocol import BatchResult

#: Aim each batch at this many seconds of work: long enough to hide per-task overhead
#: (~0.1-0.3 ms on loky), short enough for live progress and an even finish.
TARGET_BATCH_SECONDS = 0.05
#: Each worker gets at least this many batches of a sized iterable, so the end is even.
MIN_BATCHES_PER_WORKER = 4


class Batcher:
    """Chooses batch sizes: 1 until an iteration's cost is known, then ~TARGET_BATCH_SECONDS."""

    def __init__(self, total: int | None, n_workers: int, chunksize: int | None):
        self.total = total
        self.n_workers = max(1, n_workers)
        self.fixed = chunksize
        self.per_item: float | None = None

    def observe(self, result: BatchResult) -> None:
        """Learn the cost of an iteration from a finished batch."""
        if result.marks:
            mean = max(0.0, result.end - result.marks[0]) / len(result.marks)
            self.per_item = mean if self.per_item is None else 0.5 * (self.per_item + mean)

    def next_size(self) -> int:
        """Size of the next batch."""
        if self.fixed:
            return self.fixed
        if self.per_item is None:
            return 1
        size = int(TARGET_BATCH_SECONDS / max(self.per_item, 1e-7))
        if self.total is not None:
            size = min(size, -(-self.total // (self.n_workers * MIN_BATCHES_PER_WORKER)))
        return max(1, size)
