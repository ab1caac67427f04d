"""Run a planned cell: kernel steps in order, loop steps as batches committed in order.

The engine owns the promise order of SPEC: the serial result first (effects
replayed in iteration order, locals bound as plain Python would leave them),
nothing lost on failure second (the committed prefix stays; the run record
keeps every iteration), speed third (adaptive batching, payload sent once).
"""

from __future__ import annotations

import contextlib
import itertools
import marshal
import re
import sys
import time
import types
import uuid
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, NoReturn

from . import _worker
from .backends.base import Backend
from .errors import CollectedErrors, RemoteTraceback
from .listener import PlainListener, RunListener
from .options import Options
from .record import ERROR, INTERRUPTED, SUCCESS, RunRecord, TaskRecord
from .rewrite import SLICE, VALUES, CellPlan, KernelStep, LoopStep, replay_module
from .watchdog import Supervisor

#: Aim each batch at this many seconds of work: long enough to hide per-task overhead
#: (~0.1-0.3 ms on loky), short enough for live progress and an even finish.
TARGET_BATCH_SECONDS = 0.05
#: Batches in flight per worker: enough to keep every worker fed while results travel.
IN_FLIGHT_PER_WORKER = 2
#: Each worker gets at least this many batches of a sized iterable, so the end is even.
MIN_BATCHES_PER_WORKER = 4
#: How long rerunning a batch for the locals at a failed kernel-side effect may take.
PROBE_SECONDS = 30
#: How long the engine waits for a result before it refreshes progress anyway.
POLL_SECONDS = 0.1
#: Stop button: how long running batches get to hand back what they finished before
#: their workers are killed.
INTERRUPT_GRACE_SECONDS = 0.5

_runs: list[RunRecord] = []
_iterations_run = [0]


def iterations_run() -> int:
    """Iterations this kernel has committed, all runs together."""
    return _iterations_run[0]


def last_run() -> RunRecord | None:
    """The record of the most recent loop or ``%pmap`` run (None before the first)."""
    return _runs[-1] if _runs else None


def recent_runs() -> list[RunRecord]:
    """The records of the last cell's loops, oldest first."""
    return list(_runs)


@dataclass
class LoopRun:
    """Mutable state of one loop while it runs."""

    step: LoopStep
    record: RunRecord
    replay: list[Any]
    accumulator: Any
    final_locals: dict[str, Any] = field(default_factory=dict)
    collect: bool = False  # --on-error collect
    pickled_locals: bool = True  # locals come back as cloudpickle bytes (process backends)
    probe: Any = None  # (start, chunk, effect index) -> BatchResult: reruns a batch for its locals
    failures: list[tuple[int, Any, BaseException]] = field(default_factory=list)
    first_error: tuple[int, BaseException, str] | None = None


def run_plan(
    plan: CellPlan,
    namespace: dict[str, Any],
    options: Options,
    backend_factory: Any,
    listener_factory: Any = None,
    filename: str = "<cell>",
    source: str = "",
    loop_runner: Any = None,
) -> Any:
    """Run every step of ``plan`` against ``namespace``; return the last expression's value.

    ``loop_runner`` (default :func:`run_loop`, same arguments) runs each loop step:
    ``--compare`` wraps it with its timing runs.
    """
    __tracebackhide__ = True
    _runs.clear()
    run_step = loop_runner or run_loop
    value = None
    for step in plan.steps:
        if isinstance(step, KernelStep):
            exec(step.code, namespace)
            continue
        value = run_step(
            step, namespace, options, backend_factory, listener_factory, filename, source
        )
    if plan.last_expr is not None:
        value = eval(plan.last_expr, namespace)
    elif not (plan.steps and isinstance(plan.steps[-1], LoopStep) and plan.steps[-1].is_last_expr):
        value = None
    return value


def run_loop(
    step: LoopStep,
    namespace: dict[str, Any],
    options: Options,
    backend_factory: Any,
    listener_factory: Any = None,
    filename: str = "<cell>",
    source: str = "",
    dry: bool = False,
) -> Any:
    """Run one parallel loop to the end, commit it, bind what plain Python would bind.

    ``dry`` runs the iterations for timing only (``--compare``/``--sweep``): no effect
    is applied, no output shown, nothing bound; it returns the run record.
    """
    __tracebackhide__ = True
    iterable = eval(step.iterable, namespace)
    if dry and options.compare_sample:
        iterable = list(itertools.islice(iter(iterable), options.compare_sample))
    backend: Backend = backend_factory(options)
    make_listener = listener_factory or (lambda o, label: PlainListener())
    listener: RunListener = _SilentListener() if dry else make_listener(options, step.source_line)
    accumulator = _new_accumulator(step.kind)
    run = LoopRun(
        step=step,
        record=RunRecord(step.source_line, backend.name, backend.n_workers, _length(iterable)),
        replay=_make_replays(step, namespace, filename, accumulator, dry),
        accumulator=accumulator,
        collect=options.on_error == "collect",
        pickled_locals=backend.needs_pickling,
    )
    _runs.append(run.record)
    started = time.perf_counter()
    payload = _payload(step, namespace, options, backend, filename, source)
    ref = backend.publish(payload)
    supervisor = Supervisor(backend, options.timeout, backend.n_workers * IN_FLIGHT_PER_WORKER)
    run.probe = lambda start, chunk, j: backend.submit(
        _worker.run_batch, ref, start, chunk, None, j
    ).result(timeout=PROBE_SECONDS)
    try:
        run.record.startup = time.perf_counter() - started
        listener.on_start(run.record)
        with _routed_output(backend.in_kernel):
            _drive(run, iterable, ref, backend, options, listener, supervisor)
    except KeyboardInterrupt:
        _bind_locals(run, namespace)
        _raise_in_cell(KeyboardInterrupt(), filename, step.lineno)
    except Exception:
        _bind_locals(run, namespace)  # an effect failed in the kernel: as far as it got
        raise
    finally:
        supervisor.close()
        backend.unpublish(ref)
        run.record.ended = time.time()
        _iterations_run[0] += run.record.done
        listener.on_finish(run.record)
    if dry:
        if run.failures:
            raise run.failures[0][2]
        return run.record
    return _finish(run, namespace, options, filename)


class _SilentListener(PlainListener):
    """Swallows output: a dry run shows nothing."""

    def on_output(self, index: int, stream: str, text: str) -> None:
        """Dropped."""


@contextlib.contextmanager
def _routed_output(in_kernel: bool) -> Iterator[None]:
    """For in-kernel backends, capture each batch's prints per thread so they commit in order."""
    if not in_kernel:
        yield
        return
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (
        _worker.RoutingStream(out, "stdout"),
        _worker.RoutingStream(err, "stderr"),
    )
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def _length(iterable: Any) -> int | None:
    try:
        return len(iterable)
    except Exception:  # no len(), or a broken one: progress shows a count
        return None


def _new_accumulator(kind: str) -> Any:
    return {"list": list, "set": set, "dict": dict}.get(kind, lambda: None)()


def _make_replays(
    step: LoopStep, namespace: dict, filename: str, accumulator: Any, dry: bool
) -> list[Any]:
    if dry:
        return [lambda values: None] * len(step.replays)
    code = replay_module(step.replays, filename)
    make_code = next(c for c in code.co_consts if isinstance(c, types.CodeType))
    make = types.FunctionType(make_code, namespace)
    return make(accumulator)


def _payload(
    step: LoopStep, namespace: dict, options: Options, backend: Backend, filename: str, source: str
) -> _worker.Payload:
    captured = {n: namespace[n] for n in step.analysis.captured if n in namespace}
    captured[SLICE] = slice
    return _worker.Payload(
        key=uuid.uuid4().hex,
        code=marshal.dumps(step.batch_code),
        filename=filename,
        source=source,
        captured=captured,
        collect=options.on_error == "collect",
        timeout=options.timeout,
        pickle_locals=backend.needs_pickling,
    )


class _Batcher:
    """Chooses batch sizes: 1 until an iteration's cost is known, then ~TARGET_BATCH_SECONDS."""

    def __init__(self, total: int | None, n_workers: int, chunksize: int | None):
        self.total = total
        self.n_workers = max(1, n_workers)
        self.fixed = chunksize
        self.per_item: float | None = None

    def observe(self, result: _worker.BatchResult) -> None:
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


def _drive(
    run: LoopRun,
    iterable: Any,
    ref: Any,
    backend: Backend,
    options: Options,
    listener: RunListener,
    supervisor: Supervisor,
) -> None:
    __tracebackhide__ = True
    items: Iterator = iter(iterable)
    batcher = _Batcher(run.record.total, backend.n_workers, options.chunksize)
    in_flight: dict[Future, tuple[int, list]] = {}
    ready: dict[int, tuple[_worker.BatchResult, list]] = {}
    retry: list[tuple[int, list]] = []  # parts of batches lost with a dead worker: run again
    next_start, submitted, exhausted, stop = 0, 0, False, False
    max_in_flight = backend.n_workers * IN_FLIGHT_PER_WORKER
    try:
        while True:
            while not stop and len(in_flight) < max_in_flight and (retry or not exhausted):
                if retry:
                    start, chunk = retry.pop(0)
                else:
                    chunk = list(itertools.islice(items, batcher.next_size()))
                    if not chunk:
                        exhausted = True
                        break
                    start, submitted = submitted, submitted + len(chunk)
                in_flight[supervisor.submit(_worker.run_batch, ref, start, chunk)] = (start, chunk)
            if not in_flight:
                break
            done, _ = wait(list(in_flight), timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            for future in done:
                start, chunk = in_flight.pop(future)
                for piece in supervisor.settle(future, start, chunk):
                    if piece.result is None:
                        retry.append((piece.start, piece.chunk))
                    else:
                        ready[piece.start] = (piece.result, piece.chunk)
            retry.sort(key=lambda piece: piece[0])
            while next_start in ready and not stop:
                result, chunk = ready[next_start]
                if _stopped_by_sigint(result):
                    raise KeyboardInterrupt  # a worker got the stop button first
                del ready[next_start]
                batcher.observe(result)
                stop = _commit(run, result, chunk, listener)
                next_start += len(chunk)
            if stop:
                _cancel_rest(run, in_flight, ready, retry)
                in_flight.clear()
                break
            listener.on_progress(run.record, min(len(in_flight), backend.n_workers))
    except KeyboardInterrupt:
        _interrupted(run, in_flight, ready, next_start, backend, listener, supervisor, retry)
        raise
    except Exception:
        # an effect failed in the kernel (say a KeyError in `d[k] += 1`), as it would
        # have in the serial loop: stop the rest and raise it as it is
        _cancel_rest(run, in_flight, ready, retry)
        run.record.outcome = ERROR
        raise
    run.record.outcome = ERROR if (run.first_error or run.failures) else SUCCESS


def _stopped_by_sigint(result: _worker.BatchResult) -> bool:
    return any(isinstance(exc, KeyboardInterrupt) for _, exc, _ in result.errors)


def _commit(run: LoopRun, result: _worker.BatchResult, chunk: list, listener: RunListener) -> bool:
    """Apply a batch's iterations in order; return True when the loop must stop.

    Effects come in the order the worker made them, so replaying them in that
    order is replaying them in iteration order.
    """
    __tracebackhide__ = True
    outputs: dict[int, str] = {}
    applied = 0
    try:
        for k, stream, text, before in result.outputs:
            if before > applied:  # effects made before this output, in the worker's order
                _replay(run, result.effects[applied:before], applied)
                applied = before
            listener.on_output(k, stream, text)
            outputs[k] = outputs.get(k, "") + text
        _replay(run, result.effects[applied:] if applied else result.effects, applied)
    except Exception as exc:
        _locals_at_failed_effect(run, result, chunk, exc)
        raise
    task = TaskRecord(
        index=result.start,
        count=result.ran,
        start=result.wall0 + (result.marks[0] if result.marks else 0.0),
        marks=result.marks,
        end=result.end,
        worker=result.pid,
        outputs=outputs,
    )
    for k, exc, tb in result.errors:
        item = chunk[k - result.start]
        task.errors[k], task.items[k] = exc, item
        _note_failure(run, k, item, exc, tb)
    run.record.add_task(task)
    run.final_locals.update(result.locals)
    return run.first_error is not None and not run.collect


def _replay(run: LoopRun, effects: list, offset: int = 0) -> None:
    """Apply effect records in order (a loop with one effect site records bare values).

    An effect that raises is marked with its index in the batch (``offset`` + position).
    """
    __tracebackhide__ = True
    replay = run.replay
    if len(replay) == 1 and run.step.kind == "list":  # a comprehension: values are elements
        run.accumulator.extend([values[0] for values in effects])
        return
    j = 0
    try:
        if len(replay) == 1:
            only = replay[0]
            for j, values in enumerate(effects):  # noqa: B007 - j names the failing effect
                only(values)
        else:
            for j, (eid, values) in enumerate(effects):  # noqa: B007
                replay[eid](values)
    except Exception as exc:
        exc._parmagic_effect = offset + j  # type: ignore[attr-defined]
        raise


def _locals_at_failed_effect(run: LoopRun, result: Any, chunk: list, exc: BaseException) -> None:
    """An effect failed in the kernel: get the locals the serial loop had at that statement.

    The batch runs again (in a worker, effects not applied) up to that effect and
    hands back its frame's locals; the loop's locals then end as serial ones would.
    """
    j = getattr(exc, "_parmagic_effect", None)
    if j is None or run.probe is None or not run.step.bind_locals:
        return
    try:
        probe = run.probe(result.start, chunk, j)
    except Exception:  # the probe is a nicety: the real error is raised all the same
        return
    run.final_locals.update(probe.locals)


def _note_failure(run: LoopRun, k: int, item: Any, exc: BaseException, tb: str) -> None:
    if tb:
        exc.__cause__ = RemoteTraceback(f"iteration {k} failed:\n{tb}")
    run.failures.append((k, item, exc))
    if run.first_error is None:
        run.first_error = (k, exc, tb)


def _cancel_rest(run: LoopRun, in_flight: dict, ready: dict, retry: list = ()) -> None:
    """The loop stops (an error): cancel queued batches, drop finished ones after the error."""
    for future in in_flight:
        future.cancel()
    # batches still running on workers are told to stop (Supervisor.close); results dropped
    pieces = list(in_flight.values()) + [(start, c) for start, (_, c) in ready.items()]
    for start, chunk in pieces + list(retry):
        run.record.cancelled.extend(range(start, start + len(chunk)))
    run.record.cancelled.sort()


def _interrupted(
    run: LoopRun,
    in_flight: dict,
    ready: dict,
    next_start: int,
    backend: Backend,
    listener: RunListener,
    supervisor: Supervisor,
    retry: list,
) -> None:
    """Stop button: stop the rest now, commit the finished prefix, say how far it got.

    Queued batches are cancelled; running ones are told to stop (SIGINT, or an
    asynchronous KeyboardInterrupt in threads) and hand back the iterations they
    finished; what still runs after INTERRUPT_GRACE_SECONDS is killed.
    """
    __tracebackhide__ = True
    try:
        for future in in_flight:
            future.cancel()
        supervisor.interrupt()
        if backend.in_kernel:
            backend.abort()
        done, _ = wait(list(in_flight), timeout=INTERRUPT_GRACE_SECONDS)
        for future in done:
            start, chunk = in_flight.pop(future)
            if not future.cancelled():
                for piece in supervisor.settle(future, start, chunk):
                    if piece.result is not None:
                        ready[piece.start] = (piece.result, piece.chunk)
    finally:
        if in_flight and not backend.in_kernel and not supervisor.stop_stuck(list(in_flight)):
            backend.abort()
    _cancel_rest(run, in_flight, _commit_prefix(run, ready, next_start, listener), retry)
    run.record.outcome = INTERRUPTED
    total = f" of {run.record.total}" if run.record.total is not None else ""
    print(
        f"parmagic: interrupted; {run.record.done} iteration(s){total} committed, in order",
        file=sys.stderr,
    )


def _commit_prefix(run: LoopRun, ready: dict, next_start: int, listener: RunListener) -> dict:
    """Commit the finished batches in order up to the first gap or stop; return the rest."""
    __tracebackhide__ = True
    while next_start in ready:
        result, chunk = ready.pop(next_start)
        result = _finished_part(result)
        stop = _commit(run, result, chunk, listener)
        if stop or result.ran < len(chunk):
            if result.ran < len(chunk):
                ready[next_start + result.ran] = (None, chunk[result.ran :])
            break
        next_start += len(chunk)
    return ready


def _finished_part(result: _worker.BatchResult) -> _worker.BatchResult:
    """An interrupted batch counts only its finished iterations (their effects and output,
    and those the interrupted one made before it stopped, as plain Python would leave them)."""
    stopped = [k for k, exc, _ in result.errors if isinstance(exc, KeyboardInterrupt)]
    if stopped:
        k = stopped[0]
        result.errors = [e for e in result.errors if e[0] < k]
        result.ran = k - result.start
        if result.ran < len(result.marks):
            result.end = result.marks[result.ran]
            del result.marks[result.ran :]
    return result


def _finish(run: LoopRun, namespace: dict[str, Any], options: Options, filename: str) -> Any:
    """Bind locals, run the else clause, assign a comprehension; raise the failure if any."""
    __tracebackhide__ = True
    step = run.step
    _bind_locals(run, namespace)
    if run.failures:
        if options.on_error == "collect":
            _raise_in_cell(CollectedErrors(run.failures), filename, step.lineno)
        k, exc, tb = run.first_error
        _raise_in_cell(exc, filename, _cell_line(tb, filename) or step.lineno)
    if step.orelse is not None:
        exec(step.orelse, namespace)
    if step.assign is not None:
        namespace[VALUES] = run.accumulator
        try:
            exec(step.assign, namespace)
        finally:
            namespace.pop(VALUES, None)
    return run.accumulator if step.is_last_expr else None


def _raise_in_cell(exc: BaseException, filename: str, lineno: int) -> NoReturn:
    """Raise ``exc`` so that its traceback ends in the cell, at ``lineno``.

    IPython hides parmagic's frames (``__tracebackhide__``) but never the last one,
    so the last one is the cell's: the error shows the cell's line and source. An
    exception from an in-kernel backend keeps its real frames from the cell's on
    (``%debug`` works); one from a worker process is raised by a stub compiled at
    the cell's line.
    """
    __tracebackhide__ = True
    exc.__suppress_context__ = True  # not "during handling of ..." parmagic's internals
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    if tb is not None:
        raise exc.with_traceback(tb)
    stub = compile("\n" * max(0, lineno - 1) + f"raise {_worker.RESERVED}exc", filename, "exec")
    exec(stub, {f"{_worker.RESERVED}exc": exc.with_traceback(None)})
    raise exc  # not reached


def _cell_line(tb: str, filename: str) -> int | None:
    """The cell line where the worker's traceback ends (its innermost frame in the cell)."""
    lines = re.findall(rf'File "{re.escape(filename)}", line (\d+)', tb or "")
    return int(lines[-1]) if lines else None


def _bind_locals(run: LoopRun, namespace: dict[str, Any]) -> None:
    """Leave the loop target and body locals as the serial loop would (for loops only)."""
    if not run.step.bind_locals or not run.final_locals:
        return
    if run.pickled_locals:
        import cloudpickle

        namespace.update({k: cloudpickle.loads(v) for k, v in run.final_locals.items()})
    else:
        namespace.update(run.final_locals)
