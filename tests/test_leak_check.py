"""The leak check of conftest.py sees what it must: children, orphans, scratch files."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from .conftest import leaked_processes, leaked_scratch, scratch_entries, session_processes

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_child_left_running_is_a_leak() -> None:
    before = session_processes()
    child = subprocess.Popen(SLEEPER)
    try:
        assert child.pid in {p.pid for p in leaked_processes(before)}
    finally:
        child.kill()
        child.wait()
    assert leaked_processes(before) == []


def test_an_orphan_of_a_dead_parent_is_still_seen() -> None:
    before = session_processes()
    spawn = (
        "import subprocess; "
        f"print(subprocess.Popen({SLEEPER!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"
    )
    parent = subprocess.run(
        [sys.executable, "-c", spawn], capture_output=True, text=True, check=True
    )
    orphan = int(parent.stdout)
    try:
        deadline = time.monotonic() + 5
        while orphan not in session_processes():  # it may take a moment to be re-parented
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert orphan in {p.pid for p in leaked_processes(before)}
    finally:
        os.kill(orphan, 9)


def test_a_scratch_file_left_behind_is_a_leak() -> None:
    procs, before = session_processes(), scratch_entries()
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    path = os.path.join(folder, f"parmagic-{os.getpid()}-leakcheck.pkl")
    with open(path, "w"):
        pass
    try:
        assert leaked_scratch(before, procs) == [path]
    finally:
        os.unlink(path)
    assert leaked_scratch(before, procs) == []
