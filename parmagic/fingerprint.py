"""Fingerprints for ``--cache``: values by their pickle, notebook code by what it does.

Pure: no IPython. A value's fingerprint is a sha256 of its pickle, with NumPy buffers hashed
where they lie and sets by their sorted elements (their order follows the string hashes,
which differ from process to process). A function or class defined in the notebook (or in a
module beside it) counts by its code: bytecode, constants, names, defaults, closure, and the
globals it reads, followed into the functions and classes they name (cycle-safe); file names
and line numbers do not count, so a function defined again in a new kernel matches its old
fingerprint. Library functions and classes count by their importable name.
"""

from __future__ import annotations

import dis
import hashlib
import pickle
import sys
import types
from typing import Any

#: Bump when the key recipe changes: old entries then never match.
VERSION = 1


class Unhashable(Exception):
    """A value that cannot be fingerprinted (it cannot be pickled); the message names it."""


def is_notebook_object(obj: Any) -> bool:
    """True for a function or class that counts by its code: defined in the notebook
    (``__main__``, or an ``exec`` namespace) or in a user module beside it."""
    if not isinstance(obj, types.FunctionType | type):
        return False
    module_name = getattr(obj, "__module__", None)
    if module_name in (None, "__main__"):
        return True
    module = sys.modules.get(module_name)
    if module is None or _lookup(module, getattr(obj, "__qualname__", "")) is not obj:
        return True  # not importable by name: pickle could not find it either
    if module_name == "parmagic" or module_name.startswith("parmagic."):
        return False
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return False
    from .worker.environment import is_user_file

    return is_user_file(file)


def _lookup(module: Any, qualname: str) -> Any:
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


class _Sink:
    """A file that feeds what is written to it into a hash."""

    def __init__(self, h: Any):
        self.h = h

    def write(self, data: bytes) -> int:
        self.h.update(data)
        return len(data)


_ATOMS = frozenset({int, float, str, bytes, bool, type(None), complex})
_PLAIN = _ATOMS | {tuple, list, dict}


class _HashingPickler(pickle.Pickler):
    """Pickles into a hash: notebook code by fingerprint, modules by name, sets sorted."""

    def __init__(self, fingerprinter: Fingerprinter, h: Any):
        super().__init__(_Sink(h), protocol=5, buffer_callback=self._buffer)
        self.fingerprinter = fingerprinter
        self.h = h

    def _buffer(self, buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()  # a NumPy array's memory, hashed where it lies
        self.h.update(raw.nbytes.to_bytes(8, "little"))
        self.h.update(raw)
        return False

    def persistent_id(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _PLAIN:
            return None
        if kind is set or kind is frozenset:  # element order follows string hashes: sort
            return (kind.__name__, sorted(self.fingerprinter.value(e) for e in obj))
        if isinstance(obj, types.ModuleType):
            return ("module", obj.__name__)
        if is_notebook_object(obj):
            return ("code", self.fingerprinter.code_object(obj))
        return None


class Fingerprinter:
    """Fingerprints of values and notebook code; one instance per loop (it memoizes)."""

    def __init__(self) -> None:
        self._memo: dict[int, bytes] = {}
        self._keep: list[Any] = []  # objects whose id is in the memo stay alive

    def value(self, obj: Any, name: str = "") -> bytes:
        """The sha256 of ``obj``'s pickle (notebook code by its fingerprint)."""
        if type(obj) in _ATOMS:  # most loop items: no pickler to build
            return hashlib.sha256(pickle.dumps(obj, protocol=5)).digest()
        h = hashlib.sha256()
        try:
            _HashingPickler(self, h).dump(obj)
        except Unhashable:
            raise
        except Exception as exc:
            what = f"{name!r}, a " if name else "a "
            raise Unhashable(f"{what}{type(obj).__qualname__} ({exc})") from None
        return h.digest()

    def code_object(self, obj: types.FunctionType | type) -> bytes:
        """A notebook function's or class's fingerprint (cycle-safe, memoized)."""
        known = self._memo.get(id(obj))
        if known is not None:
            return known
        qualname = getattr(obj, "__qualname__", type(obj).__name__)
        self._memo[id(obj)] = hashlib.sha256(b"cycle:" + qualname.encode()).digest()
        self._keep.append(obj)
        h = hashlib.sha256(qualname.encode())
        if isinstance(obj, type):
            self._class(obj, h)
        else:
            self._function(obj, h)
        self._memo[id(obj)] = digest = h.digest()
        return digest

    def _function(self, fn: types.FunctionType, h: Any) -> None:
        self._code(fn.__code__, h)
        h.update(self.value((fn.__defaults__, fn.__kwdefaults__), fn.__qualname__))
        for cell in fn.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell (a name not bound yet)
                contents = None
            h.update(self.value(contents, fn.__qualname__))
        for name in sorted(_global_names(fn.__code__)):
            if name in fn.__globals__:
                h.update(name.encode() + b"=" + self.value(fn.__globals__[name], name))

    def _code(self, code: types.CodeType, h: Any) -> None:
        h.update(code.co_code)
        for part in (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars):
            h.update(repr(part).encode())
        h.update(repr((code.co_argcount, code.co_kwonlyargcount, code.co_flags)).encode())
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self._code(const, h)
            else:  # not repr: a frozenset constant's order follows the string hashes
                h.update(self.value(const))

    def _class(self, cls: type, h: Any) -> None:
        """A class by its bases, methods and attributes. An attribute that cannot be pickled
        (a dataclass's field table, an ABC's registry: derived from what is fingerprinted
        anyway) counts by its type."""
        for base in cls.__bases__:
            h.update(self.value(base, cls.__qualname__))
        for name, attr in sorted(vars(cls).items()):
            if name in _CLASS_SKIP:
                continue
            try:
                digest = self.value(_unwrap(attr), f"{cls.__qualname__}.{name}")
            except Unhashable:
                kind = type(attr)
                digest = f"type:{kind.__module__}.{kind.__qualname__}".encode()
            h.update(name.encode() + b"=" + digest)


_CLASS_SKIP = frozenset(
    {"__dict__", "__weakref__", "__module__", "__qualname__", "__doc__", "_abc_impl"}
)


def _unwrap(attr: Any) -> Any:
    """The functions behind a class attribute (staticmethod, classmethod, property)."""
    if isinstance(attr, staticmethod | classmethod):
        return attr.__func__
    if isinstance(attr, property):
        return (attr.fget, attr.fset, attr.fdel)
    return attr


def _global_names(code: types.CodeType) -> set[str]:
    """Names the code reads as globals (its nested functions' too)."""
    names = {
        ins.argval
        for ins in dis.get_instructions(code)
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str)
    }
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def loop_key(source: str, captured: dict[str, Any], fingerprinter: Fingerprinter) -> str:
    """The key of a loop: its body and target, and its captured values' fingerprints.

    Raises :class:`Unhashable` naming a captured value that cannot be fingerprinted.
    """
    h = hashlib.sha256(f"parmagic-cache:{VERSION}\n{source}".encode())
    for name in sorted(captured):
        h.update(f"\n{name}=".encode() + fingerprinter.value(captured[name], name))
    return h.hexdigest()
