"""Auto-serial's rest of a loop, run in the kernel as the plain cell runs it.

When a loop's first batches show it too cheap to gain from workers
(:class:`parmagic.batching.AutoSerial`), the engine runs its remaining iterations here:
the loop's own statements (:func:`parmagic.rewrite.build_kernel_loop`) over chunks of
the remaining items, in the kernel's namespace. Effects, output, warnings and errors
are then the plain cell's, and an iteration costs what the plain loop's does (the batch
machinery costs about a microsecond an iteration; a trivial iteration, a tenth of that).

Chunks last about ``CHUNK_SECONDS``, so that progress moves and the stop button lands
between iterations (:func:`parmagic.interrupts.interrupts_deferred`).
"""

from __future__ import annotations

import contextlib
import operator
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .interrupts import interrupts_deferred
from .rewrite import REST, LoopStep

#: Seconds a chunk of the rest should take (progress and the stop button land between chunks).
CHUNK_SECONDS = 0.05
#: Items in a chunk at most (each chunk is a list of its items).
MAX_CHUNK = 1_000_000
#: The stop button: how long an iteration that runs on may keep it waiting.
STOP_GRACE_SECONDS = 1.0

#: Iterators whose ``next()`` cannot raise: their items need no guard.
_PLAIN_ITERATORS = (type(iter([])), type(iter(())), type(iter(range(0))))


def chunk_size(seconds_per_iteration: float | None) -> int:
    """Items in a chunk of about ``CHUNK_SECONDS``, given the measured cost of one."""
    cost = seconds_per_iteration or 1e-3
    return max(1, min(MAX_CHUNK, int(CHUNK_SECONDS / max(cost, 1e-8))))


def guarded_items(source: Any) -> Iterator:
    """The items left in ``source`` (the engine's ``_Source``); an error of the iterable
    itself ends them and is kept in ``source.error``, as ``_Source`` keeps it."""
    items = source.items
    if type(items) in _PLAIN_ITERATORS:
        return items
    return _guard(source, items)


def _guard(source: Any, items: Iterator) -> Iterator:
    try:
        yield from items  # item by item in C: a guard costs no Python call per item
    except Exception as exc:
        source.error = exc


@dataclass
class ChunkRun:
    """A chunk of the rest: how far it got, and how it ended."""

    ran: int  # iterations that finished
    error: BaseException | None  # raised by iteration ``ran`` (or the stop button)
    cut: bool  # the stop button stopped iteration ``ran`` part-way
    started: float  # time.time() as the chunk started
    seconds: float


class PlainLoop:
    """The loop's own statements, run over chunks of items in ``namespace``."""

    def __init__(self, step: LoopStep, namespace: dict[str, Any], accumulator: Any, listener: Any):
        self.step = step
        self.namespace = namespace
        self.accumulator = accumulator
        self.listener = listener
        self.function = None
        if step.kind != "for":  # a comprehension: its loop in a function of its own
            code = next(c for c in step.kernel_loop.co_consts if isinstance(c, types.CodeType))
            self.function = types.FunctionType(code, namespace)

    def run(self, chunk: list) -> ChunkRun:
        """Run the iterations of ``chunk`` in order, until one raises."""
        __tracebackhide__ = True
        items = iter(chunk)
        started, began = time.time(), time.perf_counter()
        error, finished = None, False
        try:
            with interrupts_deferred(STOP_GRACE_SECONDS), self._output_shown():
                self._loop(items)
                finished = True
        except BaseException as exc:  # noqa: B036 - an iteration's error, or the stop button
            error = exc
        seconds = time.perf_counter() - began
        consumed = len(chunk) - operator.length_hint(items)
        ran = consumed if finished else max(0, consumed - 1)
        cut = isinstance(error, KeyboardInterrupt) and not finished
        return ChunkRun(ran, error, cut, started, seconds)

    @contextlib.contextmanager
    def _output_shown(self) -> Iterator[None]:
        """Prints go through the run's display (the text view clears its live line)."""
        out, err = sys.stdout, sys.stderr
        sys.stdout = _ToListener((out, err), "stdout", self.listener)
        sys.stderr = _ToListener((out, err), "stderr", self.listener)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = out, err

    def _loop(self, items: Iterator) -> None:
        __tracebackhide__ = True
        if self.function is not None:
            self.function(items, self.accumulator)
            return
        self.namespace[REST] = items
        try:
            exec(self.step.kernel_loop, self.namespace)
        finally:
            self.namespace.pop(REST, None)


class _ToListener:
    """A stream whose writes the run's display shows (other attributes: the real stream's)."""

    def __init__(self, real: tuple[Any, Any], name: str, listener: Any):
        self._real = real
        self._stream = real[name == "stderr"]
        self._name = name
        self._listener = listener

    def write(self, text: str) -> int:
        """Shown at once, as the plain loop's print is (the display writes to the real
        streams)."""
        if text:
            routed = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = self._real
            try:
                self._listener.on_output(-1, self._name, text)
            finally:
                sys.stdout, sys.stderr = routed
        return len(text)

    def flush(self) -> None:
        """Written already."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
