"""Random streams per iteration (SPEC §2 "Random numbers"), kernel side.

When a loop starts, every generator its iterations may draw from (the ``random``
module, ``numpy.random``'s legacy functions, a captured ``random.Random``,
``numpy.random.RandomState`` or ``numpy.random.Generator``) is digested into an
entropy sent in the payload; workers give iteration k the stream of (entropy, k)
(see :mod:`parmagic.worker.streams`). After the loop, each generator the
iterations drew from moves on to the stream of (entropy, AFTER_LOOP), so the
next cell draws fresh numbers, the same on every run; one line says so.

``--backend threads`` shares the kernel's generators between threads, so nothing
is reseeded there; the line only says that they drew. The serial backend
(``-n 1``) runs as the plain loop does: nothing here touches it.
"""

from __future__ import annotations

import random
import sys
from typing import Any

from .worker.protocol import Payload
from .worker.streams import (
    AFTER_LOOP,
    GENERATOR,
    GLOBAL_NUMPY,
    GLOBAL_RANDOM,
    LEGACY,
    RANDOM,
    digest,
    seed,
    state_of,
)

NOTICE = (
    "parmagic: iterations drew random numbers from {names}; each iteration gets its own "
    "stream derived from the seed and its index, so the numbers differ from a plain run's "
    "(the same on every run)"
)
THREADS_NOTICE = (
    "parmagic: iterations drew random numbers from {names}; with --backend threads they share "
    "the kernel's generator, so the numbers depend on the threads' timing and differ from a "
    "plain run's"
)
_SHOWN = {GLOBAL_RANDOM: "random", GLOBAL_NUMPY: "np.random"}


def kind_of(value: Any) -> str | None:
    """The generator kind of ``value`` (see worker/streams.py), or None for anything else."""
    if isinstance(value, random.Random):
        return None if isinstance(value, random.SystemRandom) else RANDOM  # no state to seed
    np = sys.modules.get("numpy")
    if np is None:
        return None
    if isinstance(value, np.random.Generator):
        return GENERATOR
    if isinstance(value, np.random.RandomState) and value is not np.random.mtrand._rand:
        return LEGACY
    return None


def generators(captured: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """The kernel's generators a loop may draw from: id -> (kind, generator).

    The global ones always (library code draws from them too: scikit-learn with
    ``random_state=None``), NumPy's only when NumPy is imported.
    """
    gens: dict[str, tuple[str, Any]] = {GLOBAL_RANDOM: (RANDOM, random)}
    np = sys.modules.get("numpy")
    if np is not None:
        gens[GLOBAL_NUMPY] = (LEGACY, np.random.mtrand._rand)
    for name, value in captured.items():
        kind = kind_of(value)
        if kind is not None:
            gens[name] = (kind, value)
    return gens


class LoopStreams:
    """One loop's generators: their entropies going out, the draws coming back."""

    def __init__(self, mode: str, gens: dict[str, tuple[str, Any]]):
        self.mode = mode  # "watch" (threads) or "streams" (process workers, serial)
        self.gens = gens
        self.before: dict[str, Any] = {}  # the generators' states as the loop started
        self._entropy: dict[str, int] | None = None
        self.drew: set[str] = set()

    @classmethod
    def start(cls, payload: Payload, backend: Any, begun: LoopStreams | None = None) -> LoopStreams:
        """Note the generators as the loop starts; for workers in other processes, put
        their entropies in ``payload.streams`` (``begun``'s, where the loop's first
        iterations ran in the kernel: the entropies of the loop's start)."""
        gens = generators(payload.captured)
        if backend.in_kernel and not backend.runs_in_order:  # threads share the generators
            streams = cls("watch", gens)
            streams.before = {i: state_of(kind, g) for i, (kind, g) in gens.items()}
            return streams
        streams = begun if begun is not None else cls.start_in_kernel(payload.captured)
        streams.send(payload)
        return streams

    def send(self, payload: Payload) -> None:
        """Give ``payload``'s run the loop's streams (its entropies as the loop started)
        and the generators it is known to draw from."""
        payload.streams = {i: (self.gens[i][0], e) for i, e in self.entropy.items()}
        payload.drawing = frozenset(self.drew)

    @classmethod
    def start_in_kernel(cls, captured: dict[str, Any]) -> LoopStreams:
        """Note the generators and their states as the loop starts."""
        streams = cls("streams", generators(captured))
        streams.before = streams.watch()
        return streams

    @property
    def entropy(self) -> dict[str, int]:
        """Each generator's entropy, from its state as the loop started (digested when first
        asked: a loop that ends in the kernel without drawing never needs it)."""
        if self._entropy is None:
            self._entropy = {i: digest(state) for i, state in self.before.items()}
        return self._entropy

    def watch(self) -> dict[str, Any]:
        """The generators' states now (to tell, later, whether anything drew)."""
        return {i: state_of(kind, g) for i, (kind, g) in self.gens.items()}

    def moved(self, before: dict[str, Any]) -> list[str]:
        """The generators whose state is no longer ``before``'s."""
        return [i for i, (kind, g) in self.gens.items() if state_of(kind, g) != before[i]]

    def saw(self, drew: list[str]) -> None:
        """A committed batch drew from these generators."""
        if drew:
            self.drew.update(drew)

    def finish(self, notice: bool = True) -> None:
        """The loop ended: move the generators it drew from on, and say so in one line
        (unless ``notice`` is False: a body that seeds the generator itself draws the
        plain loop's numbers)."""
        if self.mode == "watch":
            self.drew = {
                i for i, (kind, g) in self.gens.items() if state_of(kind, g) != self.before[i]
            }
        if not self.drew:
            return
        if self.mode == "streams":
            for i in self.drew:
                kind, gen = self.gens[i]
                seed(kind, gen, self.entropy[i], AFTER_LOOP)
        if not notice:
            return
        names = ", ".join(sorted(_SHOWN.get(i, i) for i in self.drew))
        text = THREADS_NOTICE if self.mode == "watch" else NOTICE
        print(text.format(names=names), file=sys.stderr)
