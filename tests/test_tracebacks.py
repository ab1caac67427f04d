"""Worker tracebacks rebuilt as frames (parmagic.tracebacks), without a kernel."""

from __future__ import annotations

import inspect
import types

from parmagic.tracebacks import worker_frames, worker_traceback

CELL_4 = "def f(x):\n    y = 1\n    return 1 / (x - 2)\n\n\ndef g(a, *rest, k=1, **kw):\n    return f(a)\n"
WORKER_TEXT = """\
Traceback (most recent call last):
  File "<cell-9>", line 3, in <module>
    g(i)
  File "<dynamic-code>", line 7, in g
  File "<dynamic-code>", line 3, in f
ZeroDivisionError: division by zero
"""


def namespace() -> dict:
    ns: dict = {}
    exec(compile(CELL_4, "<cell-4>", "exec"), ns)
    return ns


def entries(tb: types.TracebackType | None) -> list[types.TracebackType]:
    found = []
    while tb is not None:
        found.append(tb)
        tb = tb.tb_next
    return found


def test_frames_of_notebook_functions_are_mapped_back_to_their_cell() -> None:
    frames = worker_frames(WORKER_TEXT, namespace())
    assert [frame[:3] for frame in frames] == [
        ("<cell-9>", 3, "<module>"),
        ("<cell-4>", 7, "g"),
        ("<cell-4>", 3, "f"),
    ]
    assert frames[0][3] is None and frames[2][3].co_name == "f"


def test_an_unknown_function_keeps_its_name_and_line() -> None:
    frames = worker_frames(WORKER_TEXT.replace("in f", "in h"), namespace())
    assert frames[2][:3] == ("<dynamic-code>", 3, "h")


def test_only_the_last_traceback_of_a_chain() -> None:
    chained = WORKER_TEXT + "\nDuring handling of the above exception, another one:\n\n"
    chained += (
        'Traceback (most recent call last):\n  File "<cell-9>", line 5, in <module>\nKeyError: 1\n'
    )
    assert [frame[:3] for frame in worker_frames(chained, {})] == [("<cell-9>", 5, "<module>")]


def test_the_rebuilt_traceback_has_the_frames_lines_names_and_arguments() -> None:
    tb = worker_traceback(worker_frames(WORKER_TEXT, namespace()))
    shown = [
        (e.tb_frame.f_code.co_filename, e.tb_lineno, e.tb_frame.f_code.co_name) for e in entries(tb)
    ]
    assert shown == [("<cell-9>", 3, "<module>"), ("<cell-4>", 7, "g"), ("<cell-4>", 3, "f")]
    g_frame, f_frame = entries(tb)[1].tb_frame, entries(tb)[2].tb_frame
    args = inspect.getargvalues(g_frame)
    assert (args.args, args.varargs, args.keywords) == (["a", "k"], "rest", "kw")
    assert inspect.getargvalues(f_frame).args == ["x"]
    assert repr(f_frame.f_locals["x"]) == "<in the worker>"
    assert f_frame.f_code.co_firstlineno == 1  # the source IPython shows starts at the def


def test_no_frames_no_traceback() -> None:
    assert worker_traceback([]) is None
