"""The kernel's eye on a run's workers: who runs which iteration, since when, and what
to do when one hangs, dies or must stop.

* :class:`Board`: a small shared-memory table, one slot per batch in flight. The
  worker holding a batch writes into its slot the pid, the iteration it runs and
  since when; the kernel reads it. For process workers it lives in an anonymous
  memfd that workers open through ``/proc/<kernel pid>/fd/<n>``: no file name
  exists that could outlive the kernel (a named 0600 file is the fallback where
  there is no memfd).
* :class:`Watchdog`: a kernel thread for ``--timeout``. The worker's own SIGALRM
  stops Python code and ``time.sleep`` at the limit; an iteration still running
  ``GRACE_SECONDS`` later is stuck in C, and its worker alone is killed (threads
  get an asynchronous exception instead).
* :class:`Supervisor`: what the engine calls. It submits each batch with its slot
  and settles each finished future. A batch lost with a dead worker fails only the
  iteration that worker held (``WorkerDiedError``, or ``IterationTimeoutError`` when
  the watchdog killed it); everything else the broken pool lost is handed back for
  resubmission (effects are applied only at commit, so a rerun changes nothing).

A dead worker breaks a loky executor as a whole: loky then kills the other
workers, fails every pending future, and ``get_reusable_executor`` builds a new
pool on the next submit. Which worker died on its own, and how, is recorded by
:func:`parmagic.backends.loky.record_deaths` on the exception loky hands to the
futures (``exc.parmagic_deaths``: pid -> exit code).
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import IterationTimeoutError, UnsendableValueError, WorkerDiedError, _short_repr

#: After --timeout, how long an iteration gets to notice SIGALRM before its worker is killed.
GRACE_SECONDS = 1.0
#: How often the watchdog looks at the board.
POLL_SECONDS = 0.1
#: Pool breaks that no dead worker explains before the earliest lost iteration is failed.
MAX_BLIND_BREAKS = 3

#: Slot phases, in the order a batch goes through them. RUNNING names the exact
#: iteration; BATCH only says "somewhere in this batch" (no per-iteration write, for speed).
IDLE, LOADING, RUNNING, BATCH, FINISHED = 0, 1, 2, 3, 4
_WORKING = (LOADING, RUNNING, BATCH)

_MAGIC = 0x7061726D61676963  # "parmagic"
_MASK = (1 << 64) - 1
_HEADER = struct.Struct("<QQ")  # magic, cancelled
#: who, batch start, iteration, started (monotonic ns), phase, check
_SLOT = struct.Struct("<qqqqqQ")
_HEADER_SIZE = 64
_SLOT_SIZE = 64


class Entry(NamedTuple):
    """One slot as the kernel reads it."""

    who: int  # worker pid (thread ident for in-kernel backends)
    start: int  # first iteration of the batch
    k: int  # iteration running (RUNNING) or the batch's first one (LOADING, BATCH)
    started_ns: int  # time.monotonic_ns() when that iteration (or loading, or batch) started
    phase: int

    def seconds(self, now_ns: int | None = None) -> float:
        """How long the iteration has been running."""
        return ((now_ns or time.monotonic_ns()) - self.started_ns) / 1e9


def _check(who: int, start: int, k: int, started: int, phase: int) -> int:
    return (who ^ start ^ k ^ started ^ phase ^ _MAGIC) & _MASK


# --------------------------------------------------------------------------- worker side


class BoardSlot:
    """One batch's slot; travels with the task (four small fields) and is written by the worker.

    ``tracked``: write every iteration's start, not just the batch's (the kernel
    must know the exact iteration: ``--timeout``, or a rerun after a worker died).
    """

    __slots__ = ("key", "path", "index", "tracked", "_mm", "_who")

    def __init__(self, key: str, path: str, index: int, tracked: bool = False, mm: Any = None):
        self.key, self.path, self.index, self.tracked = key, path, index, tracked
        self._mm = mm  # set in the kernel (threads share it); workers map the board lazily
        self._who: int | None = None

    def __getstate__(self) -> tuple:
        return (self.key, self.path, self.index, self.tracked)

    def __setstate__(self, state: tuple) -> None:
        self.key, self.path, self.index, self.tracked = state
        self._mm, self._who = None, None

    def _buffer(self) -> Any:
        if self._mm is None:
            self._mm = _open_board(self.key, self.path)
            self._who = os.getpid()
        elif self._who is None:  # shared in the kernel: threads tell themselves apart by ident
            self._who = threading.get_ident()
        return self._mm

    def cancelled(self) -> bool:
        """True once the kernel gave up on the run: a batch not started yet does nothing."""
        return bool(_HEADER.unpack_from(self._buffer(), 0)[1])

    def write(self, start: int, k: int, phase: int) -> None:
        """Say what this worker does now (one 48-byte store, no system call)."""
        mm = self._buffer()
        now = time.monotonic_ns()
        who = self._who or 0
        _SLOT.pack_into(
            mm,
            _HEADER_SIZE + self.index * _SLOT_SIZE,
            who,
            start,
            k,
            now,
            phase,
            _check(who, start, k, now, phase),
        )


_opened: dict[str, Any] = {}  # board key -> mmap, in a worker process (the current run's only)


def _open_board(key: str, path: str) -> Any:
    mm = _opened.get(key)
    if mm is not None:
        return mm
    for old in list(_opened):
        _opened.pop(old).close()
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
    except (OSError, ValueError):  # the run is over (board gone): write into the void
        mm = mmap.mmap(-1, _HEADER_SIZE + _SLOT_SIZE * 1024)
    _opened[key] = mm
    return mm


# --------------------------------------------------------------------------- kernel side


class Board:
    """The table of batches in flight (kernel side): slots handed out, read back, closed."""

    def __init__(self, n_slots: int, shared: bool):
        self.key = uuid.uuid4().hex
        self.n_slots = n_slots
        size = _HEADER_SIZE + n_slots * _SLOT_SIZE
        self.path, self._fd, self._named = "", -1, False
        if shared:
            self._fd, self.path, self._named = _shared_file(size, self.key)
            self._mm = mmap.mmap(self._fd, size)
        else:
            self._mm = mmap.mmap(-1, size)
        _HEADER.pack_into(self._mm, 0, _MAGIC, 0)
        self._shared = shared
        self._free = list(range(n_slots - 1, -1, -1))
        self.batches: dict[int, tuple[int, int]] = {}  # slot -> (first iteration, length)

    def acquire(self, start: int, length: int, tracked: bool = False) -> BoardSlot:
        """A cleared slot for the batch of ``length`` iterations from ``start``."""
        index = self._free.pop()
        _SLOT.pack_into(self._mm, _HEADER_SIZE + index * _SLOT_SIZE, 0, 0, 0, 0, IDLE, 0)
        self.batches[index] = (start, length)
        return BoardSlot(self.key, self.path, index, tracked, None if self._shared else self._mm)

    def release(self, slot: BoardSlot) -> None:
        """The slot's batch is settled: the slot may serve another."""
        if self.batches.pop(slot.index, None) is not None:
            self._free.append(slot.index)

    def read(self, index: int) -> Entry | None:
        """The slot's entry; None while nobody wrote it (retried over a torn write)."""
        for _ in range(100):
            who, start, k, started, phase, check = _SLOT.unpack_from(
                self._mm, _HEADER_SIZE + index * _SLOT_SIZE
            )
            if phase == IDLE:
                return None
            if check == _check(who, start, k, started, phase):
                return Entry(who, start, k, started, phase)
        return None

    def held(self) -> list[tuple[int, Entry | None]]:
        """(slot, entry) of every batch in flight."""
        return [(index, self.read(index)) for index in list(self.batches)]

    def busy(self) -> list[Entry]:
        """Entries of the workers in the middle of a batch (loading or running an iteration)."""
        return [e for _, e in self.held() if e is not None and e.phase in _WORKING]

    def cancel(self) -> None:
        """Batches that have not started yet return at once, doing nothing."""
        _HEADER.pack_into(self._mm, 0, _MAGIC, 1)

    def close(self) -> None:
        """Cancel what is left and free the table (workers that mapped it keep their view)."""
        if self._mm.closed:
            return
        self.cancel()
        self._mm.close()
        if self._fd >= 0:
            os.close(self._fd)
        if self._named:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _shared_file(size: int, key: str) -> tuple[int, str, bool]:
    """(fd, path workers open, whether the path is a real name to remove)."""
    proc = f"/proc/{os.getpid()}/fd"
    if hasattr(os, "memfd_create") and os.path.isdir(proc):
        fd = os.memfd_create("parmagic-board")
        os.ftruncate(fd, size)
        return fd, f"{proc}/{fd}", False
    from .backends.loky import payload_dir

    path = os.path.join(payload_dir(), f"parmagic-{os.getpid()}-{key}.board")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, size)
    return fd, path, True


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


class WorkerStopped(Exception):
    """The future of a batch whose worker the watchdog stopped without breaking the pool."""

    def __init__(self, pid: int):
        super().__init__(f"worker {pid} was stopped")
        self.parmagic_deaths = {pid: -signal.SIGKILL}


def kill_process(pid: int, allowed: Callable[[], list[int]]) -> bool:
    """SIGKILL ``pid`` if it is still one of ``allowed()`` (a pid is never reused under us)."""
    if pid not in allowed():
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def raise_in_thread(index: int, entry: Entry) -> bool:
    """Raise IterationTimeoutError in the entry's thread at its next bytecode."""
    import ctypes

    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(entry.who), ctypes.py_object(IterationTimeoutError)
    )
    return n == 1


# --------------------------------------------------------------------------- the engine's side


@dataclass
class Piece:
    """Part of a settled batch: its result, or None when it must be submitted again."""

    start: int
    chunk: list
    result: Any = None  # _worker.BatchResult


class Supervisor:
    """Submits a run's batches with their board slots; settles them, lost or not."""

    def __init__(self, backend: Any, timeout: float | None, n_slots: int):
        self.backend = backend
        self.timeout = timeout
        self.processes = bool(getattr(backend, "status_board", False))
        threads = backend.name == "threads" and bool(timeout)
        self.board = Board(n_slots, shared=self.processes) if self.processes or threads else None
        self.watchdog: Watchdog | None = None
        if self.board is not None and timeout:
            if self.processes:
                self.watchdog = Watchdog(self.board, timeout, GRACE_SECONDS, self._stop_process)
            else:
                self.watchdog = Watchdog(self.board, timeout, 0.0, raise_in_thread)
            self.watchdog.start()
        self._slots: dict[Future, BoardSlot] = {}
        self._breaks: list[BaseException] = []  # pool breaks seen (kept: ids stay unique)
        self._blame: dict[int, int] = {}  # id(break) -> iteration failed for a blind break
        self.blind = 0
        #: batches whose worker died somewhere inside them: rerun tracked, first iteration -> cause
        self._suspects: dict[int, str] = {}

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
            if isinstance(exc, BrokenExecutor | WorkerStopped) and slot is not None:
                return self._recover(exc, start, chunk, slot)
            if len(chunk) > 1:
                # the batch failed as a whole (its result could not travel back): run its
                # iterations one by one, so that the failure lands on the one that causes it
                return [Piece(start + i, [item]) for i, item in enumerate(chunk)]
            return [Piece(start, chunk, whole_batch_failure(start, chunk, exc))]
        finally:
            if slot is not None:
                self.board.release(slot)

    def _stop_process(self, index: int, entry: Entry) -> bool:
        """Watchdog: stop the worker stuck in the slot's iteration, sparing the others if we can."""
        future = next((f for f, s in list(self._slots.items()) if s.index == index), None)
        stop = getattr(self.backend, "stop_worker", None)
        if future is not None and stop is not None:
            try:
                return stop(
                    entry.who,
                    future,
                    lambda: self.board.read(index) == entry,
                    WorkerStopped(entry.who),
                )
            except Exception:  # could not spare the pool: kill it plainly, the pool is rebuilt
                pass
        return kill_process(entry.who, self.backend.worker_pids)

    def stop_stuck(self, futures: list[Future]) -> bool:
        """Interrupt: stop the workers of batches that ignored SIGINT (stuck in C), one by one,
        sparing the pool; False when that is not possible and the pool must be killed."""
        stop = getattr(self.backend, "stop_worker", None)
        if self.board is None or stop is None:
            return False
        for future in futures:
            if future.done():
                continue
            slot = self._slots.get(future)
            entry = self.board.read(slot.index) if slot is not None else None
            if entry is None or entry.phase not in _WORKING:
                return False  # not started yet, or finishing: nothing to single out
            try:
                same = lambda index=slot.index, entry=entry: self.board.read(index) == entry  # noqa: E731
                if not stop(entry.who, future, same, KeyboardInterrupt()):
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
        deaths: dict[int, int | None] = getattr(exc, "parmagic_deaths", None) or {}
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
        if any(e is not None and e.who in deaths and e.phase in _WORKING for _, e in held):
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


def failure_result(k: int, entry: Entry | None, error: BaseException) -> Any:
    """A one-iteration BatchResult that fails iteration ``k`` with ``error``."""
    from ._worker import BatchResult

    seconds = entry.seconds() if entry is not None and entry.phase == RUNNING else 0.0
    now = time.perf_counter()
    result = BatchResult(
        start=k, ran=1, pid=entry.who if entry else 0, marks=[now - seconds], end=now
    )
    result.errors.append((k, error, ""))
    return result


def whole_batch_failure(start: int, chunk: list, exc: BaseException) -> Any:
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
