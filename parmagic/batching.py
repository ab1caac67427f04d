"""Batch sizing: how many iterations go into each task.

One iteration per task until an iteration's cost is known, then enough to make a
task last about ``TARGET_BATCH_SECONDS``: long enough to hide per-task overhead,
short enough for live progress and an even finish (joblib's auto-batching aims
at 0.2-2 s; a notebook wants its bar to move sooner).
"""

from __future__ import annotations

from dataclasses import dataclass

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
        #: seconds the kernel takes to commit one iteration (effects slow to apply)
        self.commit_per_item = 0.0

    def observe_commit(self, count: int, seconds: float) -> None:
        """Learn the kernel's cost of committing an iteration: a batch's commit holds the stop
        button until it ends, so batches stay short to commit too."""
        if count:
            per = seconds / count
            self.commit_per_item = max(per, 0.5 * (self.commit_per_item + per))

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
        size = int(TARGET_BATCH_SECONDS / max(self.per_item, self.commit_per_item, 1e-7))
        if self.total is not None:
            size = min(size, -(-self.total // (self.n_workers * MIN_BATCHES_PER_WORKER)))
        return max(1, size)


#: Kernel-side cost of one iteration on workers beyond its compute: pickling its item,
#: receiving and unpickling its results (measured on loky, 100,000 trivial iterations).
PER_ITEM_SECONDS = 2e-6
#: Cost of one batch round trip to a warm worker (submit, result, commit bookkeeping).
PER_BATCH_SECONDS = 3e-4
#: Move the rest to the kernel only when that saves at least this much: a short loop stays
#: on the workers (where a crash or a stuck C call cannot take the kernel down) for a
#: saving nobody would notice.
MIN_SAVING_SECONDS = 0.01
#: An iteration this slow gains from workers whatever warm-up it paid: decide at once.
EARLY_DECISION_SECONDS = 1e-3


#: Auto-serial's probe: a long loop sends each worker a batch of this many iterations
#: (the first pays the warm-up; the others show the warm cost in one round trip)
PROBE_ITEMS = 2
#: ... when it has at least this many iterations a worker (else one each: a short loop of
#: heavy iterations keeps every worker busy)
PROBE_PAIRS_FROM = 16


def probe_size(total: int | None, n_workers: int) -> int:
    """Iterations in each batch of auto-serial's probe wave."""
    return PROBE_ITEMS if total is not None and total >= PROBE_PAIRS_FROM * n_workers else 1


def workers_seconds(
    remaining: int | None, cost: float, n_workers: int, commit_per_item: float = 0.0
) -> float:
    """Seconds ``remaining`` iterations of ``cost`` seconds take on ``n_workers`` workers:
    their compute (or the kernel's commits of them, where those take longer), per-item and
    per-batch overhead, and the end's imbalance (None: per iteration)."""
    n = max(1, n_workers)
    r = remaining if remaining is not None else 1
    batch = max(1.0, TARGET_BATCH_SECONDS / max(cost, 1e-7))
    if remaining is not None:
        batch = max(1.0, min(batch, remaining / (n * MIN_BATCHES_PER_WORKER)))
    batches = max(1.0, r / batch)
    # commits run in the kernel, one after the other, while the workers compute
    workers = max(r * cost / n, r * commit_per_item)
    workers += r * PER_ITEM_SECONDS + batches * PER_BATCH_SECONDS / n
    if remaining is not None:
        workers += batch * cost / 2  # the end: one worker finishes its last batch alone
    return workers


@dataclass
class SeenLoop:
    """What a loop's last run showed auto-serial (kept per loop body and line, backend and
    ``-n``)."""

    plain_cost: float  # seconds per iteration of the plain loop in the kernel
    worker_cost: float  # seconds per iteration on a worker
    commit_per_item: float  # seconds the kernel took to apply an iteration's results
    startup: float  # seconds before the first batch went out (the payload sent)
    drew: bool  # an iteration drew random numbers


def starts_in_kernel(seen: SeenLoop | None, total: int | None, n_workers: int) -> bool:
    """A loop whose last run showed it cheaper in the kernel, start-up included, starts there."""
    if seen is None or seen.drew or not total:
        return False
    kernel = total * seen.plain_cost
    workers = seen.startup + workers_seconds(
        total, seen.worker_cost, n_workers, seen.commit_per_item
    )
    return kernel + MIN_SAVING_SECONDS <= workers


def workers_gain(per_iteration: float, remaining: int, seen: SeenLoop, n_workers: int) -> bool:
    """The kernel's iterations now cost ``per_iteration``: would workers save time on the rest?"""
    cost = max(per_iteration, seen.worker_cost)
    workers = seen.startup + workers_seconds(remaining, cost, n_workers, seen.commit_per_item)
    return workers + MIN_SAVING_SECONDS < remaining * per_iteration


class AutoSerial:
    """Judges from the first batches whether a loop gains from workers (``auto_serial``).

    The first wave (``probe`` batches, one a worker, of ``probe_size(total, workers)``
    iterations) runs on the workers. From their costs (a worker's first iteration only when it
    has no other: it pays for warm-up) it compares the rest of the loop run in the
    kernel (``remaining x cost``, less the share that was parmagic's own work, such as
    comparing loop items before and after) with the rest run on workers (``remaining x cost /
    workers``, or the kernel's commits of them where those take longer, plus per-item
    and per-batch overhead plus the end's imbalance), and
    decides once: ``switch`` is True when the kernel saves at least ``MIN_SAVING_SECONDS``
    (a loop without ``len()`` stays on the workers). A loop shown to
    gain is decided at once, without waiting for the whole wave.
    """

    def __init__(self, total: int | None, n_workers: int, probe: int):
        self.total = total
        self.n_workers = max(1, n_workers)
        self.probe = probe
        self.costs: dict[int, list[float]] = {}  # worker pid -> seconds per iteration
        #: seconds the kernel took to commit an iteration (items written back, effects)
        self.commit_per_item = 0.0  # the mean over the batches seen
        self.commits = 0
        #: seconds the workers' iterations took, and parmagic's own share of them (comparing
        #: items before and after): the kernel's plain loop pays only the rest
        self.spent = 0.0
        self.overhead = 0.0
        self.decided = False
        self.switch = False
        self.note = ""

    def observe(self, result: BatchResult, commit_seconds: float = 0.0) -> None:
        """Learn the per-iteration cost from a committed batch (and what applying its
        iterations in the kernel took)."""
        if result.ran:
            per = commit_seconds / result.ran
            seen = self.commits
            self.commit_per_item = (self.commit_per_item * seen + per) / (seen + 1)
            self.commits += 1
        marks = result.marks
        if not marks:
            return
        self.spent += max(0.0, result.end - marks[0])
        self.overhead += result.overhead
        costs = self.costs.setdefault(result.pid, [])
        if len(marks) >= 2 and not costs:
            # a worker's first batch: its first iteration paid the warm-up, the others not
            costs.append(max(0.0, marks[1] - marks[0]))
            costs.append(max(0.0, result.end - marks[1]) / (len(marks) - 1))
        else:
            costs.append(max(0.0, result.end - marks[0]) / len(marks))

    def cost(self) -> float | None:
        """Seconds per iteration, warm-up left out where a worker ran more than one batch."""
        warm = [c for costs in self.costs.values() for c in costs[1:]]
        sample = warm or [c for costs in self.costs.values() for c in costs]
        return sum(sample) / len(sample) if sample else None

    def estimate(self, remaining: int | None) -> tuple[float, float] | None:
        """(kernel seconds, workers seconds) for ``remaining`` iterations (None: per iteration)."""
        c = self.cost()
        if c is None:
            return None
        workers = workers_seconds(remaining, c, self.n_workers, self.commit_per_item)
        return (remaining if remaining is not None else 1) * self.plain_cost(), workers

    def plain_cost(self) -> float:
        """Seconds per iteration of the plain loop in the kernel (the workers' cost less
        parmagic's own share of it)."""
        c = self.cost() or 0.0
        return c * (1.0 - min(1.0, self.overhead / self.spent) if self.spent > 0 else 1.0)

    def judge(self, committed_batches: int, remaining: int | None, wave_done: bool) -> None:
        """Decide once, after a commit: now if workers clearly gain, else when the wave is in."""
        if self.decided:
            return
        if remaining == 0 or remaining is None:
            # nothing left to move; or no len(): the saving cannot be bounded, so the
            # loop stays where a crash cannot reach the kernel
            self.decided = True
            return
        found = self.estimate(remaining)
        if found is None:
            return
        kernel, workers = found
        # one batch is too few to decide on (a first iteration's warm-up, a worker preempted
        # once on a busy machine), unless its iterations are clearly heavy
        early = (
            kernel + MIN_SAVING_SECONDS > workers and (self.cost() or 0.0) >= EARLY_DECISION_SECONDS
        )
        if early or wave_done or committed_batches >= self.probe:
            self.decided = True
            self.switch = kernel + MIN_SAVING_SECONDS <= workers
            if self.switch:
                what = f"{remaining} remaining iterations"
                self.note = (
                    f"{self.cost() * 1e6:.1f} us per iteration: about {kernel * 1e3:.2f} ms in the "
                    f"kernel vs {workers * 1e3:.2f} ms on {self.n_workers} workers ({what})"
                )
