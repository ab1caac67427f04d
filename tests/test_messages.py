"""What a user reads when a ``%%parallel`` cell fails, through a real Jupyter kernel.

Each error is compared with the one the same cell gives without the magic: same
``ename`` and ``evalue``, the cell's own ``In[N]`` (the ``execution_count`` of the
reply), the same frames and source lines (one line lower: the ``%%parallel`` line),
no frame of IPython's or parmagic's internals before the user's line. Also: the
Python API can be silent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from .kernel import Execution, execute, kernel

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

ANSI = re.compile(r"\x1b\[[0-9;]*m")

SETUP = """\
%load_ext parmagic
import parmagic
"""

F = """\
def f(x):
    y = x - 2
    return 1 / y
"""

C = """\
class C:
    def m(self, x):
        return f(x)
"""


@pytest.fixture(scope="module")
def kc() -> Iterator[Any]:
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        with kernel() as (_, client):
            ex = execute(client, SETUP)
            assert ex.ok, ex.error()
            yield client
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved


def text(ex: Execution) -> str:
    error = ex.error()
    assert error is not None, ex.messages
    return ANSI.sub("", "\n".join(error["traceback"]))


def count(ex: Execution) -> int:
    return ex.reply["content"]["execution_count"]


def defined(kc: Any, code: str) -> int:
    ex = execute(kc, code)
    assert ex.ok, ex.error()
    return count(ex)


def as_plain(shown: str, n: int, plain_n: int) -> str:
    """A %%parallel cell's traceback as the plain cell's would read: in the cell's own
    frames, the magic's line gone, the lines one lower, the number the plain cell's."""
    blocks = shown.split("\n\n")
    for i, block in enumerate(blocks):
        if not re.search(rf"^Cell In\[{n}\], line ", block, flags=re.M):
            continue
        block = re.sub(r"\n\s+1 %%parallel[^\n]*", "", block)
        block = re.sub(
            rf"^Cell In\[{n}\], line (\d+)",
            lambda m: f"Cell In[{plain_n}], line {int(m.group(1)) - 1}",
            block,
            flags=re.M,
        )
        blocks[i] = re.sub(
            r"^(-*>? *)(\d+)( )",
            lambda m: f"{m.group(1)}{int(m.group(2)) - 1}{m.group(3)}",
            block,
            flags=re.M,
        )
    return "\n\n".join(blocks)


def plain_and_parallel(kc: Any, body: str, magic: str = "%%parallel -n 2 --no-progress") -> tuple:
    plain = execute(kc, body)
    par = execute(kc, f"{magic}\n{body}")
    assert not plain.ok and not par.ok
    return plain, par


def test_a_syntax_error_reads_as_the_plain_cells(kc: Any) -> None:
    body = "for i in range(3):\nprint(i)"
    plain, par = plain_and_parallel(kc, body, "%%parallel -n 2")
    p, q = plain.error(), par.error()
    assert p["ename"] == q["ename"] == "IndentationError"
    strip = re.compile(r" \(\S+\.py, line \d+\)$")
    assert strip.sub("", q["evalue"]) == strip.sub("", p["evalue"]).replace("line 1", "line 2")
    assert q["evalue"].endswith(", line 3)")
    shown = text(par)
    assert shown.startswith(f"  Cell In[{count(par)}], line 3\n    print(i)\n    ^\n"), shown
    assert "Traceback" not in shown and "parmagic" not in shown and "ast.py" not in shown, shown
    assert shown.replace(f"In[{count(par)}], line 3", "X").replace("line 2", "line 1") == text(
        plain
    ).replace(f"In[{count(plain)}], line 2", "X")
    assert par.reply["content"]["status"] == "error"
    assert execute(kc, "1 + 1").ok  # the kernel goes on


@pytest.mark.parametrize("backend", ["loky", "threads", "serial"])
def test_a_worker_error_reads_as_the_plain_cells(kc: Any, backend: str) -> None:
    f_cell, c_cell = defined(kc, F), defined(kc, C)
    body = "out = []\nfor i in range(5):\n    out.append(C().m(i))\n"
    magic = f"%%parallel -n 2 --backend {backend} --no-progress"
    plain, par = plain_and_parallel(kc, body, magic)
    assert (par.error()["ename"], par.error()["evalue"]) == (
        "ZeroDivisionError",
        "division by zero",
    )
    shown = text(par)
    # the cell's own number, its line first, then the notebook's functions with their lines
    assert re.search(
        rf"Traceback \(most recent call last\)\nCell In\[{count(par)}\], line 4\n", shown
    ), shown
    assert f"Cell In[{c_cell}], line 3, in C.m(self, x)" in shown, shown
    assert f"Cell In[{f_cell}], line 3, in f(x)" in shown, shown
    assert "----> 3     return 1 / y" in shown, shown
    for noise in ("ipykernel_", "<dynamic-code>", "RemoteTraceback", "run_cell_magic", "hidden"):
        assert noise not in shown, (noise, shown)
    assert as_plain(shown, count(par), count(plain)) == text(plain)


def test_an_error_replaying_an_effect_shows_the_cells_line(kc: Any) -> None:
    body = "d = {}\nfor i in range(3):\n    d[i] += 1\n"
    plain, par = plain_and_parallel(kc, body)
    assert par.error()["ename"] == "KeyError"
    assert as_plain(text(par), count(par), count(plain)) == text(plain)


def test_an_error_in_a_comprehension_under_pmap(kc: Any) -> None:
    f_cell = defined(kc, F)
    ex = execute(kc, "%pmap -n 2 --no-progress f(x) for x in range(4)")
    shown = text(ex)
    assert shown.count("Cell In[") == 2, shown
    assert f"Cell In[{count(ex)}], line 1\n----> 1 [f(x) for x in range(4)]" in shown, shown
    assert f"Cell In[{f_cell}], line 3, in f(x)" in shown, shown


def test_the_python_api_can_be_silent(kc: Any) -> None:
    defined(kc, "def g(x):\n    return x * x\n")
    ex = execute(
        kc, "r = parmagic.pmap(g, range(20), n_jobs=2, progress=False, summary=False)\nr[-1]"
    )
    assert ex.ok, ex.error()
    assert ex.stream("stdout") == "" and ex.stream("stderr") == ""
    assert ex.displays() == [] and not ex.of_type("comm_open")
    assert ex.results() == [{"text/plain": "361"}]


@pytest.mark.parametrize("flag", ["--compare", "--sweep 1,2"])
def test_timing_runs_show_their_progress(kc: Any, flag: str) -> None:
    """--compare and --sweep: a live bar during each timing run, left as its final state."""
    defined(kc, "import time")
    ex = execute(
        kc, f"%%parallel -n 2 {flag}\nout = []\nfor i in range(12):\n    time.sleep(0.05)\n"
    )
    assert ex.ok, ex.error()
    shown = [
        (m["msg_type"], m["content"]["data"].get("text/plain", ""))
        for _, m in ex.messages
        if m["msg_type"] in ("display_data", "update_display_data")
    ]
    timing = "serial timing: " if flag == "--compare" else "timing -n 1: "
    first = [i for i, (_, text) in enumerate(shown) if timing in text]
    real = [i for i, (_, text) in enumerate(shown) if text.startswith("[parmagic] for i in")]
    assert first and real and first[0] < real[0], shown
    # live: the timing bar's widget opened before it ended as a static bar
    opened = [t for t, m in ex.of_type("comm_open")]
    ended = [t for t, m in ex.of_type("update_display_data") if timing in str(m["content"]["data"])]
    assert opened and ended and opened[0] < ended[0]
    assert "100%" in shown[first[-1]][1], shown


def test_a_tqdm_wrapped_iterable_shows_one_bar_that_follows_commits(kc: Any) -> None:
    """``for x in tqdm(xs)``: the user's tqdm bar is the only bar, and it ends at the total."""
    defined(kc, "import time\nfrom tqdm.auto import tqdm")
    ex = execute(
        kc,
        "%%parallel -n 2\nout = []\nfor x in tqdm(range(16)):\n"
        "    time.sleep(0.03)\n    out.append(x)\nlen(out)",
    )
    assert ex.ok, ex.error()
    (bar,) = ex.bar_ids()  # tqdm.notebook's progress widget; parmagic draws none
    values = [v for _, v in ex.updates(bar, "value")]
    assert values == sorted(values) and values[-1] == 16, values
    assert ex.final_state(bar)["bar_style"] == "success"
    texts = [d.get("text/plain", "") for d in ex.displays()]
    assert not any("it/s]" in t and t.startswith("[parmagic]") for t in texts), texts
    assert not any("%|" in t for t in texts if "parmagic" in t), texts  # no parmagic bar
    assert ex.results()[-1]["text/plain"] == "16"
