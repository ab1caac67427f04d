"""What a dead kernel left behind in /dev/shm, swept at the next ``%load_ext parmagic``.

A kernel killed with its process group (or restarted with ``now=True``) takes its
loky resource tracker along, so nobody unlinks its pool's named semaphores
(``sem.loky-<pid>-<random>``, eight per pool, also for pools that its workers
started). Its named scratch files (``parmagic-<pid>-<key>.<purpose>``, where there is
no memfd) stay too. Both name the process that made them: an entry is removed only
when that process is gone, the entry is ours (same user) and no live process has
it mapped. Files of live processes, of other users, and names without a pid are
never touched.
"""

from __future__ import annotations

import os
import re

from .worker.scratch import scratch_dir

#: Entries that name the process that made them (group 1: its pid).
OWNED_BY_PID = re.compile(r"^(?:sem\.loky-(\d+)-[0-9a-z_]+|parmagic-(\d+)-[0-9a-f]+\.[a-z]+)$")


def sweep(folder: str | None = None) -> list[str]:
    """Remove the entries of ``folder`` (default: the scratch folder) whose maker is gone.

    Returns the removed paths. Never raises: a sweep must not stop the extension loading.
    """
    folder = folder or scratch_dir()
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    candidates = []
    for name in names:
        found = OWNED_BY_PID.match(name)
        if found is None:
            continue
        pid = int(found.group(1) or found.group(2))
        path = os.path.join(folder, name)
        if not _alive(pid) and _ours(path):
            candidates.append(path)
    if not candidates:
        return []
    mapped = _mapped_paths()
    removed = []
    for path in candidates:
        if path in mapped:
            continue
        try:
            os.unlink(path)
        except OSError:
            continue
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _ours(path: str) -> bool:
    try:
        return os.stat(path).st_uid == os.getuid()
    except OSError:
        return False


def _mapped_paths() -> set[str]:
    """Paths that some live process has mapped (a semaphore still in use)."""
    mapped = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return mapped
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                for line in f:
                    at = line.find("/dev/shm/")
                    if at >= 0:
                        mapped.add(line[at:].rstrip("\n").removesuffix(" (deleted)"))
        except OSError:
            continue
    return mapped
