"""The kernel's eye on a run's workers: who runs which iteration, since when, and what
to do when one hangs, dies or must stop.

* :class:`Watchdog`: a kernel thread for ``--timeout``. The worker's own SIGALRM
  stops Python code and ``time.sleep`` at the limit; an iteration still running
  ``GRACE_SECONDS`` later is stuck in C, and its worker alone is killed (threads
  get an asynchronous exception instead).
* :class:`Supervisor`: what the engine calls. It submits each batch with its slot
  on the status board (:mod:`parmagic.worker.board`) and settles each finished
  future. A batch lost with a dead worker fails only the iteration that worker
  held (``WorkerDiedError``, or ``IterationTimeoutError`` when the watchdog killed
  it); everything else the broken pool lost is handed back for resubmission
  (effects are applied only at commit, so a rerun changes nothing).

A dead worker breaks a process pool as a whole: the pool then kills the other
workers and fails every pending future with one :class:`~.backends.base.WorkersLost`
that names the workers that died on their own.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future
from dataclasses import dataclass
from typing import Any

from .backends.base import Backend, WorkersLost, WorkerStopped
from .errors import IterationTimeoutError, UnsendableValueError, WorkerDiedError, _short_repr
from .worker.batch import raise_in_thread
from .worker.board import BATCH, LOADING, RUNNING, WORKING, Board, BoardSlot, Entry
from .worker.protocol import BatchResult

#: After --timeout, how long an iteration gets to notice SIGALRM before its worker is killed.
GRACE_SECONDS = 1.0
#: How often the watchdog looks at the board.
POLL_SECONDS = 0.1
#: Pool breaks that no dead worker explains before the earliest lost iteration is failed.
MAX_BLIND_BREAKS = 3


class Watchdog:
    """A kernel thread that stops iterations running past ``timeout`` seconds."""

    def __init__(
        self, board: Board, timeout: float, grace: float, stop: Callable[[int, Entry], bool]
    ):
        self.board = board
        self.limit_ns = int((timeout + grace) * 1e9)
        self.stop_worker = stop
        self.killed: dict[int, int] = {}  # worker -> the iteration it was stopped in
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="parmagic-watchdog", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def close(self) -> None:
        """Stop watching (returns once the thread has ended)."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            now = time.monotonic_ns()
            for index, entry in self.board.held():
                if (
                    entry is None
                    or entry.phase != RUNNING
                    or now - entry.started_ns < self.limit_ns
                ):
                    continue
                if self.killed.get(entry.who) == entry.k:
                    continue
                try:
                    if self.board.read(index) == entry and self.stop_worker(index, entry):
                        self.killed[entry.who] = entry.k
                except Exception:  # keep watching the others; this one is retried next round
                    continue


def kill_process(pid: int, allowed: Callable[[], list[int]]) -> bool:
    """SIGKILL ``pid`` if it is still one of ``allowed()`` (a pid is never reused under us)."""
    if pid not in allowed():
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Piece:
    """Part of a settled batch: its result, or None when it must be submitted again."""

    start: int
    chunk: list
    result: BatchResult | None = None


class Supervisor:
    """Submits a run's batches with their board slots; settles them, lost or not."""

    def __init__(self, backend: Backend, timeout: float | None, n_slots: int):
        self.backend = backend
        self.timeout = timeout
        self.processes = backend.shared_board
        threads = backend.kernel_thread_timeouts and bool(timeout)
        self.board = Board(n_slots, shared=self.processes) if self.processes or threads else None
        self.watchdog: Watchdog | None = None
        if self.board is not None and timeout:
            if self.processes:
                self.watchdog = Watchdog(self.board, timeout, GRACE_SECONDS, self._stop_process)
            else:
                self.watchdog = Watchdog(self.board, timeout, 0.0, _time_out_thread)
            self.watchdog.start()
        self._slots: dict[Future, BoardSlot] = {}
        self._breaks: list[BaseException] = []  # pool breaks seen (kept: ids stay unique)
        self._blame: dict[int, int] = {}  # id(break) -> iteration failed for a blind break
        self.blind = 0
        #: batches whose worker died somewhere inside them: rerun tracked, first iteration -> cause
        self._suspects: dict[int, str] = {}
        #: iterations already run once more after a death that may not have been theirs
        self._second_chances: set[int] = set()

    def submit(self, run_batch: Callable, ref: Any, start: int, chunk: list) -> Future:
        """Submit one batch; with a board, the batch gets a slot to report into."""
        if self.board is None:
            return self.backend.submit(run_batch, ref, start, chunk)
        slot = self.board.acquire(start, len(chunk), tracked=start in self._suspects)
        try:
            future = self.backend.submit(run_batch, ref, start, chunk, slot)
        except BaseException:
            self.board.release(slot)
            raise
        self._slots[future] = slot
        return future

    def settle(self, future: Future, start: int, chunk: list) -> list[Piece]:
        """The finished batch as pieces: results to commit, and lost parts to submit again."""
        slot = self._slots.pop(future, None)
        try:
            exc = future.exception()
            if exc is None:
                self._cleared(start, chunk)
                return [Piece(start, chunk, future.result())]
            if isinstance(exc, BrokenExecutor) and slot is not None:
                return self._recover(exc, start, chunk, slot)
            if self._maybe_a_bystander(exc, start, chunk):
                return [Piece(start + i, [item]) for i, item in enumerate(chunk)]
            if len(chunk) > 1:
                # the batch failed as a whole (its result could not travel back): run its
                # iterations one by one, so that the failure lands on the one that causes it
                return [Piece(start + i, [item]) for i, item in enumerate(chunk)]
            return [Piece(start, chunk, whole_batch_failure(start, chunk, exc))]
        finally:
            if slot is not None:
                self.board.release(slot)

    def _maybe_a_bystander(self, exc: BaseException, start: int, chunk: list) -> bool:
        """A death that may have hit this batch only because it waited on the dying worker:
        the first time, its iterations are run again one by one (the culprit dies again)."""
        if not (isinstance(exc, WorkerDiedError) and self.backend.deaths_hit_bystanders):
            return False
        iterations = range(start, start + len(chunk))
        if any(k in self._second_chances for k in iterations):
            return False
        self._second_chances.update(iterations)
        return True

    def drop(self, future: Future) -> None:
        """A cancelled batch: free its slot (it never ran, or its result is not wanted)."""
        slot = self._slots.pop(future, None)
        if slot is not None:
            self.board.release(slot)

    def _stop_process(self, index: int, entry: Entry) -> bool:
        """Watchdog: stop the worker stuck in the slot's iteration, sparing the others if we can."""
        future = next((f for f, s in list(self._slots.items()) if s.index == index), None)
        if future is not None and self.backend.stops_one_worker:
            try:
                return self.backend.stop_worker(
                    entry.who,
                    future,
                    lambda: self.board.read(index) == entry,
                    WorkerStopped(entry.who, -signal.SIGKILL),
                )
            except Exception:  # could not spare the pool: kill it plainly, the pool is rebuilt
                pass
        return kill_process(entry.who, self.backend.worker_pids)

    def stop_stuck(self, futures: list[Future]) -> bool:
        """Interrupt: stop the workers of batches that ignored SIGINT (stuck in C), one by one,
        sparing the pool; False when that is not possible and the pool must be killed."""
        if self.board is None or not self.backend.stops_one_worker:
            return False
        for future in futures:
            if future.done():
                continue
            slot = self._slots.get(future)
            entry = self.board.read(slot.index) if slot is not None else None
            if entry is None or entry.phase not in WORKING:
                return False  # not started yet, or finishing: nothing to single out
            try:
                same = lambda index=slot.index, entry=entry: self.board.read(index) == entry  # noqa: E731
                if not self.backend.stop_worker(entry.who, future, same, KeyboardInterrupt()):
                    return False
            except Exception:
                return False
        return True

    def interrupt(self) -> None:
        """Stop button: batches not started do nothing; running ones get SIGINT (threads: see abort)."""
        if self.board is None:
            return
        self.board.cancel()
        if self.processes:
            pids = set(self.backend.worker_pids())
            for entry in self.board.busy():
                if entry.who in pids:
                    _signal(entry.who, signal.SIGINT)

    def close(self) -> None:
        """End of the run: stop the watchdog; batches still running are told to stop."""
        if self.watchdog is not None:
            self.watchdog.close()
        if self.board is not None:
            self.interrupt()
            self.board.close()

    # ----------------------------------------------------------------- lost batches

    def _recover(self, exc: BaseException, start: int, chunk: list, slot: BoardSlot) -> list[Piece]:
        deaths = exc.deaths if isinstance(exc, WorkersLost) else {}
        if not any(b is exc for b in self._breaks):
            self._first_sight(exc, deaths)
        entry = self.board.read(slot.index)
        if entry is not None and entry.who in deaths and entry.phase == BATCH:
            # died somewhere in a batch that did not say which iteration: run it again,
            # tracked; a crash that recurs is then pinned to its iteration
            cause = f"worker {entry.who} died ({describe_exit(deaths[entry.who])})"
            self._suspects.setdefault(start, cause)
            return [Piece(start, chunk)]
        if entry is not None and entry.who in deaths and entry.phase in (LOADING, RUNNING):
            k = entry.k if entry.phase == RUNNING else start
            error = self._death_error(entry, deaths[entry.who], k, chunk[k - start])
            return _split(start, chunk, k, failure_result(k, entry, error))
        if self._blame.get(id(exc)) == start:
            error = WorkerDiedError(
                f"the worker pool broke {self.blind} times without a dead worker to blame "
                f"while iteration {start} was pending ({exc})"
            )
            return _split(start, chunk, start, failure_result(start, entry, error))
        return [Piece(start, chunk)]

    def _first_sight(self, exc: BaseException, deaths: dict[int, int | None]) -> None:
        self._breaks.append(exc)
        held = self.board.held()
        if any(e is not None and e.who in deaths and e.phase in WORKING for _, e in held):
            return
        self.blind += 1
        if self.blind >= MAX_BLIND_BREAKS and self.board.batches:
            self._blame[id(exc)] = min(start for start, _ in self.board.batches.values())

    def _cleared(self, start: int, chunk: list) -> None:
        """A suspect batch ran again without a crash: say what happened, fail nothing."""
        cause = self._suspects.pop(start, None)
        if cause is not None:
            print(
                f"parmagic: {cause} while running iterations {start}-{start + len(chunk) - 1}; "
                "they ran again without it",
                file=sys.stderr,
            )

    def _death_error(self, entry: Entry, code: int | None, k: int, item: Any) -> BaseException:
        what = f"iteration {k} (item={_short_repr(item)})"
        if self.watchdog is not None and self.watchdog.killed.get(entry.who) == k:
            return IterationTimeoutError(
                f"{what} ran longer than --timeout {self.timeout:g} s and did not stop "
                f"(stuck in a C call?): its worker {entry.who} was killed"
            )
        doing = "running" if entry.phase == RUNNING else "loading the run's data for"
        return WorkerDiedError(
            f"worker {entry.who} died ({describe_exit(code)}) while {doing} {what}"
        )


def describe_exit(code: int | None) -> str:
    """``-11`` -> ``SIGSEGV``; ``-9`` -> ``SIGKILL: killed from outside, e.g. by the out-of-memory killer``."""
    if code is None:
        return "cause unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"{name}: killed from outside, e.g. by the out-of-memory killer"
        return name
    return f"exit code {code}"


def failure_result(k: int, entry: Entry | None, error: BaseException) -> BatchResult:
    """A one-iteration BatchResult that fails iteration ``k`` with ``error``."""
    seconds = entry.seconds() if entry is not None and entry.phase == RUNNING else 0.0
    now = time.perf_counter()
    result = BatchResult(
        start=k, ran=1, pid=entry.who if entry else 0, marks=[now - seconds], end=now
    )
    result.errors.append((k, error, ""))
    return result


def whole_batch_failure(start: int, chunk: list, exc: BaseException) -> BatchResult:
    """A one-iteration batch that failed as a whole: the iteration fails, with ``exc`` explained
    when what the iteration produced could not be pickled back to the kernel."""
    if "pickle" in str(exc).lower() and len(chunk) == 1:
        error = UnsendableValueError(
            f"iteration {start} (item={_short_repr(chunk[0])}) produced a value that cannot be "
            f"sent back to the kernel ({type(exc).__name__}: {exc}): a value the body appends, "
            "assigns or adds to a kernel object must be picklable. Use --backend threads, or "
            "keep such objects inside the loop body."
        )
        error.__cause__ = exc
        exc = error
    return failure_result(start, None, exc)


def _split(start: int, chunk: list, k: int, failure: Any) -> list[Piece]:
    """Iteration ``k`` fails; the rest of the batch before and after it is submitted again."""
    offset = k - start
    pieces = [Piece(start, chunk[:offset]), Piece(k, chunk[offset : offset + 1], failure)]
    pieces.append(Piece(k + 1, chunk[offset + 1 :]))
    return [p for p in pieces if p.chunk]


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _time_out_thread(index: int, entry: Entry) -> bool:
    """Watchdog on threads: raise IterationTimeoutError in the entry's thread."""
    return raise_in_thread(entry.who, IterationTimeoutError)
