"""Fixtures shared by every test module.

``no_leftovers`` (autouse) fails any test that leaves behind a process it started
(directly or through a kernel, also one orphaned by a killed kernel), or a
temporary file or shared-memory segment in /dev/shm or the temp directory.
Allowed to stay: the pools this process keeps by design (parmagic's persistent
loky workers, its other backends' workers, multiprocessing/loky resource
trackers), and processes of kernels that a wider-scoped fixture started before
the test (their own pools live as long as they do).

Processes are recognised by an environment variable set here and inherited by
everything the tests start, so an orphan re-parented to init is still ours.
"""

from __future__ import annotations

import gc
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest

#: Marks every process started by this test session (inherited through the environment).
SESSION_MARK = "PARMAGIC_TEST_SESSION"
#: How long leftovers may take to go away (a killed kernel's pool, loky reaping its workers).
LINGER_SECONDS = 8.0
#: Scratch entries that tell of a leak when they outlive a test.
SCRATCH_NAMES = re.compile(r"parmagic|loky|joblib|pymp-|psm_|^sem\.|^mp-")

#: Where the lock types of live pools come from (joblib's vendored loky: scikit-learn's pools).
SEMAPHORE_MODULES = (
    "multiprocessing.synchronize",
    "loky.backend.synchronize",
    "joblib.externals.loky.backend.synchronize",
)

os.environ[SESSION_MARK] = str(os.getpid())
_MARK = f"{SESSION_MARK}={os.getpid()}".encode()


@dataclass(frozen=True)
class Proc:
    """A live process of this session."""

    pid: int
    ppid: int
    cmdline: str


def session_processes() -> dict[int, Proc]:
    """Every live (not zombie) process carrying this session's mark, this one included."""
    found = {}
    for p in psutil.process_iter(["pid", "ppid", "status", "cmdline"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                if _MARK not in f.read().split(b"\0"):
                    continue
            found[p.pid] = Proc(p.pid, p.info["ppid"], " ".join(p.info["cmdline"] or ()))
        except (OSError, psutil.Error):
            continue
    return found


def kept_by_design() -> set[int]:
    """Pids of the pools this process keeps between tests."""
    pids: set[int] = set()
    try:
        from parmagic import pool

        pids.update(pool.status()["pids"])
        for backend in list(pool._extra.values()):
            try:
                pids.update(backend.worker_pids())
            except Exception:  # a backend that cannot tell: its processes count as leaks
                pass
    except Exception:  # parmagic not importable here: nothing kept
        pass
    return pids


def leaked_processes(before: dict[int, Proc]) -> list[Proc]:
    """New processes of this session that nobody legitimately keeps."""
    me = os.getpid()
    now = session_processes()
    kept = kept_by_design()
    leaks = []
    for proc in now.values():
        if proc.pid == me or proc.pid in before or proc.pid in kept:
            continue
        if proc.ppid == me and "resource_tracker" in proc.cmdline:
            continue  # one per process, by design
        owner = _owner(proc, now, before, kept)
        if owner == "leak":
            leaks.append(proc)
    return leaks


def _owner(proc: Proc, now: dict[int, Proc], before: dict[int, Proc], kept: set[int]) -> str:
    """Walk up the parents: ours to clean (leak), or a long-lived owner's (ok)."""
    me = os.getpid()
    parent = proc.ppid
    while True:
        if parent == me:
            return "leak"
        if parent in kept:
            return "ok"
        if parent in before:
            return "ok"  # a kernel from a wider-scoped fixture: its pool is its business
        if parent not in now:
            return "leak"  # orphaned: its parent died without taking it along
        parent = now[parent].ppid


def scratch_entries() -> set[str]:
    """Temp files and shared-memory segments that look like a parallel run's."""
    entries = set()
    for folder in {"/dev/shm", tempfile.gettempdir()}:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        entries.update(os.path.join(folder, n) for n in names if SCRATCH_NAMES.search(n))
    return entries


def leaked_scratch(before: set[str], procs_before: dict[int, Proc]) -> list[str]:
    """New scratch entries that no live owner keeps.

    Kept: semaphores of live pools in this process (a persistent pool holds its
    queues' locks), entries named after another live process that this test did
    not start (a wider-scoped kernel, or a test session running beside this one),
    and entries mapped only by processes outside this session.
    """
    new = sorted(scratch_entries() - before)
    if not new:
        return []
    me, alive = os.getpid(), session_processes()
    semaphores = live_semaphores() if any("/sem." in path for path in new) else set()
    leaks = []
    for path in new:
        name = os.path.basename(path)
        if name.startswith("sem.") and "/" + name[4:] in semaphores:
            continue
        pids = [int(p) for p in re.findall(r"(?<![0-9a-zA-Z])(\d{2,7})(?![0-9a-zA-Z])", name)]
        owners = [p for p in pids if p != me and psutil.pid_exists(p)]
        if owners and all(p in procs_before or p not in alive for p in owners):
            continue
        mappers = mapped_by(path)
        if mappers and not mappers & set(alive):
            continue
        leaks.append(path)
    return leaks


def mapped_by(path: str) -> set[int]:
    """Pids of the processes that have ``path`` mapped (a named semaphore's holders)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                if path in f.read():
                    pids.add(int(entry))
        except OSError:
            continue
    return pids


def live_semaphores() -> set[str]:
    """Names of the named semaphores that live objects of this process still hold."""
    gc.collect()  # let the finalizers of dropped pools unlink theirs
    names = set()
    for obj in gc.get_objects():
        if type(obj).__module__ in SEMAPHORE_MODULES:
            name = getattr(obj, "name", None) or getattr(
                getattr(obj, "_semlock", None), "name", None
            )
            if name:
                names.add(name)
    return names


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Fail the test if it leaves a process, temp file or shared-memory segment behind."""
    procs = session_processes()
    scratch = scratch_entries()
    yield
    deadline = time.monotonic() + LINGER_SECONDS
    while True:
        leaks = leaked_processes(procs)
        files = leaked_scratch(scratch, procs)
        if not (leaks or files) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    problems = [f"process {p.pid} ({p.cmdline[:120]})" for p in leaks] + files
    if problems:
        for p in leaks:  # clean up, so one leak does not fail every later test
            _kill(p.pid)
        pytest.fail("left behind:\n  " + "\n  ".join(problems), pytrace=False)


def _kill(pid: int) -> None:
    try:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass
