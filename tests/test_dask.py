"""``--backend dask`` on a real cluster: a ``dask scheduler`` and two ``dask worker`` processes.

The module's fixture starts them from the venv's ``dask`` command on a free
loopback port, and stops them at the end, checking that none of their
processes (nannies and worker processes included) is left behind.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import parmagic

from .shell import fresh, run, shell, snapshot

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.dask

ROOT = Path(__file__).resolve().parent.parent
DASK = Path(sys.executable).with_name("dask")
START_TIMEOUT = 60


@pytest.fixture(scope="module", autouse=True)
def _no_shell_afterwards() -> Iterator[None]:
    """Later modules may test behaviour outside IPython: drop the shell these tests made."""
    yield
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()


SETUP = """
import os, time
def slow_power(x, p):
    time.sleep(0.02)
    return x ** p
"""

CELL = """
results, pids = [], []
total = 0
for i in range(12):
    v = slow_power(i, 2)
    print("item", i, v)
    results.append(v)
    pids.append(os.getpid())
    total += v
"""


@dataclass
class Cluster:
    """The running test cluster."""

    address: str
    worker_pids: set[int]


@contextlib.contextmanager
def running_cluster(tmp: Path, workers: int, threads: int) -> Iterator[Cluster]:
    """A scheduler and ``workers`` worker processes of ``threads`` threads on 127.0.0.1."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    log = open(tmp / "cluster.log", "wb")  # noqa: SIM115 - closed in teardown
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> None:
        cmd = [str(DASK), *args, "--no-dashboard"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT))

    try:
        scheduler_file = tmp / "scheduler.json"
        start(
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--scheduler-file",
            str(scheduler_file),
        )
        address = _wait_for_address(scheduler_file, procs[0])
        for _ in range(workers):
            start("worker", address, "--nthreads", str(threads), "--nworkers", "1")
        with distributed.Client(address, set_as_default=False, timeout=START_TIMEOUT) as client:
            client.wait_for_workers(workers, timeout=START_TIMEOUT)
            pids = set(client.run(os.getpid).values())
        yield Cluster(address, pids)
    finally:
        _close_parmagic_clients()
        _stop(procs)
        log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A scheduler and two single-threaded workers, gone afterwards."""
    with running_cluster(tmp_path_factory.mktemp("dask"), workers=2, threads=1) as found:
        yield found


def _wait_for_address(path: Path, scheduler: subprocess.Popen) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert scheduler.poll() is None, "dask scheduler exited at start"
        try:
            return json.loads(path.read_text())["address"]
        except (FileNotFoundError, ValueError, KeyError):
            time.sleep(0.1)
    raise TimeoutError("dask scheduler did not write its address")


def _close_parmagic_clients() -> None:
    import parmagic

    parmagic.shutdown()  # closes the client --scheduler opened, before the scheduler goes


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each started process (nannies stop their workers), then check none is left."""
    family = []
    for proc in procs:
        try:
            family += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in reversed(procs):  # workers first, the scheduler last
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _, alive = psutil.wait_procs(family, timeout=10)
    for leftover in alive:
        leftover.kill()
    assert not alive, f"dask processes left behind: {alive}"


def _no_default_client() -> None:
    try:
        distributed.Client.current().close()
    except ValueError:
        pass


# -- the cell magic -------------------------------------------------------------------------


def _plain(ip, capsys: pytest.CaptureFixture) -> tuple[dict, str]:
    fresh(ip, SETUP, capsys)
    result, out, err = run(ip, CELL, capsys)
    assert result.success, err
    return _state(ip.user_ns), out


def _state(ns: dict) -> dict:
    state = snapshot(ns)
    state.pop("pids")
    state.pop("client", None)
    return state


def test_cell_runs_on_the_dask_workers_as_the_plain_cell(
    cluster: Cluster, capsys: pytest.CaptureFixture
) -> None:
    ip = shell()
    expected, plain_out = _plain(ip, capsys)
    fresh(ip, SETUP, capsys)
    magic = f"%%parallel --backend dask --scheduler {cluster.address} --no-progress"
    result, out, err = run(ip, f"{magic}\n{CELL}", capsys)
    assert result.success, err
    assert set(ip.user_ns["pids"]) <= cluster.worker_pids
    assert len(ip.user_ns["pids"]) == 12
    assert _state(ip.user_ns) == expected
    assert out == plain_out  # prints come back, in iteration order


def test_cell_uses_the_kernels_existing_client(
    cluster: Cluster, capsys: pytest.CaptureFixture
) -> None:
    ip = shell()
    expected, plain_out = _plain(ip, capsys)
    fresh(
        ip,
        SETUP + f"from dask.distributed import Client\nclient = Client({cluster.address!r})\n",
        capsys,
    )
    try:
        result, out, err = run(ip, f"%%parallel --backend dask --no-progress\n{CELL}", capsys)
        assert result.success, err
        assert set(ip.user_ns["pids"]) <= cluster.worker_pids
        assert _state(ip.user_ns) == expected
        assert out == plain_out
    finally:
        ip.user_ns["client"].close()


def test_no_client_and_no_scheduler_says_what_to_do(capsys: pytest.CaptureFixture) -> None:
    from parmagic.backends.dask import DaskBackend
    from parmagic.errors import BackendUnavailableError

    _no_default_client()
    with pytest.raises(
        BackendUnavailableError, match=r"create one first .*--scheduler tcp://host:port"
    ):
        DaskBackend(None, None)
    ip = shell()
    fresh(ip, SETUP, capsys)
    result, _, _ = run(ip, f"%%parallel --backend dask --no-progress\n{CELL}", capsys)
    assert isinstance(result.error_in_exec, BackendUnavailableError)


def test_unreachable_scheduler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from parmagic.backends import dask as dask_backend
    from parmagic.backends.dask import DaskBackend
    from parmagic.errors import BackendUnavailableError

    monkeypatch.setattr(dask_backend, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(
        BackendUnavailableError, match="cannot reach the dask scheduler at tcp://127.0.0.1:9"
    ):
        DaskBackend(None, "tcp://127.0.0.1:9")


def test_failing_iteration_commits_the_prefix_and_raises_its_error(
    cluster: Cluster, capsys: pytest.CaptureFixture
) -> None:
    ip = shell()
    fresh(ip, SETUP, capsys)
    cell = (
        f"%%parallel --backend dask --scheduler {cluster.address} --no-progress --chunksize 1\n"
        "out = []\nfor i in range(6):\n    out.append(10 // (3 - i))\n"
    )
    result, _, _ = run(ip, cell, capsys)
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    assert ip.user_ns["out"] == [3, 5, 10]


def test_an_iterable_raising_part_way_commits_the_yielded_prefix(
    cluster: Cluster, capsys: pytest.CaptureFixture
) -> None:
    ip = shell()
    fresh(
        ip, SETUP + "def gen():\n    yield 1\n    yield 2\n    raise RuntimeError('gen')\n", capsys
    )
    cell = (
        f"%%parallel --backend dask --scheduler {cluster.address} --no-progress\n"
        "r = []\nfor x in gen():\n    r.append(x * 10)\n"
    )
    result, _, _ = run(ip, cell, capsys)
    assert isinstance(result.error_in_exec, RuntimeError)
    assert (ip.user_ns["r"], ip.user_ns["x"]) == ([10, 20], 2)  # as the plain loop leaves them


def test_items_and_elements_changed_in_place_reach_the_kernels_objects(
    cluster: Cluster, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("sklearn")
    ip = shell()
    setup = (
        "import numpy as np, pandas as pd\n"
        "from sklearn.linear_model import LinearRegression, Ridge\n"
        "X = np.arange(40.0).reshape(20, 2); y = X @ [1.0, 2.0]\n"
        "estimators = [LinearRegression(), Ridge()]\n"
        "frames = [pd.DataFrame({'x': [1, 2]}), pd.DataFrame({'x': [3]})]\n"
        "models = {'a': LinearRegression(), 'b': Ridge()}\n"
        "it = iter(range(100))\n"
    )
    fresh(ip, SETUP + setup, capsys)
    magic = f"%%parallel --backend dask --scheduler {cluster.address} --no-progress\n"
    cell = (
        "fitted = []\nfor est in estimators:\n    est.fit(X, y)\n    fitted.append(est)\n"
        "for df in frames:\n    df['x2'] = df['x'] ** 2\n"
        "for k in ['a', 'b']:\n    m = models[k]\n    m.fit(X, y)\n"
    )
    result, _, err = run(ip, magic + cell, capsys)
    assert result.success, err
    ns = ip.user_ns
    assert all(hasattr(e, "coef_") for e in [*ns["estimators"], *ns["models"].values()])
    assert ns["est"] is ns["estimators"][-1] and ns["fitted"][0] is ns["estimators"][0]
    assert [f["x2"].tolist() for f in ns["frames"]] == [[1, 4], [9]]
    assert ns["m"] is ns["models"]["b"]
    result, _, _ = run(
        ip, magic + "out = []\nfor i in range(4):\n    out.append(next(it))\n", capsys
    )
    assert isinstance(result.error_in_exec, parmagic.CapturedChangeError)
    assert next(ns["it"]) == 0  # the kernel's iterator never moved


def test_timeout_fails_only_the_slow_iteration(
    cluster: Cluster, capsys: pytest.CaptureFixture
) -> None:
    """--timeout on dask: a worker thread past the limit fails that iteration, as on loky."""
    ip = shell()
    fresh(ip, SETUP, capsys)
    cell = (
        f"%%parallel --backend dask --scheduler {cluster.address} --no-progress --chunksize 1"
        " --timeout 0.5 --on-error collect\n"
        "out = []\nfor i in range(5):\n    if i == 2:\n        while True:\n            pass\n"
        "    out.append(i)\n"
    )
    result, _, err = run(ip, cell, capsys)
    exc = result.error_in_exec
    assert isinstance(exc, parmagic.CollectedErrors), err
    [(index, item, error)] = exc.failures
    assert (index, item) == (2, 2) and isinstance(error, parmagic.IterationTimeoutError)
    assert "iteration 2" in str(error) and "--timeout 0.5" in str(error)
    assert ip.user_ns["out"] == [0, 1, 3, 4]


def test_unpicklable_captured_value_is_named(
    cluster: Cluster, capsys: pytest.CaptureFixture
) -> None:
    from parmagic.errors import UnsendableValueError

    ip = shell()
    fresh(ip, SETUP + "import threading\nlk = threading.Lock()\n", capsys)
    cell = (
        f"%%parallel --backend dask --scheduler {cluster.address} --no-progress\n"
        "out = []\nfor i in range(3):\n    out.append((i, lk))\n"
    )
    result, _, _ = run(ip, cell, capsys)
    assert isinstance(result.error_in_exec, UnsendableValueError)
    assert "'lk'" in str(result.error_in_exec)


def test_interrupt_stops_running_batches_and_the_next_cell_works(
    cluster: Cluster, capsys: pytest.CaptureFixture
) -> None:
    ip = shell()
    fresh(ip, SETUP, capsys)
    magic = f"%%parallel --backend dask --scheduler {cluster.address} --no-progress"
    # Each iteration would run 60 s; the interrupt must free both workers at once.
    long_cell = f"{magic}\ndone = []\nfor i in range(4):\n    for _ in range(600):\n        time.sleep(0.1)\n    done.append(i)\n"
    timer = threading.Timer(3.0, _thread.interrupt_main)
    timer.start()
    try:
        result, _, err = run(ip, long_cell, capsys)
    finally:
        timer.cancel()
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert ip.user_ns["done"] == []
    started = time.monotonic()
    result, _, err = run(
        ip, f"{magic}\nquick = []\nfor i in range(4):\n    quick.append(i * 2)\n", capsys
    )
    assert result.success, err
    assert ip.user_ns["quick"] == [0, 2, 4, 6]
    assert time.monotonic() - started < 15


# -- the API and the backend itself ---------------------------------------------------------


def test_pmap_on_dask(cluster: Cluster) -> None:
    import parmagic

    def square_and_pid(x: int) -> tuple[int, int]:
        return x * x, os.getpid()

    out = parmagic.pmap(
        square_and_pid, range(20), backend="dask", scheduler=cluster.address, progress=False
    )
    assert [v for v, _ in out] == [x * x for x in range(20)]
    assert {pid for _, pid in out} <= cluster.worker_pids


def test_backend_counts_threads_and_reports_pids(cluster: Cluster) -> None:
    from parmagic.backends.dask import DaskBackend

    backend = DaskBackend(None, cluster.address)
    assert backend.n_workers == 2  # two workers of one thread each
    assert set(backend.worker_pids()) == cluster.worker_pids
    info = backend.describe()
    assert info["backend"] == "dask" and info["scheduler"] == cluster.address
    assert DaskBackend(5, cluster.address).n_workers == 5


def test_payload_is_scattered_once_and_reaches_every_worker(cluster: Cluster) -> None:
    from parmagic.backends.dask import DaskBackend, DaskRef
    from parmagic.worker.protocol import Payload

    backend = DaskBackend(None, cluster.address)
    payload = Payload(key="k-test", code=b"", filename="<t>", source="", captured={"x": 1})
    ref = backend.publish(payload)
    try:
        assert isinstance(ref, DaskRef) and ref.key == "k-test"
        assert ref.load().captured == {"x": 1}
        who_has = backend.client().who_has([ref.future])[ref.future.key]
        assert len(who_has) == 2  # broadcast: on both workers before any task runs
    finally:
        backend.unpublish(ref)


def test_killed_worker_becomes_worker_died_error() -> None:
    from distributed.scheduler import KilledWorker

    from parmagic.backends.dask import _translate
    from parmagic.errors import WorkerDiedError

    last_worker = types.SimpleNamespace(address="tcp://127.0.0.1:1")
    error = _translate(KilledWorker("parmagic_batch-1", last_worker, 3))
    assert isinstance(error, WorkerDiedError)
    assert isinstance(error.__cause__, KilledWorker)
    other = ValueError("x")
    assert _translate(other) is other


def test_threads_of_one_worker_keep_their_output_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Batches run at once in one worker's threads: each iteration's print stays its own."""
    with running_cluster(tmp_path, workers=1, threads=3) as threaded:
        ip = shell()
        fresh(ip, SETUP, capsys)
        cell = (
            f"%%parallel --backend dask --scheduler {threaded.address} --no-progress --chunksize 1\n"
            "seen = []\nfor i in range(9):\n    print('start', i)\n"
            "    time.sleep(0.05 * (9 - i))\n    print('end', i)\n    seen.append(os.getpid())\n"
        )
        started = time.monotonic()
        result, out, err = run(ip, cell, capsys)
        elapsed = time.monotonic() - started
        assert result.success, err
        assert set(ip.user_ns["seen"]) == threaded.worker_pids
        assert out == "".join(f"start {i}\nend {i}\n" for i in range(9))
        assert elapsed < 2.0  # the 2.25 s of sleeps overlapped in the worker's threads
