"""Running a batch in a worker: load the run's payload once, run the loop body for its items.

Imported by worker processes, so it imports nothing heavy (no IPython, no
ipywidgets) and nothing of parmagic outside this package but ``errors``. A
batch runs the compiled loop body for consecutive items and returns their
effect records, output, timings, errors and the body's locals after its last
iteration; the kernel commits them in iteration order.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import linecache
import marshal
import os
import select
import signal
import sys
import threading
import time
import traceback
from typing import Any

from ..errors import IterationTimeoutError, _short_repr
from . import budget, rich
from .board import BATCH, FINISHED, LOADING, RUNNING, BoardSlot
from .environment import pack_result
from .protocol import RESERVED, BatchResult, Payload, PayloadRef
from .streams import for_run as _streams_for_run
from .tracking import (
    CapturedWatch,
    ItemChange,
    ItemRef,
    ItemTracker,
    effect_value_refs,
    element_changes,
    is_atomic,
)
from .writeback import WritebackError, merge_into


def raise_in_thread(ident: int, exc_type: type[BaseException] | None) -> bool:
    """Raise ``exc_type`` in thread ``ident`` at its next bytecode (None: drop a pending one).

    Returns True when the thread was found. A C call in that thread is not interrupted.
    """
    import ctypes

    exc = ctypes.py_object(exc_type) if exc_type is not None else None
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), exc) == 1


class _Cache(threading.local):
    """The run a thread runs batches of: its payload, compiled batch function and watch.

    A process worker runs batches in one thread. A dask worker runs them in several,
    which act as separate workers, each with its own copy of the captured values (its
    ref is ``per_thread`` and hands out fresh copies). The threads backend's threads
    share one compiled run (:data:`_shared`): one set of globals, so a warning shown
    once per location is shown once, as in the plain loop.
    """

    key: str | None = None
    payload: Payload | None = None
    fn: Any = None
    watch: CapturedWatch | None = None


_cache = _Cache()
#: The last run compiled for threads that share it: (key, (payload, fn, watch)).
_shared: list[tuple[str, tuple]] = []
_shared_lock = threading.Lock()


def _batch_function(ref: PayloadRef) -> tuple[Payload, Any]:
    if _cache.key != ref.key:
        if ref.per_thread:
            run = _compile(ref.load())
        else:
            with _shared_lock:
                if not _shared or _shared[0][0] != ref.key:
                    _shared[:] = [(ref.key, _compile(ref.load()))]
                run = _shared[0][1]
        _cache.key = ref.key
        _cache.payload, _cache.fn, _cache.watch = run
    return _cache.payload, _cache.fn


def _compile(payload: Payload) -> tuple[Payload, Any, CapturedWatch | None]:
    """The payload's batch function, over globals holding its captured values."""
    glb = dict(payload.captured)
    glb["__builtins__"] = builtins
    glb[RESERVED + "clock"] = time.perf_counter
    glb.setdefault("__name__", "__main__")
    exec(marshal.loads(payload.code), glb)
    lines = payload.source.splitlines(True)
    linecache.cache[payload.filename] = (len(payload.source), None, lines, payload.filename)
    fn = glb["__pm_batch"]
    fn.__code__ = _as_cell_code(fn.__code__)
    # captured generators change as they draw: the random streams take care of them
    unwatched = {k: v for k, v in payload.captured.items() if k not in payload.streams}
    return payload, fn, CapturedWatch(unwatched) if payload.track_changes else None


def _forget_run() -> None:
    """The next batch loads the run again: fresh copies of the values as the kernel sent them."""
    _cache.key = None
    with _shared_lock:
        _shared.clear()


def _as_cell_code(code: Any) -> Any:
    """The batch function's code named ``<module>``: tracebacks show the loop body as cell code."""
    names = {"co_name": "<module>"}
    if hasattr(code, "co_qualname"):
        names["co_qualname"] = "<module>"
    return code.replace(**names)


class _Capture(io.TextIOBase):
    """A stream that tags every write with the iteration running at the time."""

    def __init__(self, state: _BatchState, stream: str):
        self._state = state
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        result = self._state.result
        outputs, k, n = result.outputs, self._state.current, len(result.effects)
        # n: effects recorded before this write, so the kernel interleaves them exactly
        last = outputs[-1] if outputs else None
        if last is not None and last[0] == k and last[1] == self._stream and last[3] == n:
            outputs[-1] = (k, self._stream, last[2] + text, n)
        else:
            outputs.append((k, self._stream, text, n))
        return len(text)


class _ThreadTimeout(Exception):
    """Raised asynchronously in a worker thread whose iteration ran past ``--timeout``."""


class _BatchState:
    """Per-batch bookkeeping the compiled body calls into (``mark``, ``record``)."""

    def __init__(
        self,
        result: BatchResult,
        timeout: float | None,
        slot: BoardSlot | None = None,
        track: bool = False,
        items: list | None = None,
    ):
        self.result = result
        self.start = result.start
        self.timeout = timeout
        self.record = result.effects.append
        self.slot = slot  # the batch's line on the kernel's status board
        self.items = items
        self.interrupted = False
        self.track = track
        self.stop_at: int | None = None  # the probe's effect index (run_batch's stop_at_effect)
        # the body calls mark(perf_counter()) per iteration: a bare list.append when it can
        self.mark = self._mark_and_arm if timeout or track else result.marks.append
        self.tracker: ItemTracker | None = None
        self.split = False

    def split_iterations(self, body: Any) -> None:
        """--cache: as each iteration starts, note the effects and locals the one before left.

        ``body`` is the batch function's code: its frame (the caller's, or further up where
        the random streams wrap ``mark`` too) holds the locals.
        """
        self.split, self.body = True, body
        inner, result = self.mark, self.result

        def mark(now: float) -> None:
            if result.marks:
                frame = sys._getframe(1)
                while frame is not None and frame.f_code is not body:
                    frame = frame.f_back
                names = _user_locals(frame.f_locals) if frame is not None else {}
                result.splits.append((self.current, len(result.effects), names))
            inner(now)

        self.mark = mark

    def track_items(self, items: list, single_effect: bool) -> None:
        """Compare each non-atomic item before and after its iteration (process workers)."""
        self.tracker = ItemTracker(items, self.start)
        self._plain_mark, self.mark = self.mark, self._mark_tracked
        self._single = single_effect
        self.record = self._record_refs

    def _mark_tracked(self, now: float) -> None:
        self.end_item()
        self._plain_mark(now)
        self.tracker.begin(self.current)
        self.result.overhead += time.perf_counter() - now

    def end_item(self) -> None:
        """The tracked iteration ended: keep its item's change, if it can reach the kernel."""
        change = self.tracker.end(len(self.result.effects))
        if change is None:
            return
        import cloudpickle

        k = change.k
        try:  # the kernel will merge the new state into its object: make sure it can
            merge_into(self.tracker.before_copy(k), cloudpickle.loads(change.state))
        except WritebackError as exc:
            self.tracker.changes.pop()
            item = self.tracker.items[k - self.start]
            raise WritebackError(
                f"iteration {k} changed {_what_changed(item, self.tracker.before_copy(k))}, "
                f"which {exc}; the kernel's object would not see the change: assign what you "
                "need to a kernel object instead (results.append(...)), or run the loop plainly"
            ) from None
        self.result.item_changes.append(change)

    def _record_refs(self, record: Any) -> None:
        k = self.current
        ref = self.tracker.as_ref
        if self._single:
            values = tuple(ref(v, k) for v in record)
            refs = any(a is not b for a, b in zip(values, record, strict=True))
        else:
            eid, raw = record
            values = tuple(ref(v, k) for v in raw)
            refs = any(a is not b for a, b in zip(values, raw, strict=True))
            values = (eid, values)
        if refs:
            self.result.refs = True
            record = values
        self.result.effects.append(record)

    def restart(self) -> None:
        """Drop this attempt's results: the batch runs again from its start (random streams)."""
        result = self.result = BatchResult(start=self.start, ran=0, pid=self.result.pid)
        self.record = result.effects.append if self.stop_at is None else _stop_at(self.stop_at)
        self.mark = self._mark_and_arm if self.timeout or self.track else result.marks.append
        if self.tracker is not None:  # the items as they came, compared again
            self.tracker.restore()
            self.track_items(self.tracker.items, self._single)
        if self.split:
            self.split_iterations(self.body)

    @property
    def current(self) -> int:
        """The iteration running now (or that ran last)."""
        return self.start + len(self.result.marks) - 1

    def _mark_and_arm(self, now: float) -> None:
        self.result.marks.append(now)
        if self.slot is not None:
            self.slot.write(self.start, self.current, RUNNING)
        if self.timeout:
            signal.setitimer(signal.ITIMER_REAL, self.timeout)

    def on_alarm(self, signum: int, frame: Any) -> None:
        """SIGALRM: the running iteration is past --timeout."""
        k = self.current
        item = f" (item={_short_repr(self.items[k - self.start])})" if self.items else ""
        raise IterationTimeoutError(
            f"iteration {k}{item} ran longer than --timeout {self.timeout:g} s"
        )

    def on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT (the stop button) stops the batch once; repeats while it winds up are ignored."""
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt

    def close(self) -> None:
        """The running iteration ended (or failed): note the time, disarm the timeout."""
        self.result.end = time.perf_counter()
        if self.timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)


_thread_capture = threading.local()


class RoutingStream:
    """Stands in for sys.stdout/stderr while in-kernel batches run (threads, serial).

    A write from a thread that is running a batch goes to that batch's capture;
    any other write goes to the original stream.
    """

    def __init__(self, original: Any, stream: str):
        self._original = original
        self._stream = stream

    def write(self, text: str) -> int:
        state = getattr(_thread_capture, "state", None)
        if state is None:
            return self._original.write(text)
        return _Capture(state, self._stream).write(text)

    def flush(self) -> None:
        if getattr(_thread_capture, "state", None) is None:
            self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def run_batch(
    ref: PayloadRef,
    start: int,
    items: list,
    slot: BoardSlot | None = None,
    stop_at_effect: int | None = None,
    pack: bool = True,
) -> BatchResult:
    """Run the loop body for ``items`` (iterations ``start``, ``start+1``, ...).

    With a status-board ``slot`` the worker says what it runs (per iteration when
    the kernel needs to know exactly: ``--timeout``, or a batch whose worker died),
    and a batch the kernel has given up on returns at once with ``ran == 0``.
    ``stop_at_effect=j`` runs the batch again only to return the locals as they are
    when its j-th effect statement runs (that effect failed in the kernel).
    ``pack=False`` leaves the result unpickled (a part of a batch run one by one).
    """
    if slot is not None:
        if slot.cancelled():
            return BatchResult(start=start, ran=0, pid=os.getpid())
        slot.write(start, start, LOADING)
    payload, fn = _batch_function(ref)
    budget.apply(payload.threads)  # cheap unless modules were imported since the last batch
    result = BatchResult(start=start, ran=0, pid=os.getpid())
    track = slot is not None and (slot.tracked or bool(payload.timeout))
    state = _BatchState(result, _usable_timeout(payload.timeout), slot, track, items)
    if stop_at_effect is not None:
        state.record = _stop_at(stop_at_effect)
        state.stop_at = stop_at_effect
    elif payload.track_changes and not all(is_atomic(item) for item in items):
        state.track_items(items, payload.effect_sites == 1)  # ints, strings: nothing to track
    if payload.split and stop_at_effect is None:
        state.split_iterations(fn.__code__)
    watch = _cache.watch if stop_at_effect is None and _cache.watch is not None else None
    before = watch.snapshot() if watch is not None and watch.watched else None
    if slot is not None and not track:
        slot.write(start, start, RUNNING if len(items) == 1 else BATCH)
    old_out, old_err = sys.stdout, sys.stderr
    per_thread = payload.output_per_thread
    if per_thread:
        _thread_capture.state = state
    else:
        sys.stdout, sys.stderr = _Capture(state, "stdout"), _Capture(state, "stderr")
    old_alarm = signal.signal(signal.SIGALRM, state.on_alarm) if state.timeout else None
    main = threading.current_thread() is threading.main_thread()
    # a process worker runs one batch at a time and owns its SIGINT; a batch sharing its
    # process (the kernel's threads, dask) is stopped by the kernel instead
    old_int = signal.signal(signal.SIGINT, state.on_sigint) if main and not per_thread else None
    # no SIGALRM off the main thread, and no kernel watchdog without a slot (dask): watch here
    alarm = (
        _ThreadAlarm(state, payload.timeout)
        if payload.timeout and not main and slot is None
        else None
    )
    capture = rich.begin(state, payload.rich)  # displays, figures, warnings, log records
    streams = _streams_for_run(payload)
    stopped = False
    try:
        if streams is None:
            _run_items(payload, fn, state, start, items)
        else:  # the loop may draw random numbers: each iteration on its own stream
            streams.run(state, len(items), lambda: _run_items(payload, fn, state, start, items))
    except KeyboardInterrupt:
        stopped = True  # landed between iterations: raised again below, without its frames
    finally:
        if alarm is not None:
            alarm.stop()
        if state.timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_alarm)
        if old_int is not None:
            signal.signal(signal.SIGINT, old_int)
        rich.end(capture)
        if slot is not None:
            slot.write(start, state.current, FINISHED)
        if per_thread:
            _thread_capture.state = None
        else:
            sys.stdout, sys.stderr = old_out, old_err
    if stopped:
        # a fresh one: a traceback pickler that an import installed (tblib's, with
        # distributed) fails on a frame without a line number, and the worker dies of it
        raise KeyboardInterrupt
    result = state.result  # a new one when the streams ran the batch again
    if before is not None and watch.changed(before):
        if len(items) > 1:  # which iteration did it? run them again one by one, from fresh copies
            if state.tracker is not None:
                state.tracker.restore()  # the items too, as they came
            result = _one_by_one(ref, start, items, slot, payload.collect)
        else:
            _captured_changes(ref, payload, before, result)
    result.ran = len(result.marks)
    if payload.pickle_locals and pack:
        pickle_locals(result)
    return result


def _one_by_one(
    ref: PayloadRef, start: int, items: list, slot: BoardSlot | None, collect: bool
) -> BatchResult:
    """Run a batch again an iteration at a time, on fresh copies of the captured values,
    up to the first iteration that fails (every one, with --on-error collect)."""
    _forget_run()
    parts = []
    for i, item in enumerate(items):
        part = run_batch(ref, start + i, [item], slot, pack=False)
        parts.append(part)
        if part.errors and not collect:
            break
    return _concat(parts)


def _concat(parts: list[BatchResult]) -> BatchResult:
    """Consecutive one-iteration results as one batch result (effect counts offset)."""
    import dataclasses

    split = _cache.payload is not None and _cache.payload.split
    out = parts[0]
    last_locals = dict(out.locals)
    for part in parts[1:]:
        n = len(out.effects)
        if split:  # --cache: the iteration before this part ended here, with its own locals
            out.splits.append((part.start - 1, n, last_locals))
            last_locals = dict(part.locals)
        out.effects += part.effects
        out.outputs += [(k, stream, text, before + n) for k, stream, text, before in part.outputs]
        out.item_changes += [
            dataclasses.replace(c, effects_before=c.effects_before + n) for c in part.item_changes
        ]
        out.marks += part.marks
        out.splits += [(k, before + n, names) for k, before, names in part.splits]
        out.end = part.end
        out.errors += part.errors
        out.locals.update(part.locals)
        out.unsent_locals += part.unsent_locals
        out.refs = out.refs or part.refs
    return out


class _ThreadAlarm:
    """``--timeout`` for a batch in a worker thread (dask): a watcher raises in that thread.

    Python code stops at the limit; a ``time.sleep`` or C call stops when it returns.
    """

    def __init__(self, state: _BatchState, timeout: float):
        self.state, self.timeout = state, timeout
        self.ident = threading.get_ident()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="parmagic-timeout", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        fired_for = None
        while not self.done.wait(min(0.05, self.timeout / 4)):
            marks = self.state.result.marks
            k = self.state.current
            if marks and k != fired_for and time.perf_counter() - marks[-1] > self.timeout:
                fired_for = k
                raise_in_thread(self.ident, _ThreadTimeout)

    def stop(self) -> None:
        """The batch ended: stop watching, and drop an exception not yet delivered."""
        self.done.set()
        self.thread.join()
        raise_in_thread(self.ident, None)


def _timeout_error(exc: BaseException, state: _BatchState, timeout: float | None) -> BaseException:
    """An asynchronous timeout arrives bare: give it the message SIGALRM's has."""
    bare = isinstance(exc, IterationTimeoutError) and not exc.args
    if not (isinstance(exc, _ThreadTimeout) or bare):
        return exc

    k = state.current
    item = f" (item={_short_repr(state.items[k - state.start])})" if state.items else ""
    error = IterationTimeoutError(f"iteration {k}{item} ran longer than --timeout {timeout:g} s")
    return error.with_traceback(exc.__traceback__)


def _usable_timeout(timeout: float | None) -> float | None:
    # SIGALRM only works in a process's main thread; other callers rely on the kernel's watchdog.
    if timeout and threading.current_thread() is threading.main_thread():
        return timeout
    return None


def _run_items(payload: Payload, fn: Any, state: _BatchState, start: int, items: list) -> None:
    pos = 0
    while pos < len(items):
        try:
            local_ns = fn(items[pos:] if pos else items, state.record, state.mark)
            state.close()
            if state.tracker is not None:
                state.end_item()
            state.result.locals.update(_user_locals(local_ns))
            _refs_in_locals(state)
            return
        except BaseException as raised:  # noqa: B036 - a worker must report everything
            state.close()
            if isinstance(raised, _StopAtEffect):
                state.result.locals.update(_user_locals(_failing_frame_locals(raised, fn)))
                return
            k = state.current
            if state.tracker is not None and not isinstance(raised, WritebackError):
                with contextlib.suppress(WritebackError):
                    state.end_item()  # what the failing iteration did to its item, as plain
            exc = _timeout_error(raised, state, payload.timeout)
            state.result.locals.update(_user_locals(_failing_frame_locals(raised, fn)))
            _refs_in_locals(state)
            state.result.errors.append((k, exc, _format_traceback(exc, payload.filename)))
            if isinstance(exc, KeyboardInterrupt) or not payload.collect:
                return
            pos = k - start + 1


def _what_changed(item: Any, before: Any) -> str:
    """The changed item in words: the part of a tuple item that changed, with its type."""
    from .tracking import state_of

    if type(item) is tuple and type(before) is tuple and len(item) == len(before):
        for j, (part, old) in enumerate(zip(item, before, strict=True)):
            if state_of(part) != state_of(old):
                return f"part {j} of its item, a {_type_name(part)}"
    return f"its item, a {_type_name(item)}"


def _type_name(value: Any) -> str:
    kind = type(value)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _refs_in_locals(state: _BatchState) -> None:
    """Locals that are the last iteration's item travel as references to the kernel's item."""
    if state.tracker is None or not state.result.marks:
        return
    k = state.current
    for name, value in state.result.locals.items():
        ref = state.tracker.as_ref(value, k)
        if ref is not value:
            state.result.locals[name] = ref
            state.result.refs = True


def _captured_changes(ref: PayloadRef, payload: Payload, before: list, result: BatchResult) -> None:
    """A captured value (or a called function's global) changed in this one-iteration batch.

    Elements of a captured container changed in place (``m = models[k]; m.fit(X)``)
    travel back like changed items, to be merged into the kernel's own elements; any
    other change fails the iteration, naming it: the kernel's object would never see it.
    """
    from ..errors import CapturedChangeError

    watch = _cache.watch
    changed = watch.changed(before)
    if not changed or not result.marks:
        return
    k = result.start
    elements = _changed_elements(ref, watch, changed, k, len(result.effects))
    if elements is not None:
        result.item_changes += elements
        _refer_to_elements(result, elements, payload.captured, payload.effect_sites == 1)
        _forget_run()  # the next batch starts again from the kernel's copies
        return
    label, value = changed[0]
    error = CapturedChangeError(
        f"iteration {k} changed the captured {label} "
        f"({type(value).__module__}.{type(value).__qualname__}) in its worker "
        f"(loop at line {payload.lineno}): the kernel's object would not see the change. "
        "Make the change a statement of the loop body (results.append(x), d[k] = v), "
        "return the value from the function instead, or run with --backend threads"
    )
    result.errors = [e for e in result.errors if e[0] != k] + [(k, error, "")]


def _refer_to_elements(
    result: BatchResult, elements: list[ItemChange], captured: dict, single: bool
) -> None:
    """Locals and effect values that are a changed element travel as references to it,
    so the kernel binds and appends its own object (``m is models["lr"]`` after the loop)."""
    refs = {}
    for change in elements:
        name, key = change.element
        refs[id(captured[name][key])] = ItemRef(change.k, element=change.element)

    def own(value: Any) -> Any:
        return refs.get(id(value), value)

    for name, value in result.locals.items():
        result.locals[name] = own(value)
    if single:  # one effect site: bare values; else (effect id, values)
        result.effects = [tuple(own(v) for v in values) for values in result.effects]
    else:
        result.effects = [(eid, tuple(own(v) for v in vs)) for eid, vs in result.effects]
    result.refs = True


def _changed_elements(
    ref: PayloadRef, watch: CapturedWatch, changed: list, k: int, effects: int
) -> list[ItemChange] | None:
    """Each changed captured value as element changes, or None if one cannot be."""
    pristine = None
    out = []
    for label, value in changed:
        name = watch.names.get(label)
        if name is None:  # a called function's global: not reached through a local name
            return None
        if pristine is None:
            pristine = ref.load().captured  # the values as the kernel sent them
        elements = element_changes(pristine.get(name), value)
        if elements is None:
            return None
        out += [ItemChange(k, effects, state, (name, key)) for key, state in elements]
    return out


class _StopAtEffect(Exception):
    """The probe reached the effect that failed in the kernel."""


def _stop_at(j: int) -> Any:
    count = [0]

    def record(_: Any) -> None:
        if count[0] == j:
            raise _StopAtEffect
        count[0] += 1

    return record


def _user_locals(ns: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ns.items() if not k.startswith(RESERVED)}


def _failing_frame_locals(exc: BaseException, fn: Any) -> dict[str, Any]:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is fn.__code__:
            return dict(tb.tb_frame.f_locals)
        tb = tb.tb_next
    return {}


def _format_traceback(exc: BaseException, filename: str) -> str:
    """The worker's traceback, starting at the cell's own frame."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def pickle_locals(result: BatchResult) -> None:
    """Locals travel back pickled one by one; those that cannot or must not (open files) stay
    behind; effect values and exceptions travel by value (classes defined in the notebook).
    A local that stands for a loop item (tracking.ItemRef) travels as it is."""
    refs = {k: v for k, v in result.locals.items() if isinstance(v, ItemRef)}
    for name in refs:
        del result.locals[name]
    single = _cache.payload is None or _cache.payload.effect_sites == 1
    refs.update(effect_value_refs(result.locals, result.effects, single))
    for name in refs:
        result.locals.pop(name, None)
    pack_result(result)
    result.locals.update(refs)


def warm_up() -> int:
    """A no-op task that makes a fresh worker import this module; returns its pid."""
    return os.getpid()


def ignore_sigint() -> None:
    """Ignore SIGINT from now on, dropping one held while the worker started (it is unblocked)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def init_process(kernel_pid: int, threads: budget.ThreadBudget | None = None) -> None:
    """Initializer of every pool worker: die with the kernel, leave SIGINT to the batch,
    keep to the thread budget (``threads``, see :mod:`.budget`).

    A thread of the worker waits for the kernel to end, even by SIGKILL (loky's workers
    would otherwise wait for tasks forever), and ends the worker then. Not
    ``PR_SET_PDEATHSIG``: Linux sends that when the *thread* that started the worker
    ends, and a cell run from a thread of its own starts workers from that thread.
    SIGINT, which the stop button sends to the kernel's whole process group, is ignored
    between batches: only a running batch stops for it (``run_batch``), and an idle
    worker survives. The worker started with SIGINT blocked (a stop button during its
    imports is held, see ``interrupts.sigint_blocked``): unblocked once ignored, it is
    dropped.
    """
    ignore_sigint()
    budget.apply(threads)
    if os.getppid() != kernel_pid:  # the kernel died already
        os._exit(1)
    threading.Thread(
        target=_exit_with, args=(kernel_pid,), name="parmagic-kernel-watch", daemon=True
    ).start()


def _exit_with(kernel_pid: int) -> None:
    """End this worker once the kernel has ended (a pidfd turns readable; else polled)."""
    try:
        pidfd = os.pidfd_open(kernel_pid)
    except (AttributeError, OSError):  # not Linux 5.3+: look once a second
        while os.getppid() == kernel_pid:
            time.sleep(1.0)
    else:
        select.select([pidfd], [], [])
    os._exit(1)
