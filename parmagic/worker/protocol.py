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

from .environment import Environment, apply_environment
from .rich import RichSettings

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
    #: compare items and captured values before and after iterations (process backends:
    #: the worker changes copies, see worker/tracking.py)
    track_changes: bool = False
    effect_sites: int = 0  # effect statements in the body (1: records are bare values)
    lineno: int = 0  # the loop's line in the cell, for errors that name it
    #: the kernel's warning filters, logging levels and inline-figure settings (rich.py);
    #: None: no capture of displays, warnings and log records (in-kernel and dry runs)
    rich: RichSettings | None = None
    #: generators the iterations may draw from: id -> (kind, entropy); see worker/streams.py
    streams: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: the kernel's sys.path, cwd and user module versions (process backends; None in-kernel)
    env: Environment | None = None

    #: the thread budget workers apply at each batch start (worker.budget.ThreadBudget);
    #: None for in-kernel backends
    threads: Any = None
    #: --cache: note each iteration's effect count and locals (BatchResult.splits), so the
    #: kernel can keep every iteration on its own
    split: bool = False
    #: the worker process runs other code's threads too (dask): each batch thread draws
    #: from its own generator behind the ``random`` module's functions (worker/streams.py)
    private_random: bool = False
    #: the batches run in the kernel on its own objects (-n 1, auto-serial's batch path): a
    #: batch never runs twice (its changes to the items are real), see worker/streams.py
    in_kernel: bool = False
    #: generators the loop is known to draw from: reseeded at every iteration from the
    #: first batch on (no batch needs to run again to learn it)
    drawing: frozenset = frozenset()

    def __reduce_ex__(self, protocol: Any) -> Any:
        # unpickling applies the environment first, then unpickles the captured values,
        # which may name functions of the kernel's user modules (see worker/environment.py)
        if self.env is None:
            return super().__reduce_ex__(protocol)
        return (_payload_in_environment, (self.env,), dict(self.__dict__))


def _payload_in_environment(env: Environment) -> Payload:
    apply_environment(env)
    return Payload.__new__(Payload)


class PayloadRef:
    """How a task finds its run's payload; ``load`` runs in the worker."""

    key: str = ""
    #: each thread that runs batches loads its own copy (dask: a worker's threads act as
    #: separate workers); else the threads of a process share one
    per_thread: bool = False

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

    def __init__(self, key: str, path: str, env: Environment | None = None):
        self.key = key
        self.path = path
        self.env = env

    def __reduce__(self) -> Any:
        # a task unpickles its ref before its items: the environment is applied first
        return (_file_ref_in_environment, (self.env, self.key, self.path))

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


def _file_ref_in_environment(env: Environment | None, key: str, path: str) -> FileRef:
    apply_environment(env)
    return FileRef(key, path, env)


def aligned(pos: int, length: int) -> int:
    """Where a buffer of ``length`` bytes starts at or after ``pos``.

    NumPy arrays viewed on a misaligned buffer compute differently (other SIMD
    paths: sums differ in the last bits) and slower, so buffers start on a cache
    line, and big ones on a page.
    """
    step = PAGE if length >= PAGE else CACHE_LINE
    return -(-pos // step) * step


CACHE_LINE, PAGE = 64, 4096


#: Big buffers are written in pieces of this size (one write of 500 MB holds the kernel ~0.3 s).
WRITE_BYTES = 32 << 20


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
        for at in range(0, r.nbytes, WRITE_BYTES):  # in pieces: the stop button lands between
            f.write(r[at : at + WRITE_BYTES])
        pos = start + r.nbytes


@dataclass
class BatchResult:
    """What one batch sends back; iteration indexes are absolute."""

    start: int
    ran: int  # iterations attempted (ran to the end or failed)
    pid: int
    effects: list[tuple[int, tuple]] = field(default_factory=list)  # (effect id, values), in order
    # (k, stream, text, effects recorded before it); for a stream in rich.STREAMS
    # (display, warning, log) the text is that output's payload, a dict
    outputs: list[tuple[int, str, Any, int]] = field(default_factory=list)
    marks: list[float] = field(default_factory=list)  # perf_counter() as each iteration starts
    end: float = 0.0  # perf_counter() when the last iteration ended
    wall0: float = field(default_factory=lambda: time.time() - time.perf_counter())  # perf -> wall
    errors: list[tuple[int, BaseException, str]] = field(default_factory=list)  # (k, exc, tb)
    locals: dict[str, Any] = field(default_factory=dict)  # values, or cloudpickle bytes
    unsent_locals: list[str] = field(default_factory=list)
    item_changes: list[Any] = field(default_factory=list)  # tracking.ItemChange, in order
    refs: bool = False  # some effect value or local is a tracking.ItemRef to resolve
    drew: list[str] = field(default_factory=list)  # generator ids the batch drew from
    #: --cache (Payload.split): (k, effects recorded by the end of iteration k, the body's
    #: locals then) for each iteration but the batch's last (len(effects) and locals)
    splits: list[tuple[int, int, dict]] = field(default_factory=list)
    from_cache: bool = False  # replayed from the --cache folder, not run
    #: seconds between the marks that were parmagic's own work (comparing loop items before
    #: and after): an iteration run plainly in the kernel does not pay them
    overhead: float = 0.0

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
