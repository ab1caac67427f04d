"""Errors that read as the plain cell's: the cell's own frames, worker frames mapped back.

A worker's traceback reaches the kernel as text. :func:`worker_traceback` turns it
into a real traceback of stub frames, one per worker frame, each compiled at the
frame's file and line: IPython then shows the worker's frames as it shows any
other (``Cell In[N], line 3, in f``, with the source lines). A function defined in
a notebook cell travels to the workers by value, and cloudpickle names its code
``<dynamic-code>``; its frames are mapped back to the cell it came from through
the kernel's namespace.

:func:`show_from_cell` gives an exception raised out of ``%%parallel`` a
``_render_traceback_`` that starts at the cell's own frame, so IPython shows
neither the ``run_cell_magic(...)`` line nor "skipping hidden frames" before it.
Nothing here imports IPython until a traceback is rendered.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from typing import Any

from .errors import RemoteTraceback

_FRAME = re.compile(r'^  File "(?P<file>.+)", line (?P<line>\d+), in (?P<name>.+)$', re.M)
_DYNAMIC = "<dynamic-code>"
#: Where the worker's traceback starts (the last one, if it shows a chain)
_HEADER = "Traceback (most recent call last):"

#: (filename, line, function name, the kernel's code of that function if known)
Frame = tuple[str, int, str, "types.CodeType | None"]


class _InWorker:
    """The value of a worker frame's argument, which stayed in the worker (``%xmode Verbose``)."""

    def __repr__(self) -> str:
        return "<in the worker>"


def worker_frames(text: str, namespace: dict[str, Any]) -> list[Frame]:
    """The frames of a worker's traceback text, ``<dynamic-code>`` mapped back to its cell."""
    text = text.rsplit(_HEADER, 1)[-1]
    frames = []
    for match in _FRAME.finditer(text):
        filename, line, name = match["file"], int(match["line"]), match["name"]
        code = _defined_in(namespace, name, line) if filename == _DYNAMIC else None
        frames.append((code.co_filename if code else filename, line, name, code))
    return frames


def worker_traceback(frames: list[Frame]) -> types.TracebackType | None:
    """A traceback of stub frames, one per worker frame, for the exception raised there."""
    return _chain(_stub_entries(frames))


def _stub_entries(frames: list[Frame]) -> list[types.TracebackType]:
    """One traceback entry per frame: stub code compiled at the frame's file and line."""
    stubs = [_stub(*frame) for frame in frames]

    class _Bottom(Exception):
        pass

    def run(i: int) -> None:
        if i == len(stubs):
            raise _Bottom
        stubs[i](lambda: run(i + 1))

    try:
        run(0)
    except _Bottom as bottom:
        tb = bottom.__traceback__
    own = {id(stub.code) for stub in stubs}
    return [entry for entry in _walk(tb) if id(entry.tb_frame.f_code) in own]


def _chain(entries: list[types.TracebackType]) -> types.TracebackType | None:
    chain = None
    for entry in reversed(entries):
        chain = types.TracebackType(chain, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return chain


class _stub:  # noqa: N801 - used as a function
    """A frame at ``filename``:``line`` named ``name``; called, it calls the next one.

    With the kernel's code of the function (``like``) it is a function of the same
    arguments and qualified name; else module code renamed.
    """

    def __init__(self, filename: str, line: int, name: str, like: types.CodeType | None):
        self.filename, self.line, self.name, self.like = filename, line, name, like
        self.function = _function_stub(filename, line, like) if like else None
        if self.function is not None:
            self.code = self.function.__code__
        else:
            code = compile("\n" * max(0, line - 1) + "__pm_next()", filename, "exec")
            names = {"co_name": name}
            if hasattr(code, "co_qualname"):
                names["co_qualname"] = name
            self.code = code.replace(**names)

    def __call__(self, following: Any) -> None:
        if self.function is None:
            exec(self.code, {"__pm_next": following})
            return
        self.function.__globals__["__pm_next"] = following
        args, kwargs = self.arguments
        self.function(*args, **kwargs)

    @property
    def arguments(self) -> tuple[list, dict]:
        like, unknown = self.like, _InWorker()
        names = like.co_varnames
        kwonly = names[like.co_argcount : like.co_argcount + like.co_kwonlyargcount]
        return [unknown] * like.co_argcount, dict.fromkeys(kwonly, unknown)


def _function_stub(filename: str, line: int, like: types.CodeType) -> Any:
    """``def name(args): __pm_next()`` with the body at ``line``; None if it cannot be."""
    names = like.co_varnames
    n = like.co_argcount + like.co_kwonlyargcount
    params, kwonly = list(names[: like.co_argcount]), list(names[like.co_argcount : n])
    if like.co_flags & 0x04:  # CO_VARARGS
        params.append("*" + names[n])
        n += 1
    elif kwonly:
        params.append("*")
    params += kwonly
    if like.co_flags & 0x08:  # CO_VARKEYWORDS
        params.append("**" + names[n])
    if not like.co_name.isidentifier() or not all(p.strip("*").isidentifier() for p in params):
        return None  # a lambda or a comprehension: module code renamed
    first = like.co_firstlineno
    if line < first:
        return None
    head = "\n" * (first - 1) + f"def {like.co_name}({', '.join(params)}):"
    body = "\n" * (line - first) + "    " if line > first else " "
    namespace: dict[str, Any] = {}
    exec(compile(head + body + "__pm_next()", filename, "exec"), namespace)
    function = namespace[like.co_name]
    if hasattr(like, "co_qualname"):
        function.__code__ = function.__code__.replace(co_qualname=like.co_qualname)
    return function


def _walk(tb: types.TracebackType | None) -> Iterator[types.TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def _defined_in(namespace: dict[str, Any], name: str, line: int) -> types.CodeType | None:
    """The namespace's code (of a notebook cell) named ``name`` spanning ``line``."""
    found = None
    for code in _codes(namespace):
        if code.co_name == name and code.co_filename != _DYNAMIC and _spans(code, line):
            found = code  # the last one defined wins, as the name would
    return found


def _spans(code: types.CodeType, line: int) -> bool:
    lines = [n for _, _, n in code.co_lines() if n is not None]
    return bool(lines) and min([code.co_firstlineno, *lines]) <= line <= max(lines)


def _codes(namespace: dict[str, Any]) -> Iterator[types.CodeType]:
    """Code objects of the namespace's functions and classes' methods, nested ones too."""
    for value in list(namespace.values()):
        if isinstance(value, type):
            members = [getattr(m, "__func__", m) for m in vars(value).values()]
            members += [m.fget for m in vars(value).values() if isinstance(m, property)]
        else:
            members = [value]
        for member in members:
            code = getattr(member, "__code__", None)
            if isinstance(code, types.CodeType):
                yield from _nested(code)


def _nested(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _nested(const)


def show_from_cell(exc: BaseException, filename: str) -> None:
    """Have IPython show ``exc`` from the cell's own frame on, as it shows a plain cell's.

    The worker's text traceback (a :class:`RemoteTraceback` cause) is left out: the
    frames show it. An exception that renders itself is left alone.
    """
    if hasattr(exc, "_render_traceback_"):
        return
    start = next((tb for tb in _walk(exc.__traceback__) if _in(tb, filename)), None)
    if start is None:
        return
    try:
        exc._render_traceback_ = lambda: _render(exc, start, filename)  # type: ignore[attr-defined]
    except AttributeError:  # an exception without a __dict__: IPython's own way
        pass


def _in(tb: types.TracebackType, filename: str) -> bool:
    return tb.tb_frame.f_code.co_filename == filename


def _shown(tb: types.TracebackType, filename: str) -> types.TracebackType | None:
    """The entries IPython shows: the cell's parts as the cell's own lines, no hidden ones.

    parmagic runs a loop's body as a function and replays effects from functions,
    compiled in the cell's file; shown as they are, IPython would name them and
    number their lines from the function's first line: each is shown as a
    frame of the cell at its line instead.
    """
    entries = []
    for entry in _walk(tb):
        code = entry.tb_frame.f_code
        if _in(entry, filename) and (code.co_name != "<module>" or code.co_firstlineno != 1):
            entries += _stub_entries([(filename, entry.tb_lineno, "<module>", None)])
        elif not entry.tb_frame.f_locals.get("__tracebackhide__"):
            entries.append(entry)
    return _chain(entries)


def _render(exc: BaseException, tb: types.TracebackType, filename: str) -> list[str]:
    from IPython import get_ipython

    shell = get_ipython()
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        exc.__cause__ = None
    try:
        shown = _shown(tb, filename)
        return shell.InteractiveTB.structured_traceback(type(exc), exc, shown, tb_offset=0)
    finally:
        exc.__cause__ = cause
