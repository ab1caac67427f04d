"""The stop button (SIGINT) in the kernel: when it may land, and what it may reach.

The engine holds it while a batch commits and while a run cleans up, so that the
committed prefix is whole iterations; worker processes start with it blocked, so
that one still importing cannot die of it (the stop button signals the kernel's
whole process group).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def held_interrupts(hold: bool = True, drop: bool = False) -> Iterator[None]:
    """The stop button pressed inside the block takes effect when it ends (``drop``: never;
    ``hold`` False: at once, as without the block).

    Committing a batch, and a run's clean-up, then never stop half-way: the committed
    prefix is whole iterations, and the record and the locals say what was applied. Only
    the main thread receives SIGINT; elsewhere there is nothing to hold.
    """
    if not hold or threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if pressed and not drop:
        if callable(previous):
            previous(signal.SIGINT, pressed[0])
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred(grace: float) -> Iterator[None]:
    """The stop button pressed inside the block takes effect when it ends, or ``grace``
    seconds after the press if the block still runs then (at once, where it runs), or at
    a second press.

    Auto-serial's rest runs the user's statements in the kernel in chunks of milliseconds:
    the stop button lands between iterations, unless one of them runs on far longer than
    the first ones did, and then the user waits a second at most.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[Any] = []
    timer: list[threading.Timer] = []

    def on_sigint(signum: int, frame: Any) -> None:
        if pressed:  # the grace is over, or the user pressed again: stop now
            raise KeyboardInterrupt
        pressed.append(frame)
        # a real signal to the main thread: it also cuts a sleep or a blocking call short
        main = threading.main_thread().ident
        late = threading.Timer(grace, signal.pthread_kill, (main, signal.SIGINT))
        late.daemon = True
        late.start()
        timer.append(late)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        for late in timer:
            late.cancel()
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if pressed:
        if callable(previous):
            previous(signal.SIGINT, pressed[0])
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread: a process started meanwhile starts with it blocked.

    The stop button sends SIGINT to the kernel's whole process group; a worker still
    importing (loky, cloudpickle, site) would die of it with a raw traceback in the
    notebook. Blocked, it stays pending until the worker's initializer ignores it and
    unblocks it (``parmagic.worker.batch.init_process``), which drops it.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
