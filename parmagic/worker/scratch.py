"""Scratch memory the kernel shares with its own workers: an anonymous memfd, else a 0600 file.

A memfd has no name: workers open it as ``/proc/<kernel pid>/fd/<n>``, and it is
gone with the kernel however the kernel dies. Where there is no memfd (not
Linux), a file readable by its owner only, in RAM-backed ``/dev/shm`` when there
is one, is the fallback; then the caller removes it (:meth:`Scratch.close`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass


def scratch_dir() -> str:
    """Where named scratch files go: RAM-backed /dev/shm when there is one."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()


@dataclass
class Scratch:
    """An open scratch area: its descriptor, the path workers open, whether that is a real name."""

    fd: int
    path: str
    named: bool

    def close(self) -> None:
        """Close the descriptor and remove the name, if any (workers that mapped it keep their view)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.named:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.named = False


def open_scratch(purpose: str, key: str, size: int = 0) -> Scratch:
    """A new scratch area of ``size`` bytes (0: grows as written) named after ``purpose``."""
    proc = f"/proc/{os.getpid()}/fd"
    if hasattr(os, "memfd_create") and os.path.isdir(proc):
        fd = os.memfd_create(f"parmagic-{purpose}")
        scratch = Scratch(fd, f"{proc}/{fd}", False)
    else:
        path = os.path.join(scratch_dir(), f"parmagic-{os.getpid()}-{key}.{purpose}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        scratch = Scratch(fd, path, True)
    if size:
        os.ftruncate(scratch.fd, size)
    return scratch
