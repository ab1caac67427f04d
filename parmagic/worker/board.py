"""The status board: a small shared-memory table, one slot per batch in flight.

The worker holding a batch writes into its slot its pid, the batch's first
iteration, the iteration it runs and since when; the kernel reads the table
(timeouts of stuck workers, which iteration a dead worker held, interrupts).
For process workers the table lives in scratch memory (:mod:`.scratch`: an
anonymous memfd the workers open through ``/proc``); for threads in the
kernel's own memory. Writes are single stores with a check word, so the
kernel never reads a torn entry as valid.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
import time
import uuid
from typing import Any, NamedTuple

from .scratch import Scratch, open_scratch

#: Slot phases, in the order a batch goes through them. RUNNING names the exact
#: iteration; BATCH only says "somewhere in this batch" (no per-iteration write, for speed).
IDLE, LOADING, RUNNING, BATCH, FINISHED = 0, 1, 2, 3, 4
WORKING = (LOADING, RUNNING, BATCH)

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


class Board:
    """The table of batches in flight (kernel side): slots handed out, read back, closed."""

    def __init__(self, n_slots: int, shared: bool):
        self.key = uuid.uuid4().hex
        self.n_slots = n_slots
        size = _HEADER_SIZE + n_slots * _SLOT_SIZE
        self._scratch: Scratch | None = None
        self.path = ""
        if shared:
            self._scratch = open_scratch("board", self.key, size)
            self.path = self._scratch.path
            self._mm = mmap.mmap(self._scratch.fd, size)
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
        return [e for _, e in self.held() if e is not None and e.phase in WORKING]

    def cancel(self) -> None:
        """Batches that have not started yet return at once, doing nothing."""
        _HEADER.pack_into(self._mm, 0, _MAGIC, 1)

    def close(self) -> None:
        """Cancel what is left and free the table (workers that mapped it keep their view)."""
        if self._mm.closed:
            return
        self.cancel()
        self._mm.close()
        if self._scratch is not None:
            self._scratch.close()
