"""Random streams per iteration (SPEC §2 "Random numbers"), worker side.

The kernel sends, for each generator a loop may draw from, its kind and an
entropy: a digest of its state when the loop starts (``Payload.streams``).
Iteration k draws from the stream derived from (entropy, k), whatever worker,
batch or backend runs it: ``numpy.random.SeedSequence(entropy, spawn_key=(k,))``
for NumPy generators, a blake2b of (entropy, k) as the seed of a ``random.Random``
(so that the ``random`` module needs no NumPy).

Seeding at every iteration costs 10-50 µs, too much for 100,000 trivial
iterations. So a one-iteration batch seeds each generator to its iteration's
stream; a batch of several needs only a generator in a known, untouched state
(seeded by us, nothing drawn since, no cached Gaussian): it is seeded once per
run and worker, and stays so while nothing draws. Each batch compares the
generator's state at its end (for MT19937, five words read in place):
unchanged, nothing drew and the batch stands (as does a one-iteration batch
that drew). A batch of several iterations that drew runs again with a reseed at
each iteration start (its first attempt's results are dropped: effects and
output are only recorded in a worker), and the run remembers which generators
draw, so its later batches on this worker reseed per iteration from the start.

This module imports NumPy never: a NumPy generator is only handled when NumPy
is already in ``sys.modules``.
"""

from __future__ import annotations

import ctypes
import hashlib
import random
import sys
import threading
from array import array
from collections.abc import Callable
from typing import Any

from ..errors import IterationTimeoutError

#: Generator kinds: ``random.Random`` (and the ``random`` module), ``numpy.random.RandomState``
#: (and ``numpy.random``'s legacy functions), ``numpy.random.Generator``.
RANDOM, LEGACY, GENERATOR = "random", "legacy", "generator"
#: Ids of the global generators in ``Payload.streams``; a captured generator's id is its name
#: (these are not identifiers, so they never clash with one).
GLOBAL_RANDOM, GLOBAL_NUMPY = "<random>", "<np.random>"
#: The key the kernel's generator is reseeded with after a loop that drew from it:
#: never an iteration's index, so the next cell's draws are none of the loop's.
AFTER_LOOP = 2**64
#: A batch runs at most this many times (a first attempt that drew, or that imported NumPy).
MAX_ATTEMPTS = 3


def canonical(state: Any) -> Any:
    """A generator's state as nested tuples of plain values (arrays as bytes), comparable
    with ``==`` and with a stable ``repr`` to digest."""
    if isinstance(state, dict):
        return tuple((k, canonical(v)) for k, v in sorted(state.items()))
    if isinstance(state, list | tuple):
        return tuple(canonical(v) for v in state)
    if hasattr(state, "tobytes") and hasattr(state, "dtype"):
        return (str(state.dtype), state.tobytes())
    return state


def state_of(kind: str, gen: Any) -> Any:
    """The comparable state of ``gen`` (see :func:`canonical`)."""
    if kind == RANDOM:
        return gen.getstate()
    if kind == LEGACY:
        return canonical(gen.get_state(legacy=False))
    return canonical(gen.bit_generator.state)


def digest(state: Any) -> int:
    """The entropy of the streams of a generator in ``state`` (:func:`state_of`): a 256-bit
    blake2b of it."""
    h = hashlib.blake2b(digest_size=32)
    _feed(h, state)
    return int.from_bytes(h.digest(), "little")


def _feed(h: Any, obj: Any) -> None:
    """Hash a state's structure and values (not its repr: 625 ints take 0.3 ms to print)."""
    if isinstance(obj, list | tuple):
        try:
            words = array("Q", obj).tobytes()  # a run of machine words (random's state)
        except (TypeError, OverflowError):
            h.update(b"(%d:" % len(obj))
            for value in obj:
                _feed(h, value)
            h.update(b")")
        else:
            h.update(b"[%d:" % len(obj))
            h.update(words)
        return
    if isinstance(obj, bytes):
        h.update(b"b%d:" % len(obj))
        h.update(obj)
        return
    text = repr(obj).encode()
    h.update(b"r%d:" % len(text))
    h.update(text)


def seed(kind: str, gen: Any, entropy: int, key: int) -> None:
    """Put ``gen`` at the start of stream ``key`` (an iteration's index, or AFTER_LOOP)."""
    if kind == RANDOM:
        data = entropy.to_bytes(32, "little") + key.to_bytes(16, "little")
        gen.seed(int.from_bytes(hashlib.blake2b(data, digest_size=32).digest(), "little"))
        return
    np = sys.modules["numpy"]
    seq = np.random.SeedSequence(entropy, spawn_key=(key,))
    if kind == GENERATOR:
        bits = gen.bit_generator
        bits.state = type(bits)(seq).state
        return
    bits = getattr(gen, "_bit_generator", None)
    if bits is None or type(bits).__name__ == "MT19937":
        # legacy seeding (init_by_array) from 256 bits of the sequence: a third of the cost
        # of MT19937(seq), and it clears the cached Gaussian as set_state would
        gen.seed(seq.generate_state(8))
    else:  # a RandomState on another bit generator (np.random.set_bit_generator)
        gen.set_state(type(bits)(seq).state)


def global_generator(gen_id: str) -> Any:
    """The process's own generator for a global id, or None (NumPy not imported)."""
    if gen_id == GLOBAL_RANDOM:
        return random
    np = sys.modules.get("numpy")
    return np.random.mtrand._rand if np is not None else None


def _bits(kind: str, gen: Any) -> Any:
    """The bit generator of a NumPy generator."""
    return gen.bit_generator if kind == GENERATOR else getattr(gen, "_bit_generator", None)


def _mt_words(bits: Any) -> Any:
    """The words of an MT19937's C state (key[624], pos), or None for other bit generators.

    Reading ``get_state()`` copies and wraps 2.5 kB (25-100 µs); five words read in
    place take 0.1 µs and tell as much here: right after seeding, pos is 624, so the
    first draw regenerates the whole key.
    """
    np = sys.modules.get("numpy")
    if np is None or not isinstance(bits, np.random.MT19937):
        return None
    return (ctypes.c_uint32 * 625).from_address(bits.ctypes.state_address)


class _Gen:
    __slots__ = ("id", "kind", "gen", "entropy", "bits", "words", "fresh")

    def __init__(self, gen_id: str, kind: str, gen: Any, entropy: int):
        self.id, self.kind, self.gen, self.entropy = gen_id, kind, gen, entropy
        # holding the bit generator keeps the memory the words are read from alive
        self.bits = _bits(kind, gen) if kind != RANDOM else None
        self.words = _mt_words(self.bits)
        self.fresh: Any = None  # the state as seeded, while nothing has drawn since

    def seed(self, key: int) -> None:
        seed(self.kind, self.gen, self.entropy, key)

    def state(self) -> Any:
        w = self.words
        if w is not None and _bits(self.kind, self.gen) is self.bits:
            return (w[1], w[2], w[3], w[623], w[624])  # key[0] is constant after init_by_array
        return state_of(self.kind, self.gen)


class RunStreams:
    """One run's generators in this worker, and which of them this run draws from."""

    def __init__(
        self,
        specs: dict[str, tuple[str, int]],
        captured: dict[str, Any],
        rerun: bool = True,
        drawing: frozenset = frozenset(),
    ):
        self.specs = specs
        self.captured = captured
        #: a batch that drew may run again (in a worker: its results are only records); in
        #: the kernel it may not (it changed the kernel's objects): its draws stand, from the
        #: batch's first stream, and later batches reseed at every iteration
        self.rerun = rerun
        self.drawing: set[str] = set(drawing) & set(specs)
        self._gens: list[_Gen] | None = None

    def _present(self) -> list[_Gen]:
        if self._gens is not None:
            return self._gens
        gens = []
        for gen_id, (kind, entropy) in self.specs.items():
            if gen_id in (GLOBAL_RANDOM, GLOBAL_NUMPY):
                gen = global_generator(gen_id)
            else:
                gen = self.captured.get(gen_id)
            if gen is not None:
                gens.append(_Gen(gen_id, kind, gen, entropy))
        if GLOBAL_NUMPY not in self.specs or any(g.id == GLOBAL_NUMPY for g in gens):
            self._gens = gens  # all there: the same objects for the whole run
        return gens

    def run(self, state: Any, count: int, attempt: Callable[[], None]) -> None:
        """Run a batch of ``count`` iterations (``attempt()``) on its iterations' streams.

        ``state`` is the batch's ``_BatchState``: its ``mark`` is wrapped to reseed per
        iteration, ``restart()`` drops an attempt, and ``result.drew`` names the
        generators the batch drew from.
        """
        for tries in range(1, MAX_ATTEMPTS + 1):
            gens = self._present()
            watched = []
            per_iteration = []
            for g in gens:
                if g.id in self.drawing:
                    per_iteration.append(g)
                    continue
                # a batch of several iterations that draws runs again anyway, so it only
                # needs a generator in a known, untouched state (``fresh``: seeded by us
                # and not drawn from since, no cached Gaussian) to see whether it drew;
                # a one-iteration batch is put on its iteration's stream
                if count == 1 or g.fresh is None:
                    g.seed(state.start)
                    g.fresh = g.state()
                watched.append(g)
            if per_iteration:
                state.mark = _reseeding(state, per_iteration)
            attempt()
            changed = set()
            for g in watched:
                if g.state() != g.fresh:
                    changed.add(g.id)
                    g.fresh = None
            self.drawing |= changed
            # the body imported NumPy: its global generator was not on the batch's stream
            appeared = GLOBAL_NUMPY in self.specs and global_generator(GLOBAL_NUMPY) is not None
            appeared = appeared and all(g.id != GLOBAL_NUMPY for g in gens)
            state.result.drew = sorted(changed | {g.id for g in per_iteration})
            again = self.rerun and (appeared or (changed and count > 1))
            if not again or tries == MAX_ATTEMPTS or _stopped(state.result):
                return
            state.restart()


def _reseeding(state: Any, gens: list[_Gen]) -> Callable[[float], None]:
    inner = state.mark

    def mark(now: float) -> None:
        inner(now)
        k = state.current
        for g in gens:
            g.seed(k)

    return mark


class _ThreadRandom(threading.local):
    inst: random.Random | None = None


_thread_random = _ThreadRandom()
_random_lock = threading.Lock()


def _random_per_thread() -> None:
    """Give this thread its own generator behind the ``random`` module's functions.

    A dask worker's own threads draw from the ``random`` module too (choosing peers,
    jittering heartbeats): drawing from it, an iteration's stream would be theirs to
    move, and every batch would seem to draw. Once this ran in a process, the module's
    functions (``random.random``, ``random.seed``, ``random.getstate``, ...) draw from
    the calling thread's own generator where it has one (a thread that runs batches),
    else from the module's as before.
    """
    if _thread_random.inst is None:
        _thread_random.inst = random.Random()
    with _random_lock:
        if getattr(random, "_parmagic_per_thread", False):
            return
        shared = random._inst  # type: ignore[attr-defined]
        for name in dir(random):
            bound = getattr(random, name)
            if getattr(bound, "__self__", None) is shared and not name.startswith("_"):
                setattr(random, name, _per_thread(name, shared))
        random._parmagic_per_thread = True  # type: ignore[attr-defined]


def _per_thread(name: str, shared: random.Random) -> Callable[..., Any]:
    def draw(*args: Any, **kwargs: Any) -> Any:
        return getattr(_thread_random.inst or shared, name)(*args, **kwargs)

    draw.__name__ = draw.__qualname__ = name
    draw.__doc__ = getattr(shared, name).__doc__
    return draw


def _stopped(result: Any) -> bool:
    """Stopped (stop button) or timed out: running it again would not be worth it."""
    return any(
        isinstance(e, KeyboardInterrupt | IterationTimeoutError) for _, e, _ in result.errors
    )


class _RunCache(threading.local):
    """The run's streams, per thread (a dask worker's threads act as separate workers)."""

    key: str | None = None
    streams: RunStreams | None = None


_cache = _RunCache()


def for_run(payload: Any) -> RunStreams | None:
    """This worker's streams of the payload's run (None: nothing to manage)."""
    specs = getattr(payload, "streams", None)
    if not specs:
        return None
    if getattr(payload, "private_random", False) and GLOBAL_RANDOM in specs:
        _random_per_thread()
    if _cache.key != payload.key:
        streams = RunStreams(
            specs,
            payload.captured,
            rerun=not getattr(payload, "in_kernel", False),
            drawing=getattr(payload, "drawing", frozenset()),
        )
        _cache.key, _cache.streams = payload.key, streams
    return _cache.streams
