"""The ``dask`` backend: batches run as tasks on a dask.distributed cluster.

It uses the kernel's current ``Client`` or, with ``--scheduler ADDRESS``, a
client of its own for that address (opened once, reused while it lives). A
run's payload is the result of one task, replicated to every worker before the
first batch; each batch task names that future, which dask resolves on the
worker to the payload itself, so the payload crosses the network once per worker
per run, never once per task. Being a task's result, not scattered data, it is
computed again if every worker holding it dies (an iteration that kills its
worker is retried on the others by dask): the batches waiting for it then run,
and the culprit fails with ``KilledWorker`` (a ``WorkerDiedError`` here) within
seconds, where scattered data would have been forgotten and the cell would wait
forever. dask futures are wrapped into ``concurrent.futures.Future`` objects.

The workers must be able to import parmagic (and whatever the notebook's code
imports); functions and classes defined in the notebook travel by value.

Running in dask's worker threads needs two things the process backends do not:

- Output is captured per thread (``RoutingStream``, installed once per
  worker process), not by swapping ``sys.stdout`` for the process, since a
  worker runs several batches at once in its threads.
- Threads cannot be killed, and ``--timeout``'s alarm signal works only in a
  main thread. A cancelled task that already runs cannot be stopped by dask:
  when its run ends (``unpublish``) or on :meth:`DaskBackend.abort`, the
  workers raise :class:`BatchAborted` asynchronously in the threads running
  the run's batches, which stop at the next Python line (a long C call
  finishes first), and batches of that run that start later return at once.
  ``--timeout`` is not enforced inside dask workers.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailableError, WorkerDiedError
from ..worker.batch import RoutingStream, raise_in_thread
from ..worker.protocol import Payload, PayloadRef
from .base import Backend
from .publish import dumps_with_buffers, unsendable_error

if TYPE_CHECKING:
    import distributed

MISSING_DASK = "--backend dask needs dask.distributed: pip install 'parmagic[dask]'"
NO_CLIENT = (
    "--backend dask found no dask Client: create one first "
    "(from dask.distributed import Client; client = Client()) "
    "or pass --scheduler tcp://host:port"
)
#: Seconds to wait for a --scheduler address to answer.
CONNECT_TIMEOUT_S = 10
#: A cluster with no worker: how long a run waits for one (nannies restart dead workers).
WORKERS_BACK_SECONDS = 10
#: Seconds ``abort`` waits for the workers to acknowledge the interrupt.
ABORT_WAIT_S = 2.0

#: Clients parmagic opened for ``--scheduler`` addresses, by normalised address.
_clients: dict[str, distributed.Client] = {}
_clients_lock = threading.Lock()


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise BackendUnavailableError(MISSING_DASK) from exc
    return distributed


def _normalise(address: str) -> str:
    return address if "://" in address else f"tcp://{address}"


def client_for(address: str) -> distributed.Client:
    """A live client for ``address``: the kernel's own if it points there, else one of ours."""
    distributed = _distributed()
    address = _normalise(address)
    with _clients_lock:
        client = _clients.get(address)
        if client is not None and client.status not in ("closing", "closed"):
            return client
        try:
            current = distributed.Client.current()
        except ValueError:
            current = None
        if current is not None and current.scheduler.address == address:
            return current
        try:
            # set_as_default=False: the user's own default client stays the default.
            client = distributed.Client(address, set_as_default=False, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise BackendUnavailableError(
                f"cannot reach the dask scheduler at {address}: {exc}"
            ) from exc
        _clients[address] = client
        return client


def close_client(address: str) -> None:
    """Close the client parmagic opened for ``address``, if any (never the user's own)."""
    with _clients_lock:
        client = _clients.pop(_normalise(address), None)
    if client is not None:
        client.close()


class DaskRef(PayloadRef):
    """A run's payload scattered to the cluster; a task receives the payload itself."""

    def __init__(self, key: str, future: distributed.Future):
        self.key = key
        self.future = future

    def load(self) -> Payload:
        """Fetch the payload back from the cluster (the kernel rarely needs this)."""
        return self.future.result()


class DaskBackend(Backend):
    """Tasks on a dask.distributed cluster: the kernel's ``Client``, or ``--scheduler``."""

    name = "dask"
    output_per_thread = True
    may_finish_in_kernel = False  # a cluster the user chose
    deaths_hit_bystanders = True  # KilledWorker also names tasks queued behind the culprit
    shares_worker_process = True  # dask's own threads run beside the batches

    def __init__(self, n_workers: int | None, scheduler: str | None = None):
        _distributed()
        self.scheduler = scheduler
        self._lock = threading.Lock()
        self._pending: set[_TaskFuture] = set()  # until dask reports them settled
        #: run key -> tasks that may still run on the cluster (a cancelled one may)
        self._live: dict[str, int] = {}
        #: cluster-side cancels and interrupts, in order, off the engine's thread
        self._messenger = ThreadPoolExecutor(1, thread_name_prefix="parmagic-dask")
        self._threads: int | None = None  # the cluster's thread count, counted at each publish
        super().__init__(n_workers)  # type: ignore[arg-type]
        self.client()  # fail now, with the way out, rather than in the first run

    # Workers ---------------------------------------------------------------------------------

    @property
    def n_workers(self) -> int:
        """The requested worker count, else the cluster's threads (at least 1), as of the last run."""
        if self._requested:
            return self._requested
        if self._threads is None:
            self._threads = max(1, sum(self.client().nthreads().values()))
        return self._threads

    @n_workers.setter
    def n_workers(self, value: int | None) -> None:
        # None, 0 or a negative count (-n -1) mean every thread of the cluster.
        self._requested = value if value and value > 0 else None

    def client(self) -> distributed.Client:
        """The client runs go through: ``--scheduler``'s, else the kernel's current one."""
        if self.scheduler is not None:
            return client_for(self.scheduler)
        try:
            return _distributed().Client.current()
        except ValueError:
            raise BackendUnavailableError(NO_CLIENT) from None

    def worker_pids(self) -> list[int]:
        """PIDs of the dask worker processes (wherever they run)."""
        return sorted(self.client().run(os.getpid).values())

    def describe(self) -> dict[str, Any]:
        """Backend, thread count, worker pids, scheduler address and dashboard link."""
        client = self.client()
        return {
            **super().describe(),
            "scheduler": client.scheduler.address,
            "dashboard": client.dashboard_link,
            "dask_workers": len(client.nthreads()),
        }

    # Runs -------------------------------------------------------------------------------------

    def publish(self, payload: Payload) -> PayloadRef:
        """Put the payload on every worker once; tasks name it by its dask future."""
        client = self.client()
        threads = client.nthreads()
        if not threads:  # the nannies may be restarting workers that died (a crashed iteration)
            with contextlib.suppress(Exception):
                client.wait_for_workers(1, timeout=WORKERS_BACK_SECONDS)
            threads = client.nthreads()
        self._threads = max(1, sum(threads.values()))  # the cluster may have grown
        if not threads:
            raise BackendUnavailableError(
                f"the dask cluster at {client.scheduler.address} has no workers: "
                "start some (dask worker ADDRESS) and run the cell again"
            )
        try:
            # a task that returns the payload, not scattered data: if every worker holding it
            # dies (an iteration that kills its worker, retried on the others), the scheduler
            # computes it again instead of forgetting it and the batches that need it
            future = client.submit(
                _payload_of, payload, key=f"parmagic_payload-{payload.key}", pure=False
            )
            client.replicate([future])  # on every worker before the first batch
        except Exception as exc:
            try:
                dumps_with_buffers(payload.captured)
            except Exception:
                raise unsendable_error(payload.captured, exc) from None
            raise
        with self._lock:
            self._live.setdefault(payload.key, 0)
        return DaskRef(payload.key, future)

    def unpublish(self, ref: PayloadRef) -> None:
        """The run is over: stop its batches still running, let the cluster drop the payload."""
        with self._lock:
            running = self._live.pop(ref.key, 0)
        if running and isinstance(ref, DaskRef):
            # Batches the engine cancelled (an error, an interrupt) may still run.
            client = ref.future.client
            self._messenger.submit(client.run, _interrupt_runs, [ref.key], on_error="ignore")
        if isinstance(ref, DaskRef):
            ref.future.release()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` as a dask task; a leading :class:`DaskRef` reaches it as a ref."""
        run_key = None
        if args and isinstance(args[0], DaskRef):
            ref, args = args[0], args[1:]
            client, run_key = ref.future.client, ref.key
            task = client.submit(
                _run_task, fn, ref.future, *args, key=f"parmagic_batch-{uuid.uuid4().hex}"
            )
        else:
            task = self.client().submit(fn, *args, pure=False)
        future = _TaskFuture(task, run_key, self)
        with self._lock:
            self._pending.add(future)
            if run_key is not None:
                self._live[run_key] = self._live.get(run_key, 0) + 1
        task.add_done_callback(future.settle)
        return future

    def _settled(self, future: _TaskFuture, ended: bool) -> None:
        """dask reported on ``future``'s task; ``ended``: it finished or failed (not cancelled)."""
        with self._lock:
            self._pending.discard(future)
            if ended and future.run_key in self._live:
                self._live[future.run_key] -= 1

    def _cancel_on_cluster(self, task: distributed.Future) -> None:
        self._messenger.submit(task.cancel)

    def abort(self) -> None:
        """Cancel every task of ours; stop the batches of every run still running on workers."""
        with self._lock:
            pending, self._pending = list(self._pending), set()
            run_keys = sorted(key for key, n in self._live.items() if n)
        tasks = [f.task for f in pending if f.task is not None]
        for future in pending:
            future.drop()
        if not (tasks or run_keys):
            return
        client = tasks[0].client if tasks else self.client()
        if tasks:
            self._messenger.submit(client.cancel, tasks)
        done = self._messenger.submit(client.run, _interrupt_runs, run_keys, on_error="ignore")
        # An interrupt must not hang on an unresponsive cluster: wait a little, then move on.
        wait([done], timeout=ABORT_WAIT_S)

    def close(self) -> None:
        """Cancel what is left; close the client opened for ``--scheduler`` (never the user's)."""
        self.abort()
        self._messenger.shutdown(wait=False)
        if self.scheduler is not None:
            close_client(self.scheduler)


class _TaskFuture(Future):
    """A ``concurrent.futures.Future`` that follows one dask task."""

    def __init__(self, task: distributed.Future, run_key: str | None, backend: DaskBackend):
        super().__init__()
        self.task: distributed.Future | None = task
        self.run_key = run_key
        self._backend = backend

    def cancel(self) -> bool:
        """Cancel here at once, and on the cluster in the background.

        A task already running runs on: its run's ``unpublish`` (or ``abort``)
        stops it.
        """
        task = self.task
        if not super().cancel():
            return False
        if task is not None:
            self._backend._cancel_on_cluster(task)
        return True

    def drop(self) -> bool:
        """Cancel here only (``abort`` cancels the cluster's side of many at once)."""
        return super().cancel()

    def settle(self, task: distributed.Future) -> None:
        """dask's done-callback (on dask's callback thread): copy the outcome over."""
        ended = task.status != "cancelled"
        try:
            if not ended:
                super().cancel()
            else:
                try:
                    result = task.result()
                except BaseException as exc:  # noqa: B036 - every failure reaches the engine
                    self.set_exception(_translate(exc))
                else:
                    self.set_result(result)
        except InvalidStateError:  # cancelled meanwhile by the engine
            pass
        finally:
            self.task = None  # dask forgets a result once nobody holds its future
            self._backend._settled(self, ended)


def _translate(exc: BaseException) -> BaseException:
    """dask's failure, in parmagic's words where it has some."""
    if type(exc).__name__ == "KilledWorker":
        error: BaseException = WorkerDiedError(
            f"a dask worker died while running this batch, and so did the workers it was "
            f"retried on ({exc})"
        )
    elif isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("parmagic"):
        error = BackendUnavailableError(
            "the dask workers cannot import parmagic: install it in the workers' environment"
        )
    else:
        return exc
    error.__cause__ = exc
    return error


# -- worker side ----------------------------------------------------------------------------


class BatchAborted(KeyboardInterrupt):
    """Raised inside a worker thread by :meth:`DaskBackend.abort` to stop a running batch."""


#: Threads running a batch, by run key, for ``_interrupt_runs``.
_running: dict[str, set[int]] = {}
#: Runs aborted lately: their batches that start anyway (the cancel travels on another
#: connection than the interrupt, and can arrive after a thread freed by it took the
#: next batch) return at once.
_aborted: collections.deque[str] = collections.deque(maxlen=64)
_running_lock = threading.Lock()


def _payload_of(payload: Payload) -> Payload:
    """Worker side: the run's payload, as the result of a task the scheduler can rerun."""
    return payload


def _run_task(fn: Callable[..., Any], payload: Payload, *args: Any) -> Any:
    """Worker side: ``fn(ref, *args)`` with the scattered payload, interruptible by abort."""
    try:
        return _run_registered(fn, payload, args)
    except KeyboardInterrupt:
        # Never let a KeyboardInterrupt reach dask: it would shut the worker down.
        raise RuntimeError("parmagic: batch interrupted by abort") from None


def _run_registered(fn: Callable[..., Any], payload: Payload, args: tuple) -> Any:
    _route_output()
    ident = threading.get_ident()
    with _running_lock:
        if payload.key in _aborted:
            raise RuntimeError("parmagic: batch of an aborted run")
        _running.setdefault(payload.key, set()).add(ident)
    try:
        return fn(FreshCopyRef(payload), *args)
    finally:
        with _running_lock:
            _running[payload.key].discard(ident)
            if not _running[payload.key]:
                del _running[payload.key]
            # Drop an interrupt aimed at this thread that has not gone off yet.
            raise_in_thread(ident, None)


class FreshCopyRef(PayloadRef):
    """Worker side: the payload dask keeps, with fresh copies of its captured values.

    dask hands every task of a run the same payload object, so a batch that changed a
    captured value in place (``m = models[k]; m.fit(X, y)``) would change it for the
    batches after it, and for the pristine copy its change is measured against. Each
    load copies the captured values (big buffers are shared, not copied), as a process
    worker unpickles them from the run's file.
    """

    per_thread = True

    def __init__(self, payload: Payload):
        self.key = payload.key
        self.payload = payload

    def load(self) -> Payload:
        """The payload with copies of the captured values as the kernel sent them."""
        import dataclasses
        import pickle

        import cloudpickle

        buffers: list[pickle.PickleBuffer] = []
        data = cloudpickle.dumps(self.payload.captured, protocol=5, buffer_callback=buffers.append)
        return dataclasses.replace(self.payload, captured=pickle.loads(data, buffers=buffers))


_route_lock = threading.Lock()


def _route_output() -> None:
    """Put routing streams in front of the worker's stdout/stderr, once per process."""
    with _route_lock:
        if not isinstance(sys.stdout, RoutingStream):
            sys.stdout = RoutingStream(sys.stdout, "stdout")
        if not isinstance(sys.stderr, RoutingStream):
            sys.stderr = RoutingStream(sys.stderr, "stderr")


def _interrupt_runs(run_keys: list[str]) -> int:
    """Worker side (via ``Client.run``): raise BatchAborted in the threads running these runs."""
    count = 0
    with _running_lock:
        for key in run_keys:
            if key not in _aborted:
                _aborted.append(key)
            for ident in _running.get(key, ()):
                count += raise_in_thread(ident, BatchAborted)
    return count
