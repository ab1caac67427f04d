"""Run a planned cell: kernel steps in order, loop steps as batches committed in order.

The engine owns the promise order of SPEC: the serial result first (effects
replayed in iteration order, locals bound as plain Python would leave them),
nothing lost on failure second (the committed prefix stays; the run record
keeps every iteration), speed third (adaptive batching, payload sent once).

A cell's run is one :class:`CellRun` (namespace, options, where backends and
displays come from); each loop's run is one :class:`LoopRun`, whose batches
between submission and commit are kept by a :class:`Flight`.
"""

from __future__ import annotations

import contextlib
import itertools
import marshal
import os
import re
import sys
import time
import types
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from . import cache as disk
from . import plainrest
from .analysis import check_conditions, check_plan_conditions
from .backends.base import Backend
from .batching import (
    AutoSerial,
    Batcher,
    SeenLoop,
    probe_size,
    starts_in_kernel,
    workers_gain,
)
from .errors import CollectedErrors, RemoteTraceback, WritebackError
from .interrupts import held_interrupts
from .listener import PlainListener, RunListener
from .options import Options
from .record import ERROR, INTERRUPTED, SUCCESS, RunRecord, TaskRecord
from .replay_output import STREAMS as RICH_STREAMS
from .replay_output import replay, routed_in_kernel, settings
from .rewrite import ITEM, SLICE, VALUES, CellPlan, KernelStep, LoopStep, replay_module
from .streams import LoopStreams
from .supervisor import Supervisor
from .tracebacks import worker_frames, worker_traceback
from .worker.batch import RoutingStream, run_batch
from .worker.environment import capture_environment
from .worker.protocol import RESERVED, BatchResult, Payload, PayloadRef
from .worker.tracking import EffectValueRef, ItemChange, ItemRef
from .worker.writeback import merge_into

#: Batches in flight per worker: enough to keep every worker fed while results travel.
IN_FLIGHT_PER_WORKER = 2
#: --cache: at most this many batches wait committed-to-be (cached ones are read ahead).
CACHED_AHEAD = 64
#: How long rerunning a batch for the locals at a failed kernel-side effect may take.
PROBE_SECONDS = 30
#: How long the engine waits for a result before it refreshes progress anyway.
POLL_SECONDS = 0.1
#: Stop button: how long running batches get to hand back what they finished before
#: their workers are killed.
INTERRUPT_GRACE_SECONDS = 0.5
#: Stop button: how long finished batches may take to commit after it (effects that are
#: slow to apply in the kernel); the batches after that are cancelled, not committed.
INTERRUPT_COMMIT_SECONDS = 0.5

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


ListenerFactory = Callable[[Options, str], RunListener]


@dataclass
class CellRun:
    """What every loop of one cell's run shares."""

    namespace: dict[str, Any]
    options: Options
    backend_factory: Callable[[Options], Backend]
    listener_factory: ListenerFactory | None = None
    filename: str = "<cell>"
    source: str = ""

    def with_options(self, options: Options) -> CellRun:
        """The same cell run with other options (``--compare``'s serial run, ``--sweep``)."""
        return replace(self, options=options)

    def listener(self, label: str) -> RunListener:
        """The display of one loop's run."""
        if self.listener_factory is None:
            return PlainListener()
        return self.listener_factory(self.options, label)


@dataclass
class LoopRun:
    """Mutable state of one loop while it runs."""

    step: LoopStep
    cell: CellRun
    backend: Backend
    listener: RunListener
    record: RunRecord
    accumulator: Any
    dry: bool = False
    final_locals: dict[str, Any] = field(default_factory=dict)
    failures: list[tuple[int, Any, BaseException]] = field(default_factory=list)
    first_error: tuple[int, BaseException, str] | None = None
    ref: PayloadRef | None = None
    #: id of each item written back -> (its iteration, the item): holding the item keeps its
    #: id from being reused (enumerate and zip recycle their tuples once dropped)
    written: dict[int, tuple[int, Any]] = field(default_factory=dict)
    streams: LoopStreams | None = None  # random generators: their streams and draws
    cache: disk.LoopCache | None = None  # --cache: this loop's entries on disk
    #: --cache: committed batches not written yet (written once the flight counts them
    #: committed, so that a stop button landing in a write cannot commit them twice)
    unsaved: list[tuple[BatchResult, list]] = field(default_factory=list)
    #: seconds the last commit spent applying its iterations (effects, merges, output)
    commit_work: float = 0.0
    shown: bool = False  # the display has started
    judge: AutoSerial | None = None  # auto-serial's judge of this run, if it had one
    #: auto-serial: the kernel ran the loop's first iterations (its last run showed it cheap)
    #: and the workers take the rest, without a judge
    from_kernel_first: bool = False

    _replays: list[Any] | None = None

    @property
    def replay(self) -> list[Any]:
        """The replay function of each effect (compiled at first use: a loop that runs in
        the kernel as the plain loop needs none)."""
        if self._replays is None:
            cell = self.cell
            self._replays = _make_replays(
                self.step, cell.namespace, cell.filename, self.accumulator, self.dry
            )
        return self._replays

    @property
    def collect(self) -> bool:
        """``--on-error collect``: go on after a failing iteration."""
        return self.cell.options.on_error == "collect"

    def probe(self, start: int, chunk: list, j: int) -> BatchResult:
        """Run a batch again up to its j-th effect, for the locals at that statement."""
        future = self.backend.submit(run_batch, self.ref, start, chunk, None, j)
        return future.result(timeout=PROBE_SECONDS)


def run_plan(plan: CellPlan, cell: CellRun, loop_runner: Any = None) -> Any:
    """Run every step of ``plan`` in ``cell``; return the last expression's value.

    ``loop_runner`` (default :func:`run_loop`, same arguments) runs each loop step:
    ``--compare`` wraps it with its timing runs.
    """
    __tracebackhide__ = True
    check_plan_conditions(plan.steps, cell.namespace)  # refusals that depend on types
    folder = disk.resolve_folder(cell.options.cache)
    if folder is not None and plan.loops:
        disk.Store(folder)  # a folder that is not safe to use is refused before the cell runs
    _runs.clear()
    run_step = loop_runner or run_loop
    value = None
    for step in plan.steps:
        if isinstance(step, KernelStep):
            exec(step.code, cell.namespace)
            continue
        value = run_step(step, cell)
    if plan.last_expr is not None:
        value = eval(plan.last_expr, cell.namespace)
    elif not (plan.steps and isinstance(plan.steps[-1], LoopStep) and plan.steps[-1].is_last_expr):
        value = None
    return value


def run_loop(step: LoopStep, cell: CellRun, dry: bool = False, label: str = "") -> Any:
    """Run one parallel loop to the end, commit it, bind what plain Python would bind.

    ``dry`` runs the iterations for timing only (``--compare``/``--sweep``): no effect
    is applied, no output shown, nothing bound, progress shown under ``label``; it
    returns the run record.
    """
    __tracebackhide__ = True
    options, namespace = cell.options, cell.namespace
    check_conditions(step.analysis, namespace)
    iterable, user_bar = _unwrap_tqdm(eval(step.iterable, namespace))
    if dry and options.compare_sample:
        iterable = list(itertools.islice(iter(iterable), options.compare_sample))
    backend = cell.backend_factory(options)
    accumulator = _new_accumulator(step.kind)
    run = LoopRun(
        step=step,
        cell=cell,
        backend=backend,
        listener=_display(step, cell, dry, label, user_bar),
        record=RunRecord(step.source_line, backend.name, backend.n_workers, _length(iterable)),
        accumulator=accumulator,
        dry=dry,
    )
    if not dry:  # a timing run's record is --compare's, never last_run()
        _runs.append(run.record)
    started = time.perf_counter()
    items = _Source(iter(iterable))
    supervisor = None
    run.cache = None if dry else _open_cache(step, cell)
    try:  # from here on, the stop button at any moment leaves nothing behind
        seen = None if dry else _starts_in_kernel(run)
        if seen is not None:
            run.shown = True
            run.listener.on_start(run.record)
            finished = _kernel_first(run, items, seen)
        if seen is None or not finished:
            if seen is not None:  # the workers' start-up is what follows the kernel's part
                started = time.perf_counter()
            payload = _payload(step, cell, backend, dry, split=run.cache is not None)
            run.streams = LoopStreams.start(payload, backend, run.streams)
            run.ref = backend.publish(payload)
            supervisor = Supervisor(
                backend, options.timeout, backend.n_workers * IN_FLIGHT_PER_WORKER
            )
            run.record.startup = time.perf_counter() - started
            if not run.shown:
                run.shown = True
                run.listener.on_start(run.record)
            with _routed_output(backend.in_kernel), routed_in_kernel(backend.in_kernel):
                _drive(run, items, supervisor)
        if items.error is not None:
            run.record.outcome = ERROR
        if not dry:
            _remember(run)
    except KeyboardInterrupt:
        with held_interrupts(drop=True):
            _say_how_far(run)
            if not dry:
                _bind_locals(run, namespace)
        _raise_in_cell(KeyboardInterrupt(), cell.filename, step.lineno)
    except Exception:
        if not dry:
            _bind_locals(run, namespace)  # an effect failed in the kernel: as far as it got
        raise
    finally:
        with held_interrupts(drop=True):  # clean-up is never cut short
            _clean_up(run, supervisor, dry)
    if dry:
        if run.failures:
            raise run.failures[0][2]
        if items.error is not None:
            raise items.error
        return run.record
    return _finish(run, namespace, options, cell.filename, items.error)


def _clean_up(run: LoopRun, supervisor: Supervisor | None, dry: bool) -> None:
    """End of a run, however it ended: stop its workers, release its payload, close its record."""
    if supervisor is not None:
        supervisor.close()
    if run.ref is not None:
        run.backend.unpublish(run.ref)
    run.record.ended = time.time()
    _iterations_run[0] += run.record.done
    if run.shown:
        run.listener.on_finish(run.record)
    if run.streams is not None and not dry:
        run.streams.finish(notice=not run.step.analysis.seeds_itself)
    if run.cache is not None:
        _save_committed(run)
        _close_cache(run.cache, run.backend.in_kernel)


class _Source:
    """The loop's items, taken lazily; an iterable that raises part-way ends here.

    Its exception is kept (the items it yielded before run and commit, as in the plain
    loop) and raised once they are committed.
    """

    def __init__(self, items: Iterator):
        self.items = items
        self.error: Exception | None = None

    def __iter__(self) -> _Source:
        return self

    def __next__(self) -> Any:
        if self.error is not None:
            raise StopIteration
        try:
            return next(self.items)
        except StopIteration:
            raise
        except Exception as exc:  # the iterable's own error: raised after the prefix commits
            self.error = exc
            raise StopIteration from None


def _unwrap_tqdm(iterable: Any) -> tuple[Any, Any]:
    """``for x in tqdm(xs)``: the engine takes from ``xs``; the user's bar follows commits."""
    from .display import unwrap_tqdm

    return unwrap_tqdm(iterable)


def _display(step: LoopStep, cell: CellRun, dry: bool, label: str, user_bar: Any) -> RunListener:
    """The loop's display: its bar (or the user's tqdm bar) and summary; a dry run's progress."""
    if user_bar is None:
        shown = cell.listener(label if dry else step.source_line)
    else:  # the user's bar is the one shown: parmagic's own shows no second one
        from .display import TqdmFollower

        if dry and label:
            user_bar.set_description(label.split(":")[0], refresh=False)
        quiet = cell.with_options(cell.options.with_changes(progress=False))
        shown = TqdmFollower(user_bar, quiet.listener(step.source_line))
    return _TimingListener(shown) if dry else shown


class _SilentListener(PlainListener):
    """Swallows output: a dry run shows nothing."""

    def on_output(self, index: int, stream: str, text: str) -> None:
        """Dropped."""

    def on_display(self, index: int, data: dict, metadata: dict, **kwargs: Any) -> None:
        """Dropped."""


class _TimingListener(_SilentListener):
    """A dry run's display: its progress (``shown``, a bar or a line), not its output."""

    def __init__(self, shown: RunListener) -> None:
        self.shown = shown

    def on_start(self, record: RunRecord) -> None:
        """Passed on."""
        self.shown.on_start(record)

    def on_progress(self, record: RunRecord, busy: int) -> None:
        """Passed on."""
        self.shown.on_progress(record, busy)

    def on_finish(self, record: RunRecord) -> None:
        """Passed on."""
        self.shown.on_finish(record)


@contextlib.contextmanager
def _routed_output(in_kernel: bool) -> Iterator[None]:
    """For in-kernel backends, capture each batch's prints per thread so they commit in order."""
    if not in_kernel:
        yield
        return
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RoutingStream(out, "stdout"), RoutingStream(err, "stderr")
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
    step: LoopStep, cell: CellRun, backend: Backend, dry: bool = False, split: bool = False
) -> Payload:
    namespace = cell.namespace
    captured = {n: namespace[n] for n in step.analysis.captured if n in namespace}
    captured[SLICE] = slice
    key = uuid.uuid4().hex
    return Payload(
        key=key,
        code=marshal.dumps(step.batch_code),
        filename=cell.filename,
        source=cell.source,
        captured=captured,
        collect=cell.options.on_error == "collect",
        timeout=cell.options.timeout,
        pickle_locals=backend.pickles_locals,
        output_per_thread=backend.output_per_thread,
        private_random=backend.shares_worker_process,
        track_changes=backend.pickles_locals,
        effect_sites=len(step.replays),
        lineno=step.lineno,
        # process workers capture displays, warnings, log records under the kernel's settings
        rich=None if backend.in_kernel or dry else settings(),
        env=None if backend.in_kernel else capture_environment(key),
        split=split,
        in_kernel=backend.in_kernel,
    )


# --------------------------------------------------------------------------- --cache


def _open_cache(step: LoopStep, cell: CellRun) -> disk.LoopCache | None:
    """The loop's entries on disk (``--cache``), or None: off, or the loop cannot be keyed."""
    folder = disk.resolve_folder(cell.options.cache)
    if folder is None:
        return None
    roots = {effect.root for effect in step.analysis.effects}  # applied in the kernel
    names = sorted(step.analysis.captured - roots)
    captured = {n: cell.namespace[n] for n in names if n in cell.namespace}
    found = disk.open_loop(folder, step.key_source, captured, step.source_line)
    if isinstance(found, str):
        print(f"parmagic: --cache: this loop is not cached: {found}", file=sys.stderr)
        return None
    return found


def _close_cache(cache: disk.LoopCache, in_kernel: bool) -> None:
    """Say once why some iterations were not kept; keep the folder under its size limit.

    Iterations that ran in the kernel (threads, serial, auto-serial's rest) may have changed
    a captured object, or a global that a called function reads, in place: the entries of a
    run during which the key changed are removed (replaying them would skip that change).
    """
    if in_kernel and cache.written and not cache.key_still_holds():
        cache.forget_written()
        cache.note(
            "key",
            "the loop changed a captured value (or a global a called function reads) while "
            "it ran: this run's iterations are not cached",
        )
    for note in cache.notes:
        print(f"parmagic: --cache: {note}", file=sys.stderr)
    if cache.written:
        cache.store.evict()


def _from_cache(run: LoopRun, start: int, chunk: list) -> list[tuple[int, list, Any]]:
    """A chunk as pieces (start, items, cached result or None): cached iterations are
    replayed, the others run."""
    entries = [run.cache.lookup(k, item) for k, item in enumerate(chunk, start)]
    pieces, offset = [], 0
    for hit, group in itertools.groupby(entries, key=lambda entry: entry is not None):
        found = list(group)
        items = chunk[offset : offset + len(found)]
        result = _cached_result(run, start + offset, found) if hit else None
        pieces.append((start + offset, items, result))
        offset += len(found)
    return pieces


def _cached_result(run: LoopRun, start: int, entries: list[dict]) -> BatchResult:
    """Cached iterations as a batch result, committed like a worker's (no time taken)."""
    now = time.perf_counter()
    result = BatchResult(start=start, ran=len(entries), pid=0, from_cache=True)
    result.marks, result.end = [now] * len(entries), now
    for k, entry in enumerate(entries, start):
        n = len(result.effects)
        result.effects += entry["effects"]
        result.outputs += [
            (k, stream, text, before + n) for stream, text, before in entry["outputs"]
        ]
        result.locals.update(entry["locals"])
        result.drew += [i for i in entry.get("drew", ()) if i not in result.drew]
    if not run.backend.pickles_locals:
        import cloudpickle

        result.locals = {name: cloudpickle.loads(v) for name, v in result.locals.items()}
    return result


def _bind_target(run: LoopRun, item: Any) -> None:
    """After cached iterations, the loop target is the kernel's own last item."""
    step = run.step
    if step.bind_target is None or not step.bind_locals:
        return
    names = {ITEM: item}
    exec(step.bind_target, names)
    run.final_locals.update({n: _KernelObject(names[n]) for n in step.target_names})


def _save_committed(run: LoopRun) -> None:
    """Write the entries of the batches committed so far (--cache)."""
    while run.unsaved:
        result, chunk = run.unsaved.pop(0)
        _save(run, result, chunk)


def _save(run: LoopRun, result: BatchResult, chunk: list) -> None:
    """Keep each committed iteration of a worker's batch on disk (written by the kernel)."""
    if result.refs or result.item_changes:
        run.cache.note("changed", disk.ITEM_CHANGED)
        return
    failed = {k for k, _, _ in result.errors}
    ends = {k: (n, names) for k, n, names in result.splits}
    last = result.start + result.ran - 1
    ends.setdefault(last, (len(result.effects), result.locals))
    outputs: dict[int, list] = {}
    for k, stream, text, before in result.outputs:
        outputs.setdefault(k, []).append((stream, text, before))
    begin = 0
    for k in range(result.start, last + 1):
        if k not in ends:  # not noted (a batch run again one by one): keep what is known
            return
        end, names = ends[k]
        if k not in failed:
            entry = {
                "index": k,
                "effects": result.effects[begin:end],
                "outputs": [(s, t, b - begin) for s, t, b in outputs.get(k, ())],
                "locals": _stored_locals(run, names),
                "drew": result.drew,  # its batch's generators: they move on after a replay too
            }
            run.cache.save(k, chunk[k - result.start], entry)
        begin = end


def _stored_locals(run: LoopRun, names: dict[str, Any]) -> dict[str, bytes]:
    """Body locals as pickles (the target is bound from the item on replay)."""
    from .worker.environment import pack_locals

    target = set(run.step.target_names)
    stored, values = {}, {}
    for name, value in names.items():
        if name in target:
            continue
        if isinstance(value, _KernelObject):  # the object an effect used: kept as a copy
            values[name] = value.value
        elif not run.backend.pickles_locals:
            values[name] = value
        elif isinstance(value, bytes):  # pickled in the worker already
            stored[name] = value
    stored.update(pack_locals(values)[0])
    return stored


Pending = tuple[int, list]  # (first iteration, items) of a batch not yet committed


class Flight:
    """A loop's batches between submission and commit.

    ``in_flight``: submitted, not settled; ``ready``: settled, waiting for the
    batches before them; ``retry``: parts of batches lost with a dead worker, to
    submit again before new items. Commits go strictly by ``next_start``.
    """

    def __init__(self, items: Iterator, batcher: Batcher, supervisor: Supervisor, ref: Any):
        self.items = items
        self.batcher = batcher
        self.supervisor = supervisor
        self.ref = ref
        self.max_in_flight = supervisor.backend.n_workers * IN_FLIGHT_PER_WORKER
        self.in_flight: dict[Future, Pending] = {}
        self.ready: dict[int, tuple[BatchResult | None, list]] = {}
        self.retry: list[Pending] = []
        self.next_start = 0
        self.submitted = 0
        self.exhausted = False
        #: batches to take from the iterable at most (auto-serial's probe wave); None: all
        self.batch_cap: int | None = None
        self.probe_size = 1  # iterations in each batch of the probe wave
        self.taken = 0
        #: --cache: a chunk -> its pieces, the cached ones with their result (_from_cache)
        self.lookup: Callable[[int, list], list[tuple[int, list, Any]]] | None = None

    def fill(self) -> None:
        """Submit batches until every worker has its share in flight or nothing is left."""
        while len(self.in_flight) < self.max_in_flight and (self.retry or not self.exhausted):
            if self.retry:
                start, chunk = self.retry.pop(0)
            else:
                if self.batch_cap is not None and self.taken >= self.batch_cap:
                    return
                if len(self.ready) >= CACHED_AHEAD:  # cached results wait their turn
                    return
                # auto-serial's probe wave: small batches, so that a loop that ends in the
                # kernel has not sent whole batches to the workers first
                probing = self.batch_cap is not None and not self.batcher.fixed  # -c wins
                size = self.probe_size if probing else self.batcher.next_size()
                chunk = list(itertools.islice(self.items, size))
                if not chunk:
                    self.exhausted = True
                    return
                start, self.submitted = self.submitted, self.submitted + len(chunk)
                if self.lookup is not None:
                    self._take_cached(start, chunk)
                    continue
                self.taken += 1
            # a worker process being started must not be cut off half-way (it would be
            # left waiting for its set-up forever): the stop button lands after the submit
            with held_interrupts(not self.supervisor.backend.in_kernel):
                future = self.supervisor.submit(run_batch, self.ref, start, chunk)
                self.in_flight[future] = (start, chunk)

    def _take_cached(self, start: int, chunk: list) -> None:
        """--cache: cached pieces of a chunk are ready at once; the others are submitted."""
        pieces = self.lookup(start, chunk)
        for piece_start, items, cached in pieces:
            if cached is not None:
                self.ready[piece_start] = (cached, items)
            else:
                with held_interrupts(not self.supervisor.backend.in_kernel):
                    future = self.supervisor.submit(run_batch, self.ref, piece_start, items)
                    self.in_flight[future] = (piece_start, items)
        if any(cached is None for _, _, cached in pieces):
            self.taken += 1  # only batches that run count for auto-serial's probe wave

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for a batch to finish; settle every finished one."""
        done, _ = wait(list(self.in_flight), timeout=timeout, return_when=FIRST_COMPLETED)
        self.settle(done)

    def settle(self, done: Any) -> None:
        """Move finished batches to ``ready`` (or their lost parts to ``retry``)."""
        for future in done:
            start, chunk = self.in_flight.pop(future)
            if future.cancelled():  # by us (stop) or by the cluster: not run, so run again
                self.supervisor.drop(future)
                self.retry.append((start, chunk))
                continue
            for piece in self.supervisor.settle(future, start, chunk):
                if piece.result is None:
                    self.retry.append((piece.start, piece.chunk))
                else:
                    self.ready[piece.start] = (piece.result, piece.chunk)
        self.retry.sort(key=lambda piece: piece[0])

    def next_ready(self) -> tuple[BatchResult, list] | None:
        """The batch that commits next, if it has arrived (it stays until :meth:`committed`)."""
        return self.ready.get(self.next_start)

    def committed(self, count: int) -> None:
        """The next batch committed ``count`` iterations."""
        self.ready.pop(self.next_start, None)
        self.next_start += count

    def cancel(self) -> list[Pending]:
        """Stop: cancel queued batches; return every batch not committed, in order."""
        for future in self.in_flight:
            future.cancel()
        pending = list(self.in_flight.values()) + [(s, c) for s, (_, c) in self.ready.items()]
        pending += self.retry
        self.in_flight.clear()
        self.ready.clear()
        self.retry.clear()
        return sorted(pending, key=lambda piece: piece[0])

    @property
    def busy(self) -> int:
        """Workers holding a batch (at most)."""
        return min(len(self.in_flight), self.supervisor.backend.n_workers)


def _drive(run: LoopRun, items: Iterator, supervisor: Supervisor) -> None:
    __tracebackhide__ = True
    batcher = Batcher(run.record.total, run.backend.n_workers, run.cell.options.chunksize)
    flight = Flight(items, batcher, supervisor, run.ref)
    flight.next_start = flight.submitted = run.record.done + run.record.failed
    if run.cache is not None:
        flight.lookup = lambda start, chunk: _from_cache(run, start, chunk)
    judge = None if run.from_kernel_first else _auto_serial(run, flight)
    run.judge = judge
    try:
        if _pump(run, flight, batcher, judge):
            start = flight.next_start
            if not _plain_rest(run, flight, judge):
                flight = _to_kernel(run, flight, batcher, judge.note)
                run.record.ran_in_kernel_from = start
                with _routed_output(not supervisor.backend.in_kernel):
                    _pump(run, flight, batcher, None)
    except KeyboardInterrupt:
        _interrupted(run, flight, flight.supervisor)
        raise
    except Exception:
        # an effect failed in the kernel (say a KeyError in `d[k] += 1`), as it would
        # have in the serial loop: stop the rest and raise it as it is
        _cancel_rest(run, flight)
        run.record.outcome = ERROR
        raise
    run.record.outcome = ERROR if (run.first_error or run.failures) else SUCCESS


def _pump(run: LoopRun, flight: Flight, batcher: Batcher, judge: AutoSerial | None) -> bool:
    """Submit, settle and commit in order until the loop ends; True when ``judge`` says the
    rest runs in the kernel (everything submitted so far is committed by then)."""
    __tracebackhide__ = True
    stop = False
    committed = 0
    while True:
        flight.fill()
        if not flight.in_flight and flight.next_ready() is None:
            break
        if flight.in_flight:
            flight.wait(POLL_SECONDS)
        while not stop and (ready := flight.next_ready()) is not None:
            result, chunk = ready
            if _stopped_by_sigint(result):
                raise KeyboardInterrupt  # a worker got the stop button first
            began = time.perf_counter()
            with held_interrupts():  # whole batches: the stop button lands after this one
                stop = _commit(run, result, chunk)
                flight.committed(len(chunk))
                _save_committed(run)
            if result.from_cache:
                continue  # took no time: nothing for the batcher or the judge to learn
            batcher.observe(result)
            batcher.observe_commit(len(chunk), time.perf_counter() - began)
            if judge is not None and not judge.decided:
                committed += 1
                judge.observe(result, run.commit_work)
                total = run.record.total
                remaining = None if total is None else total - flight.submitted
                if flight.exhausted:
                    remaining = 0
                judge.judge(committed, remaining, flight.exhausted)
                if judge.decided:  # workers keep the loop (no cap), or the wave drains first
                    flight.batch_cap = flight.taken if judge.switch else None
        if stop:
            _cancel_rest(run, flight)
            return False
        run.listener.on_progress(run.record, flight.busy)
    return judge is not None and judge.switch and not flight.exhausted


def _auto_serial(run: LoopRun, flight: Flight) -> AutoSerial | None:
    """The judge of ``auto_serial`` for this run, or None where it does not apply."""
    backend = run.backend
    if not run.cell.options.auto_serial or not backend.may_finish_in_kernel:
        return None
    if isinstance(run.listener, _SilentListener):
        return None  # --compare's timing runs
    judge = AutoSerial(run.record.total, backend.n_workers, backend.n_workers)
    flight.batch_cap = backend.n_workers  # the probe wave: a batch a worker
    flight.probe_size = probe_size(run.record.total, backend.n_workers)
    return judge


#: auto-serial's memory: (loop body, its line, backend, -n) -> what the loop's last run showed
_seen_loops: dict[tuple[str, str, str, int], SeenLoop] = {}
#: Loops remembered at most (the oldest is forgotten first).
SEEN_LOOPS_KEPT = 256
#: A loop started in the kernel moves to the workers only on a chunk at least this long.
KERNEL_FIRST_JUDGED_SECONDS = 0.002


def _loop_key(run: LoopRun) -> tuple[str, str, str, int]:
    # the loop's line too: pmap(f) and pmap(g) share their body, not their costs
    step = run.step
    return (step.key_source, step.source_line, run.backend.name, run.backend.n_workers)


def _starts_in_kernel(run: LoopRun) -> SeenLoop | None:
    """What the loop's last run showed, where that says to start it in the kernel."""
    if not run.cell.options.auto_serial or not run.backend.may_finish_in_kernel:
        return None
    if isinstance(run.listener, _SilentListener) or not _plain_allowed(run):
        return None
    seen = _seen_loops.get(_loop_key(run))
    if not starts_in_kernel(seen, run.record.total, run.backend.n_workers):
        return None
    return seen


def _remember(run: LoopRun) -> None:
    """Keep what auto-serial's judge learned of this loop for its next run."""
    judge = run.judge
    if judge is None or judge.cost() is None:
        return
    key = _loop_key(run)
    _seen_loops.pop(key, None)
    _seen_loops[key] = SeenLoop(
        plain_cost=judge.plain_cost(),
        worker_cost=judge.cost() or 0.0,
        commit_per_item=judge.commit_per_item,
        startup=run.record.startup,
        drew=bool(run.streams is not None and run.streams.drew),
    )
    while len(_seen_loops) > SEEN_LOOPS_KEPT:
        _seen_loops.pop(next(iter(_seen_loops)))


def _kernel_first(run: LoopRun, items: _Source, seen: SeenLoop) -> bool:
    """A loop that its last run showed cheaper in the kernel starts there, as the plain
    loop (:mod:`parmagic.plainrest`), in chunks growing from one iteration; True when it
    ended there (finished or failed). Where a chunk shows the iterations dearer than
    remembered, so that workers would now gain, the workers take the rest (False; the
    memory is dropped), unless an iteration has drawn a random number: the kernel's
    iterations drew the plain loop's numbers, so the rest stays there and draws them too
    (moving it would make the numbers depend on timing).
    """
    __tracebackhide__ = True
    namespace = run.cell.namespace
    captured = {n: namespace[n] for n in run.step.analysis.captured if n in namespace}
    run.streams = LoopStreams.start_in_kernel(captured)
    drew = False
    run.record.ran_in_kernel_from = 0
    run.record.auto_serial_note = (
        f"{seen.plain_cost * 1e6:.1f} us per iteration when it last ran: "
        f"{run.backend.n_workers} workers would take longer, their start-up included"
    )
    loop = plainrest.PlainLoop(run.step, namespace, run.accumulator, run.listener)
    source = plainrest.guarded_items(items)
    total, start, size = run.record.total or 0, 0, 1
    while chunk := list(itertools.islice(source, size)):
        done = _plain_chunk(run, loop, start, chunk)
        start += len(chunk)
        if done.error is not None:
            break
        per = done.seconds / len(chunk)
        # a chunk of a millisecond or two says little (a first call's warm-up): not judged
        judged = done.seconds >= KERNEL_FIRST_JUDGED_SECONDS and start < total
        if judged and not drew and workers_gain(per, total - start, seen, run.backend.n_workers):
            # a generator's state takes ~50 us to read: only looked at before moving
            drew = bool(run.streams.moved(run.streams.before))
            if not drew:
                _seen_loops.pop(_loop_key(run), None)
                run.record.ran_in_kernel_from = None
                run.record.auto_serial_note = ""
                run.from_kernel_first = True
                return False
        size = min(size * 8, plainrest.chunk_size(per))
    run.record.outcome = ERROR if run.first_error else SUCCESS
    return True


def _plain_rest(run: LoopRun, flight: Flight, judge: AutoSerial) -> bool:
    """Auto-serial: run the rest of the loop in the kernel as the plain cell runs it
    (:mod:`parmagic.plainrest`); True when the loop ended there (finished or failed),
    False where the batch path must take the rest.

    It takes over only where nothing tells the two apart: no option that acts per
    iteration (``--cache``, ``--timeout``, ``--on-error collect``), no random draw so far
    (iterations draw from streams of their own). Nothing drew before the rest, so the
    kernel's generators are as the loop found them: an iteration of the rest that draws
    draws the plain loop's numbers, whichever iteration the rest started from.
    """
    __tracebackhide__ = True
    if not _may_run_plain(run, flight, judge):
        return False
    run.record.ran_in_kernel_from = flight.next_start
    run.record.auto_serial_note = judge.note
    _bind_locals(run, run.cell.namespace)  # the workers' part first, as a plain loop binds them
    run.final_locals = {}
    loop = plainrest.PlainLoop(run.step, run.cell.namespace, run.accumulator, run.listener)
    items = plainrest.guarded_items(flight.items)
    size = plainrest.chunk_size(judge.cost())
    while chunk := list(itertools.islice(items, size)):
        start = flight.next_start
        flight.next_start = flight.submitted = start + len(chunk)
        if _plain_chunk(run, loop, start, chunk).error is not None:
            return True
    return True


def _may_run_plain(run: LoopRun, flight: Flight, judge: AutoSerial) -> bool:
    return (
        _plain_allowed(run)
        and not (run.streams is not None and run.streams.drew)
        and not (flight.retry or flight.in_flight or flight.ready)
    )


def _plain_allowed(run: LoopRun) -> bool:
    """No option acts per iteration (``--cache``, ``--timeout``, ``--on-error collect``)."""
    return (
        run.step.kernel_loop is not None
        and run.cache is None
        and run.cell.options.timeout is None
        and not run.collect
    )


def _plain_chunk(
    run: LoopRun, loop: plainrest.PlainLoop, start: int, chunk: list
) -> plainrest.ChunkRun:
    """Run a chunk as the plain loop, record it, show the progress; a failing iteration
    ends it (the caller stops there), the stop button is raised here."""
    __tracebackhide__ = True
    with held_interrupts():  # run and recorded together: the record says what was done
        done = loop.run(chunk)
        _record_chunk(run, start, chunk, done)
    run.listener.on_progress(run.record, 1)
    if done.error is not None:
        run.record.cancelled.extend(range(start + done.ran + 1, start + len(chunk)))
        if isinstance(done.error, KeyboardInterrupt):
            _say_cut(run, start + done.ran, done.cut)
            raise KeyboardInterrupt
    return done


def _record_chunk(run: LoopRun, start: int, chunk: list, done: plainrest.ChunkRun) -> None:
    """A chunk of the rest in the record: one task timed as a whole (its iterations each
    get the mean), and the failed iteration with its item."""
    failed = done.error is not None and not isinstance(done.error, KeyboardInterrupt)
    task = TaskRecord(
        index=start,
        count=done.ran + failed,
        start=done.started,
        marks=[0.0],
        end=done.seconds,
        worker=os.getpid(),
    )
    if failed:
        k = start + done.ran
        task.errors[k], task.items[k] = done.error, chunk[done.ran]
        _note_failure(run, k, chunk[done.ran], done.error, "")
    run.record.add_task(task)


def _say_cut(run: LoopRun, k: int, cut: bool) -> None:
    """An iteration of the rest that the stop button cut part-way keeps what it did."""
    if cut:
        print(
            f"parmagic: iteration {k} ran on in the kernel past the stop button's grace and "
            "was stopped part-way: what it did before stays, as in a plain loop",
            file=sys.stderr,
        )


def _to_kernel(run: LoopRun, flight: Flight, batcher: Batcher, note: str) -> Flight:
    """Every worker batch is committed: run the rest in the kernel, as ``-n 1`` would.

    The workers' locals (pickled) become plain values first; the payload for the
    workers is released and the kernel's own one (captured values as they are) used.
    """
    from .backends.local import SerialBackend

    serial = SerialBackend()
    payload = _payload(run.step, run.cell, serial, split=run.cache is not None)
    if run.streams is not None and run.streams.mode == "streams":
        run.streams.send(payload)  # the rest draws from its iterations' own streams
    ref = serial.publish(payload)
    if run.backend.pickles_locals and run.final_locals:
        import cloudpickle

        run.final_locals = {
            k: v if isinstance(v, _KernelObject) else cloudpickle.loads(v)
            for k, v in run.final_locals.items()
        }
    run.backend.unpublish(run.ref)
    run.backend, run.ref = serial, ref
    kernel = Flight(flight.items, batcher, Supervisor(serial, run.cell.options.timeout, 1), ref)
    kernel.next_start, kernel.submitted = flight.next_start, flight.submitted
    kernel.lookup = flight.lookup
    kernel.retry = flight.retry
    run.record.auto_serial_note = note
    return kernel


def _stopped_by_sigint(result: BatchResult) -> bool:
    return any(isinstance(exc, KeyboardInterrupt) for _, exc, _ in result.errors)


@dataclass
class _FailedEffect:
    """An effect statement raised in the kernel: its index in the batch and the error."""

    index: int
    error: BaseException


def _commit(run: LoopRun, result: BatchResult, chunk: list) -> bool:
    """Apply a batch's iterations in order; return True when the loop must stop.

    Effects come in the order the worker made them, so replaying them in that
    order is replaying them in iteration order; each output is shown, and each
    changed item merged into the kernel's own object, after the effects made
    before it.
    """
    __tracebackhide__ = True
    began = time.perf_counter()
    if result.refs:
        _resolve_refs(run, result, chunk)
    outputs: dict[int, str] = {}
    applied = 0
    failed = None
    for before, event in _events(result):
        if before > applied:  # effects made before this event, in the worker's order
            failed = _replay(run, result.effects[applied:before], applied)
            if failed:
                break
            applied = before
        if isinstance(event, ItemChange):
            failed = _write_back(run, event, _changed_object(run, event, chunk, result), applied)
            if failed:
                break
            continue
        k, stream, text, _ = event
        if stream in RICH_STREAMS:  # a display, warning or log record: replayed in the kernel
            if not isinstance(run.listener, _SilentListener):
                replay(run.listener, k, stream, text, run.cell.namespace)
            continue
        run.listener.on_output(k, stream, text)
        outputs[k] = outputs.get(k, "") + text
    else:
        failed = _replay(run, result.effects[applied:] if applied else result.effects, applied)
    if failed is not None:
        _locals_at_failed_effect(run, result, chunk, failed.index)
        raise failed.error
    # what grows with the iterations (effects, item merges, output), not the batch's own cost
    run.commit_work = time.perf_counter() - began
    task = TaskRecord(
        index=result.start,
        count=result.ran,
        start=result.wall0 + (result.marks[0] if result.marks else 0.0),
        marks=result.marks,
        end=result.end,
        worker=result.pid,
        outputs=outputs,
        cached=result.from_cache,
    )
    for k, exc, tb in result.errors:
        item = chunk[k - result.start]
        task.errors[k], task.items[k] = exc, item
        _note_failure(run, k, item, exc, tb)
    run.record.add_task(task)
    if result.refs or any(isinstance(v, EffectValueRef) for v in result.locals.values()):
        _own_locals(run, result, chunk)
    run.final_locals.update(result.locals)
    if result.from_cache:
        _bind_target(run, chunk[result.ran - 1])
    elif run.cache is not None:
        run.unsaved.append((result, chunk))
    if run.streams is not None:
        run.streams.saw(result.drew)
    return run.first_error is not None and not run.collect


def _events(result: BatchResult) -> list[tuple[int, Any]]:
    """Outputs and item changes, each with the count of effects made before it, in order."""
    if not result.item_changes:
        return [(entry[3], entry) for entry in result.outputs]
    keyed = [((e[3], e[0], 0), e) for e in result.outputs]
    keyed += [((c.effects_before, c.k, 1), c) for c in result.item_changes]
    keyed.sort(key=lambda pair: pair[0])
    return [(key[0], event) for key, event in keyed]


def _changed_object(run: LoopRun, change: ItemChange, chunk: list, result: BatchResult) -> Any:
    """The kernel's object a change is for: the iteration's item, or an element of a
    captured container (``models[k]`` reached as ``m = models[k]``)."""
    return _kernel_object(run, ItemRef(change.k, element=change.element), chunk, result)


def _write_back(run: LoopRun, change: ItemChange, item: Any, offset: int) -> _FailedEffect | None:
    """Merge iteration k's changed item into the kernel's object, in place."""
    import cloudpickle

    earlier, _ = run.written.get(id(item), (change.k, item))
    if earlier != change.k:
        what = "its item" if change.element is None else "{}[{!r}]".format(*change.element)
        error = WritebackError(
            f"iteration {change.k} changed {what}, a {type(item).__qualname__} that "
            f"iteration {earlier} had changed too: each worker changed its own "
            "copy, so the second change started from a stale state; give each iteration its "
            "own object"
        )
        return _FailedEffect(offset, error)
    try:
        merge_into(item, cloudpickle.loads(change.state))
    except WritebackError as exc:
        return _FailedEffect(offset, exc)
    run.written[id(item)] = (change.k, item)
    return None


def _resolve_refs(run: LoopRun, result: BatchResult, chunk: list) -> None:
    """Effect values that stand for a loop item become the kernel's own item."""

    def own(value: Any) -> Any:
        return _kernel_object(run, value, chunk, result) if isinstance(value, ItemRef) else value

    if len(run.replay) == 1:
        result.effects = [tuple(own(v) for v in values) for values in result.effects]
    else:
        result.effects = [(eid, tuple(own(v) for v in vs)) for eid, vs in result.effects]


@dataclass
class _KernelObject:
    """A local that is the kernel's own object (a loop item), not a worker's pickled copy."""

    value: Any


def _own_locals(run: LoopRun, result: BatchResult, chunk: list) -> None:
    single = len(run.replay) == 1
    for name, value in result.locals.items():
        if isinstance(value, ItemRef):
            result.locals[name] = _KernelObject(_kernel_object(run, value, chunk, result))
        elif isinstance(value, EffectValueRef):  # the object the effect used (forest[-1])
            record = result.effects[value.record]
            values = record if single else record[1]
            result.locals[name] = _KernelObject(values[value.position])


def _kernel_object(run: LoopRun, ref: ItemRef, chunk: list, result: BatchResult) -> Any:
    """The kernel's object an ItemRef stands for: an item, a part of one, or an element."""
    if ref.element is not None:
        name, key = ref.element
        return run.cell.namespace[name][key]
    item = chunk[ref.k - result.start]
    return item if ref.part < 0 else item[ref.part]


def _replay(run: LoopRun, effects: list, offset: int = 0) -> _FailedEffect | None:
    """Apply effect records in order (a loop with one effect site records bare values).

    An effect that raises stops the replay: the failure names its index in the
    batch (``offset`` + position) and carries the error, raised as it is.
    """
    __tracebackhide__ = True
    replay = run.replay
    if len(replay) == 1 and run.step.kind == "list":  # a comprehension: values are elements
        run.accumulator.extend([values[0] for values in effects])
        return None
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
        return _FailedEffect(offset + j, exc)
    return None


def _locals_at_failed_effect(run: LoopRun, result: BatchResult, chunk: list, j: int) -> None:
    """An effect failed in the kernel: get the locals the serial loop had at that statement.

    The batch runs again (in a worker, effects not applied) up to that effect and
    hands back its frame's locals; the loop's locals then end as serial ones would.
    """
    if not run.step.bind_locals:
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


def _cancel_rest(run: LoopRun, flight: Flight) -> None:
    """The loop stops (an error): cancel queued batches, drop finished ones after the error.

    Batches still running on workers are told to stop (Supervisor.close); their
    results are dropped.
    """
    for start, chunk in flight.cancel():
        run.record.cancelled.extend(range(start, start + len(chunk)))
    run.record.cancelled.sort()


def _interrupted(run: LoopRun, flight: Flight, supervisor: Supervisor) -> None:
    """Stop button: stop the rest now, commit the finished prefix, say how far it got.

    Queued batches are cancelled; running ones are told to stop (SIGINT, or an
    asynchronous KeyboardInterrupt in threads) and hand back the iterations they
    finished; what still runs after INTERRUPT_GRACE_SECONDS is killed.
    """
    __tracebackhide__ = True
    with held_interrupts(drop=True):  # pressed again while stopping: it is stopping already
        _stop_and_commit(run, flight, supervisor)


def _stop_and_commit(run: LoopRun, flight: Flight, supervisor: Supervisor) -> None:
    __tracebackhide__ = True
    backend = run.backend
    try:
        for future in flight.in_flight:
            future.cancel()
        supervisor.interrupt()
        if backend.in_kernel:
            backend.abort()
        done, _ = wait(list(flight.in_flight), timeout=INTERRUPT_GRACE_SECONDS)
        flight.settle(done)
    finally:
        running = list(flight.in_flight)
        if running and not backend.in_kernel and not supervisor.stop_stuck(running):
            backend.abort()
    _commit_prefix(run, flight, time.monotonic() + INTERRUPT_COMMIT_SECONDS)
    _cancel_rest(run, flight)
    _say_how_far(run)


def _say_how_far(run: LoopRun) -> None:
    """The record's outcome and the "how far" line of a stopped run (once)."""
    if run.record.outcome == INTERRUPTED:
        return
    run.record.outcome = INTERRUPTED
    if isinstance(run.listener, _SilentListener):  # --compare/--sweep's timing run
        print(
            "parmagic: interrupted during a --compare/--sweep timing run, before the loop "
            "itself ran; nothing committed",
            file=sys.stderr,
        )
        return
    total = f" of {run.record.total}" if run.record.total is not None else ""
    print(
        f"parmagic: interrupted; {run.record.done} iteration(s){total} committed, in order",
        file=sys.stderr,
    )


def _commit_prefix(run: LoopRun, flight: Flight, deadline: float) -> None:
    """Commit the finished batches in order up to the first gap or stop, or the deadline."""
    __tracebackhide__ = True
    while (ready := flight.next_ready()) is not None and time.monotonic() < deadline:
        result, chunk = ready
        if result is None:
            break
        result = _finished_part(result)
        stop = _commit(run, result, chunk)
        if result.ran < len(chunk):
            flight.committed(result.ran)
            flight.ready[flight.next_start] = (None, chunk[result.ran :])
            break
        flight.committed(len(chunk))
        if stop:
            break


def _finished_part(result: BatchResult) -> BatchResult:
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


def _finish(
    run: LoopRun,
    namespace: dict[str, Any],
    options: Options,
    filename: str,
    source_error: Exception | None = None,
) -> Any:
    """Bind locals, run the else clause, assign a comprehension; raise the failure if any
    (an iteration's, else the iterable's own error after the items it yielded)."""
    __tracebackhide__ = True
    step = run.step
    _bind_locals(run, namespace)
    if run.failures:
        if options.on_error == "collect":
            _raise_in_cell(CollectedErrors(run.failures), filename, step.lineno)
        k, exc, tb = run.first_error
        frames = worker_frames(tb or "", namespace)
        _raise_in_cell(exc, filename, _cell_line(tb, filename) or step.lineno, frames)
    if source_error is not None:
        _raise_in_cell(source_error, filename, step.lineno, keep_traceback=True)
    if step.orelse is not None:
        exec(step.orelse, namespace)
    if step.assign is not None:
        namespace[VALUES] = run.accumulator
        try:
            exec(step.assign, namespace)
        finally:
            namespace.pop(VALUES, None)
    return run.accumulator if step.is_last_expr else None


def _raise_in_cell(
    exc: BaseException,
    filename: str,
    lineno: int,
    frames: list | None = None,
    keep_traceback: bool = False,
) -> NoReturn:
    """Raise ``exc`` so that its traceback ends in the cell, at ``lineno``.

    IPython hides parmagic's frames (``__tracebackhide__``) but never the last one,
    so the last one is the cell's: the error shows the cell's line and source. An
    exception from an in-kernel backend keeps its real frames from the cell's on
    (``%debug`` works); one from a worker process gets stub frames of the worker's
    ``frames`` (parmagic.tracebacks), from the cell's on, or else a stub compiled at
    the cell's line.
    """
    __tracebackhide__ = True
    exc.__suppress_context__ = True  # not "during handling of ..." parmagic's internals
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != filename:
        tb = tb.tb_next
    if tb is not None:
        raise exc.with_traceback(tb)
    if frames and frames[0][0] == filename:
        raise exc.with_traceback(worker_traceback(frames))
    stub = compile("\n" * max(0, lineno - 1) + f"raise {RESERVED}exc", filename, "exec")
    # keep_traceback: the frames below the loop's line that are the user's own (a generator
    # that raised in the kernel), parmagic's dropped
    own = _user_frames(exc.__traceback__) if keep_traceback else None
    exec(stub, {f"{RESERVED}exc": exc.with_traceback(own)})
    raise exc  # not reached


def _user_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` from its first frame outside parmagic's package."""
    package = __file__.rpartition("/")[0] + "/"
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(package):
        tb = tb.tb_next
    return tb


def _cell_line(tb: str, filename: str) -> int | None:
    """The cell line where the worker's traceback ends (its innermost frame in the cell)."""
    lines = re.findall(rf'File "{re.escape(filename)}", line (\d+)', tb or "")
    return int(lines[-1]) if lines else None


def _bind_locals(run: LoopRun, namespace: dict[str, Any]) -> None:
    """Leave the loop target and body locals as the serial loop would (for loops only).

    A local that was a loop item is the kernel's own item (``est`` after
    ``for est in estimators`` is ``estimators[-1]``), not a worker's copy.
    """
    if not run.step.bind_locals or not run.final_locals:
        return
    values = {}
    for name, value in run.final_locals.items():
        if isinstance(value, _KernelObject):
            values[name] = value.value
        elif run.backend.pickles_locals:
            import cloudpickle

            values[name] = cloudpickle.loads(value)
        else:
            values[name] = value
    namespace.update(values)
