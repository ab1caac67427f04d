"""What an iteration did to kernel objects it holds copies of: found by comparing states.

A worker holds copies of the kernel's objects: the loop's items (``for est in
estimators``) and the captured values. SPEC §2 asks that a change to an item
reaches the kernel's own object in place, and that a change to a captured
object (or to a global a called function reaches) is never silently lost. Both
are found at run time, by comparing an object's pickled state before and after
an iteration, never by guessing from method names:

* :class:`ItemTracker`: per iteration, the state of a non-atomic item before and
  after; a changed item travels back as its new state, and the kernel merges it
  into its own object (:mod:`parmagic.writeback`). Items that cannot change
  (ints, strings, tuples of them) cost nothing.
* :class:`CapturedWatch`: per batch, the state of each captured value (and each
  global of a captured function) that could change; a change fails the iteration
  that made it, naming the object.
* :class:`ItemRef`: an effect value or local that *is* an item travels as a
  reference to it, so the kernel uses its own object (``results.append(est)``
  appends the kernel's estimator, and the loop target after the loop is the
  kernel's last item).
"""

from __future__ import annotations

import hashlib
import pickle
import types
from dataclasses import dataclass
from typing import Any

#: Types whose instances cannot change: an item of these needs no check at all.
_ATOMS = (int, float, complex, str, bytes, bool, type(None), range, slice)
#: Captured values of these kinds are not watched: code and modules, not data.
_UNWATCHED = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


def is_atomic(value: Any) -> bool:
    """True for values that cannot be changed in place (ints, strings, tuples of them)."""
    if isinstance(value, _ATOMS):
        return True
    if type(value) in (tuple, frozenset):
        return all(is_atomic(v) for v in value)
    return False


def state_of(obj: Any) -> bytes | None:
    """The object's state as bytes (cloudpickle, caches left out), or None when it cannot be
    pickled."""
    try:
        return _dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:  # an unpicklable object cannot be tracked (nor sent back)
        return None


def digest_of(obj: Any) -> bytes | None:
    """A digest of the object's state; read-only buffers (the run's shared arrays) by size only,
    since nothing can change them."""
    h = hashlib.blake2b(digest_size=16)

    def buffer(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        h.update(raw.nbytes.to_bytes(8, "little"))
        if not raw.readonly:
            h.update(raw)
        return False  # out of band: not copied into the stream

    try:
        h.update(_dumps(obj, 5, buffer))
    except Exception:  # cannot be pickled: cannot be watched
        return None
    return h.digest()


#: Attributes that hold what an object computed from its own state, not state: pandas keeps
#: derived values (an index's ``day_of_week``, a frame's item cache) in ``_cache``, filled
#: by mere reads, so reading a frame would otherwise look like changing it.
CACHE_ATTRIBUTES = frozenset({"_cache", "_item_cache"})


def _dumps(obj: Any, protocol: int, buffer_callback: Any = None) -> bytes:
    import io

    import cloudpickle

    class CacheBlindPickler(cloudpickle.Pickler):
        def reducer_override(self, value: Any) -> Any:
            if type(value).__module__.startswith("pandas"):
                reduced = _without_caches(value)
                if reduced is not None:
                    return reduced
            return super().reducer_override(value)

    out = io.BytesIO()
    CacheBlindPickler(out, protocol=protocol, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


def _without_caches(value: Any) -> tuple | None:
    """``value``'s reduction with the cache attributes left out of its state, if it has any.

    The state is a dict, or (pandas' arrays) a tuple ending with the object's ``__dict__``,
    which pandas leaves out when it is empty: so do we, and a read leaves the bytes as they were.
    """
    try:
        reduced = value.__reduce_ex__(5)
    except Exception:
        return None
    if not isinstance(reduced, tuple) or len(reduced) < 3:
        return None
    state = reduced[2]
    if isinstance(state, dict) and not CACHE_ATTRIBUTES.isdisjoint(state):
        state = _uncached(state)
    elif (
        isinstance(state, tuple)
        and state
        and isinstance(state[-1], dict)
        and not CACHE_ATTRIBUTES.isdisjoint(state[-1])
    ):
        rest = _uncached(state[-1])
        state = (*state[:-1], rest) if rest else state[:-1]
    else:
        return None
    return (*reduced[:2], state, *reduced[3:])


def _uncached(state: dict) -> dict:
    return {k: v for k, v in state.items() if k not in CACHE_ATTRIBUTES}


@dataclass(frozen=True)
class ItemRef:
    """Stands for iteration ``k``'s item (``part`` >= 0: that element of a tuple item), or,
    with ``element`` ``(name, key)``, for the kernel's ``name[key]`` of a captured container."""

    k: int
    part: int = -1
    element: tuple[str, Any] | None = None


@dataclass(frozen=True)
class EffectValueRef:
    """A local that is one of the batch's effect values (``forest.append(tree)``, then
    ``tree``): the kernel binds the very object the effect used, so identity holds."""

    record: int
    position: int


def effect_value_refs(locals_: dict[str, Any], effects: list, single: bool) -> dict[str, Any]:
    """For each non-atomic local that *is* an effect value of the batch, its reference.

    Only the last records are searched (the locals are the last iteration's).
    """
    wanted = {id(v): name for name, v in locals_.items() if not is_atomic(v)}
    found: dict[str, Any] = {}
    if not wanted:
        return found
    for i in range(len(effects) - 1, max(-1, len(effects) - 65), -1):
        values = effects[i] if single else effects[i][1]
        for j, value in enumerate(values):
            name = wanted.pop(id(value), None)
            if name is not None:
                found[name] = EffectValueRef(i, j)
        if not wanted:
            break
    return found


@dataclass
class ItemChange:
    """Iteration ``k`` changed its item: its new state, and the effects recorded before it.

    ``element`` names an element of a captured container instead of the item:
    ``(name, key)`` for ``name[key]`` (``m = models[k]; m.fit(X)``).
    """

    k: int
    effects_before: int
    state: bytes
    element: tuple[str, Any] | None = None


def element_changes(pristine: Any, changed: Any) -> list[tuple[Any, bytes]] | None:
    """The elements of a list, tuple or dict changed in place, with their new states.

    None when the container itself changed (its length or keys, an atomic element
    replaced) or is of another kind: such a change cannot be written back element by
    element. ``pristine`` is the container as the kernel sent it.
    """
    if type(pristine) is not type(changed):
        return None
    if type(changed) is dict:
        if list(pristine) != list(changed):
            return None
        pairs = [(key, pristine[key], changed[key]) for key in changed]
    elif type(changed) in (list, tuple):
        if len(pristine) != len(changed):
            return None
        pairs = list(zip(range(len(changed)), pristine, changed, strict=True))
    else:
        return None
    out = []
    for key, old, new in pairs:
        before, after = state_of(old), state_of(new)
        if before is None or after is None:
            return None
        if before == after:
            continue
        if is_atomic(old) or is_atomic(new) or type(old) is not type(new):
            return None  # an element replaced, not changed in place
        out.append((key, after))
    return out or None


class ItemTracker:
    """Per iteration of a batch: snapshot the item, compare after, keep what changed."""

    def __init__(self, items: list, start: int):
        self.items = items
        self.start = start
        self.k: int | None = None
        self.before: bytes | None = None
        self.last_before: bytes | None = None
        self.changes: list[ItemChange] = []
        #: iteration -> its item's state as it came: the batch may run again (random
        #: streams, a captured value changed) and must start from the items as sent
        self.received: dict[int, bytes] = {}

    def begin(self, k: int) -> None:
        """Iteration ``k`` starts: remember its item's state (nothing for atomic items)."""
        item = self.items[k - self.start]
        self.k = k
        self.before = None if is_atomic(item) else state_of(item)
        if self.before is not None:
            self.received.setdefault(k, self.before)

    def restore(self) -> None:
        """Put the items the batch's iterations received back as they came (in place in the
        batch's list), so that running it again changes them again, and shows it."""
        import cloudpickle

        for k, state in self.received.items():
            self.items[k - self.start] = cloudpickle.loads(state)
        self.received.clear()

    def end(self, effects_before: int) -> ItemChange | None:
        """The current iteration ended: its item's change, if it changed."""
        k, before = self.k, self.before
        self.k = self.before = None
        self.last_before = before
        if k is None or before is None:
            return None
        after = state_of(self.items[k - self.start])
        if after is None or after == before:
            return None
        change = ItemChange(k, effects_before, after)
        self.changes.append(change)
        return change

    def before_copy(self, k: int) -> Any:
        """A copy of the item as the iteration that just ended received it."""
        import cloudpickle

        return cloudpickle.loads(self.last_before)

    def as_ref(self, value: Any, k: int) -> Any:
        """``value`` itself, or an ItemRef when it is iteration ``k``'s item or part of it."""
        if not self.items or is_atomic(value):
            return value
        item = self.items[k - self.start]
        if value is item:
            return ItemRef(k)
        if type(item) is tuple:
            for j, part in enumerate(item):
                if value is part:
                    return ItemRef(k, j)
        return value


class CapturedWatch:
    """The captured values (and called functions' globals) an iteration could change."""

    def __init__(self, captured: dict[str, Any]):
        self.watched: list[tuple[str, Any]] = []
        #: label -> the captured name, for values captured under their own name
        self.names: dict[str, str] = {}
        seen: set[int] = set()
        for name, value in captured.items():
            if self._add(repr(name), value, seen):
                self.names[repr(name)] = name
            if isinstance(value, types.FunctionType):
                self._add_globals(value, seen, depth=0)

    def _add(self, label: str, value: Any, seen: set[int]) -> bool:
        if id(value) in seen or is_atomic(value) or isinstance(value, _UNWATCHED):
            return False
        seen.add(id(value))
        self.watched.append((label, value))
        return True

    def _add_globals(self, fn: types.FunctionType, seen: set[int], depth: int) -> None:
        if depth > 3:
            return
        names = _names(fn.__code__)
        for name in sorted(names & set(fn.__globals__)):
            value = fn.__globals__[name]
            if isinstance(value, types.FunctionType):
                if id(value) not in seen:
                    seen.add(id(value))
                    self._add_globals(value, seen, depth + 1)
                continue
            self._add(f"global {name!r} (used by {fn.__qualname__}())", value, seen)

    def snapshot(self) -> list[bytes | None]:
        """The digest of every watched value."""
        return [digest_of(value) for _, value in self.watched]

    def changed(self, before: list[bytes | None]) -> list[tuple[str, Any]]:
        """The watched values whose state differs from ``before``."""
        out = []
        for (label, value), old in zip(self.watched, before, strict=True):
            if old is not None and digest_of(value) != old:
                out.append((label, value))
        return out


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names
