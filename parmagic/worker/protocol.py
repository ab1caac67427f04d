"""What crosses the process boundary: the run's payload, references to it, a batch's result.

A payload (compiled loop body, captured values) is written once per run in one
layout: a header of lengths, the pickle stream, then the out-of-band buffers
(NumPy arrays), each aligned so that workers can memory-map them as they are.
"""

from __future__ import annotations

import array
import mmap
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

#: Prefix of every name the rewriter introduces; never shown to the user.
RESERVED = "__pm_"


@dataclass
class Payload:
    """Everything a worker needs for one run, sent once per run."""

    key: str
    code: bytes  # marshal.dumps of the module code that defines __pm_batch
    filename: str  # the cell's filename, for tracebacks and linecache
    source: str  # the cell's source, so worker tracebacks show its lines
    captured: dict[str, Any]
    collect: bool = False  # --on-error collect: go on after a failing iteration
    timeout: float | None = None  # seconds per iteration
    pickle_locals: bool = True  # locals come back as cloudpickle bytes (results cross processes)
    #: prints are captured per thread (several batches share the process: threads, dask),
    #: rather than by replacing the process's sys.stdout (a process worker runs one batch)
    output_per_thread: bool = False
    #: the thread budget workers apply at each batch start (worker.budget.ThreadBudget);
    #: None for in-kernel backends
    threads: Any = None


class PayloadRef:
    """How a task finds its run's payload; ``load`` runs in the worker."""

    key: str = ""

    def load(self) -> Payload:
        """Return the payload (called at most once per worker per run)."""
        raise NotImplementedError


class InlineRef(PayloadRef):
    """The payload itself: for in-kernel backends and for dask (which caches scattered data)."""

    def __init__(self, payload: Payload):
        self.key = payload.key
        self.payload = payload

    def load(self) -> Payload:
        """Return the payload held inline."""
        return self.payload


class FileRef(PayloadRef):
    """A payload pickled (protocol 5) to a private file; big buffers are memory-mapped, not copied."""

    def __init__(self, key: str, path: str):
        self.key = key
        self.path = path

    def load(self) -> Payload:
        """Map the file and unpickle; NumPy arrays come back as read-only views of the map."""
        with open(self.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mm)
        n_buffers = int.from_bytes(view[:8], "little")
        pos = 8
        spans = []
        for _ in range(n_buffers + 1):
            length = int.from_bytes(view[pos : pos + 8], "little")
            spans.append(length)
            pos += 8
        main_len, buffer_lens = spans[0], spans[1:]
        main = view[pos : pos + main_len]
        pos += main_len
        buffers = []
        for length in buffer_lens:
            pos = aligned(pos, length)
            buffers.append(view[pos : pos + length])
            pos += length
        return pickle.loads(main, buffers=buffers)


def aligned(pos: int, length: int) -> int:
    """Where a buffer of ``length`` bytes starts at or after ``pos``.

    NumPy arrays viewed on a misaligned buffer compute differently (other SIMD
    paths: sums differ in the last bits) and slower, so buffers start on a cache
    line, and big ones on a page.
    """
    step = PAGE if length >= PAGE else CACHE_LINE
    return -(-pos // step) * step


CACHE_LINE, PAGE = 64, 4096


def write_payload(f: Any, payload: Payload, dumps_with_buffers: Any) -> None:
    """Write ``payload`` to the open binary file ``f`` in the layout ``FileRef.load`` reads."""
    main, buffers = dumps_with_buffers(payload)
    raws = [b.raw() for b in buffers]
    header = [len(raws).to_bytes(8, "little"), len(main).to_bytes(8, "little")]
    header += [r.nbytes.to_bytes(8, "little") for r in raws]
    head = b"".join(header)
    f.write(head)
    f.write(main)
    pos = len(head) + len(main)
    for r in raws:
        start = aligned(pos, r.nbytes)
        f.write(b"\0" * (start - pos))
        f.write(r)
        pos = start + r.nbytes


@dataclass
class BatchResult:
    """What one batch sends back; iteration indexes are absolute."""

    start: int
    ran: int  # iterations attempted (ran to the end or failed)
    pid: int
    effects: list[tuple[int, tuple]] = field(default_factory=list)  # (effect id, values), in order
    # (k, stream, text, effects recorded before it)
    outputs: list[tuple[int, str, str, int]] = field(default_factory=list)
    marks: list[float] = field(default_factory=list)  # perf_counter() as each iteration starts
    end: float = 0.0  # perf_counter() when the last iteration ended
    wall0: float = field(default_factory=lambda: time.time() - time.perf_counter())  # perf -> wall
    errors: list[tuple[int, BaseException, str]] = field(default_factory=list)  # (k, exc, tb)
    locals: dict[str, Any] = field(default_factory=dict)  # values, or cloudpickle bytes
    unsent_locals: list[str] = field(default_factory=list)

    def __getstate__(self) -> dict[str, Any]:
        # a big batch's marks travel as one array of doubles: a list of 12,500 floats costs
        # three times as much to pickle and unpickle (measured), on the kernel's result path
        state = self.__dict__.copy()
        if len(self.marks) > 64:
            state["marks"] = array.array("d", self.marks)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        marks = state.get("marks")
        if isinstance(marks, array.array):
            state["marks"] = marks.tolist()
        self.__dict__.update(state)
