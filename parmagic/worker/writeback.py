"""Bringing a changed object's new state into the kernel's own object, in place.

``merge_into(orig, new)`` makes ``orig`` (the kernel's object) equal to ``new``
(the state a worker's copy ended in) without replacing it, so that every other
reference sees the change (``estimators[0]`` is fitted, ``forest[-1] is tree``).
Containers are updated item by item, keeping the identity of sub-objects that
are merged in turn (a pipeline's steps stay the kernel's estimators); other
objects get their state through the pickle protocol (``__reduce_ex__`` gives
the state, ``__setstate__`` or ``__dict__`` takes it), as ``copy`` does.
An object that offers no way to be updated in place raises :class:`WritebackError`.
"""

from __future__ import annotations

import copyreg
from typing import Any

from ..errors import WritebackError

#: Sub-objects of these modules' objects are replaced, not merged (their internals are
#: not the user's: a DataFrame keeps its identity, its blocks need not).
_OPAQUE_MODULES = ("pandas", "numpy", "scipy", "polars", "pyarrow", "torch")


def merge_into(orig: Any, new: Any, memo: dict[int, Any] | None = None) -> None:
    """Make ``orig`` hold ``new``'s state, in place; raise WritebackError where impossible."""
    try:
        _merge_into(orig, new, {} if memo is None else memo)
    except WritebackError:
        raise
    except Exception as exc:  # the object refused its new state (a weakref, a C type, ...)
        raise WritebackError(f"cannot be updated in place ({type(exc).__name__}: {exc})") from None


def _merge_into(orig: Any, new: Any, memo: dict[int, Any]) -> None:
    if id(new) in memo:
        return
    memo[id(new)] = orig
    if type(orig) is not type(new):
        raise WritebackError(
            f"became a {type(new).__qualname__}, not a {type(orig).__qualname__}: "
            "it cannot be updated in place"
        )
    if _merge_container(orig, new, memo):
        return
    _merge_state(orig, new, memo)


def _merge_container(orig: Any, new: Any, memo: dict) -> bool:
    if isinstance(orig, list):
        merged = [_merged(o, n, memo) for o, n in zip(orig, new, strict=False)]
        orig[:] = merged + list(new[len(merged) :])
    elif isinstance(orig, dict):
        merged = {k: _merged(orig[k], v, memo) if k in orig else v for k, v in new.items()}
        orig.clear()
        orig.update(merged)
    elif isinstance(orig, set):
        orig.clear()
        orig.update(new)
    elif isinstance(orig, bytearray):
        orig[:] = new
    elif isinstance(orig, tuple):
        if len(orig) != len(new):
            raise WritebackError("a tuple cannot change its length")
        for o, n in zip(orig, new, strict=True):
            if o is n or (_atomic(o) and type(o) is type(n) and o == n):
                continue
            if _merged(o, n, memo) is not o:
                raise WritebackError(f"a tuple cannot hold a new {type(n).__qualname__}")
        return True
    elif _is_ndarray(orig):
        if orig.shape != new.shape or orig.dtype != new.dtype or not orig.flags.writeable:
            raise WritebackError("an array cannot change its shape or dtype in place")
        orig[...] = new
        return True
    else:
        return False
    if type(orig) in (list, dict, set, bytearray):
        return True
    _merge_state(orig, new, memo)  # a subclass: its attributes too
    return True


def _merged(orig: Any, new: Any, memo: dict) -> Any:
    """``orig`` updated to ``new`` where that keeps it (same type, mergeable), else ``new``."""
    if orig is new or type(orig) is not type(new) or _atomic(new):
        return new
    try:
        _merge_into(orig, new, memo)
    except WritebackError:
        return new
    return orig


def _merge_state(orig: Any, new: Any, memo: dict) -> None:
    try:
        reduced = new.__reduce_ex__(4)
    except Exception as exc:
        raise WritebackError(f"its state cannot be read ({exc})") from None
    state = reduced[2] if isinstance(reduced, tuple) and len(reduced) > 2 else None
    if (
        reduced
        and isinstance(reduced, tuple)
        and reduced[0]
        not in (
            copyreg.__newobj__,
            copyreg._reconstructor,
            getattr(copyreg, "__newobj_ex__", None),
        )
    ):
        if state is None:  # rebuilt from constructor arguments: no state to set in place
            raise WritebackError("it is rebuilt from its constructor, not updated")
    if state is None:
        return
    opaque = type(orig).__module__.split(".")[0] in _OPAQUE_MODULES
    setstate = getattr(orig, "__setstate__", None)
    if setstate is not None and getattr(type(orig), "__setstate__", None) is not None:
        if isinstance(state, dict) and not opaque:
            current = getattr(orig, "__dict__", {})
            state = {
                k: _merged(current[k], v, memo) if k in current else v for k, v in state.items()
            }
        setstate(state)
        return
    slots: dict = {}
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
        slots = slots or {}
    if state:
        current = orig.__dict__
        merged = {k: _merged(current[k], v, memo) if k in current else v for k, v in state.items()}
        current.clear()
        current.update(merged)
    for name, value in slots.items():
        setattr(orig, name, value)


def _atomic(value: Any) -> bool:
    return isinstance(value, int | float | complex | str | bytes | bool | type(None))


def _is_ndarray(value: Any) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"
